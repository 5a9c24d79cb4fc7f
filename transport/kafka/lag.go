package kafkatransport

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/IBM/sarama"

	"github.com/courierkit/courier/transport"
)

var _ transport.LagReporter = (*Transport)(nil)

// ErrUnknownGroup is returned by Lag for a group that has no committed
// offset on the topic and that the broker does not know.
var ErrUnknownGroup = errors.New("kafkatransport: unknown consumer group")

// Lag reports group's backlog on topic (transport.LagReporter): per
// partition, the high watermark minus the group's committed offset; for a
// partition the group has committed nothing on, the high watermark minus
// the log start offset (Committed is then -1). Pending is their sum;
// InFlight is -1 (the broker does not know what a consumer holds). It asks
// the brokers each time it is called, and returns ctx.Err() as soon as ctx
// ends (a sarama request under way then finishes in the background within
// the client's network timeouts) and transport.ErrClosed after Close.
func (t *Transport) Lag(ctx context.Context, topic, group string) (transport.Lag, error) {
	out := transport.Lag{Topic: topic, Group: group, InFlight: -1}
	if err := ctx.Err(); err != nil {
		return out, err
	}
	if t.isClosed() {
		return out, transport.ErrClosed
	}
	type result struct {
		lag transport.Lag
		err error
	}
	res := make(chan result, 1)
	go func() {
		l, err := t.lag(ctx, topic, group)
		res <- result{l, err}
	}()
	select {
	case r := <-res:
		if r.err != nil && t.isClosed() && !errors.Is(r.err, ErrUnknownGroup) {
			return out, transport.ErrClosed
		}
		return r.lag, r.err
	case <-ctx.Done():
		return out, ctx.Err()
	case <-t.done:
		return out, transport.ErrClosed
	}
}

func (t *Transport) lag(ctx context.Context, topic, group string) (transport.Lag, error) {
	out := transport.Lag{Topic: topic, Group: group, InFlight: -1}
	if err := t.client.RefreshMetadata(topic); err != nil {
		return out, t.wrap(fmt.Sprintf("metadata of %q", topic), err)
	}
	parts, err := t.client.Partitions(topic)
	if err != nil {
		return out, t.wrap(fmt.Sprintf("partitions of %q", topic), err)
	}
	slices.Sort(parts)
	resp, known, err := t.groupOffsets(group, topic, parts)
	if err != nil {
		return out, t.wrap(fmt.Sprintf("offsets of group %q", group), err)
	}
	anyCommitted := false
	for _, p := range parts {
		if err := ctx.Err(); err != nil {
			return out, err
		}
		hw, err := t.client.GetOffset(topic, p, sarama.OffsetNewest)
		if err != nil {
			return out, t.wrap(fmt.Sprintf("end offset of %s/%d", topic, p), err)
		}
		l := transport.PartitionLag{Partition: p, HighWater: hw, Committed: -1}
		if b := resp.GetBlock(topic, p); b != nil && b.Err == sarama.ErrNoError && b.Offset >= 0 {
			anyCommitted = true
			l.Committed = b.Offset
			l.Lag = max(0, hw-b.Offset)
		} else {
			start, err := t.client.GetOffset(topic, p, sarama.OffsetOldest)
			if err != nil {
				return out, t.wrap(fmt.Sprintf("start offset of %s/%d", topic, p), err)
			}
			l.Lag = max(0, hw-start)
		}
		out.Pending += l.Lag
		out.Partitions = append(out.Partitions, l)
	}
	if !known && !anyCommitted {
		return out, fmt.Errorf("%w %q on topic %q", ErrUnknownGroup, group, topic)
	}
	return out, nil
}

// groupOffsets fetches group's committed offsets. known is false when the
// broker does not know the group (kfake answers GROUP_ID_NOT_FOUND where
// Kafka answers -1 offsets).
func (t *Transport) groupOffsets(group, topic string, parts []int32) (*sarama.OffsetFetchResponse, bool, error) {
	resp, err := t.admin.ListConsumerGroupOffsets(group, map[string][]int32{topic: parts})
	if errors.Is(err, sarama.ErrGroupIDNotFound) {
		return &sarama.OffsetFetchResponse{}, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	known := false
	for _, p := range parts {
		if b := resp.GetBlock(topic, p); b != nil && b.Err == sarama.ErrNoError && b.Offset >= 0 {
			known = true
		}
	}
	if !known {
		if ds, err := t.admin.DescribeConsumerGroups([]string{group}); err == nil && len(ds) == 1 && ds[0].State != "Dead" && ds[0].State != "" {
			known = true
		}
	}
	return resp, known, nil
}
