package kafkatransport

import (
	"context"
	"errors"
	"fmt"
	"slices"

	"github.com/IBM/sarama"

	"github.com/courierkit/courier/transport"
)

// PartitionLag is the consumer lag of one partition for one group.
type PartitionLag struct {
	Partition int32
	// HighWatermark is the offset the next record of the partition will
	// get (the log end offset).
	HighWatermark int64
	// Committed is the group's committed offset: the next record it will
	// read. -1 when the group committed nothing for the partition.
	Committed int64
	// Lag is HighWatermark - Committed, or HighWatermark minus the log
	// start offset when nothing is committed (what a group starting at
	// the oldest record would have to read).
	Lag int64
}

// LagReporter is the optional interface a transport implements when it can
// tell how far a consumer group is behind (for metrics).
type LagReporter interface {
	ConsumerLag(ctx context.Context, topic, group string) ([]PartitionLag, error)
}

var _ LagReporter = (*Transport)(nil)

// ConsumerLag reports, per partition of topic, how many records group has
// not committed yet (high watermark minus committed offset). It asks the
// brokers each time it is called.
func (t *Transport) ConsumerLag(ctx context.Context, topic, group string) ([]PartitionLag, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if t.isClosed() {
		return nil, transport.ErrClosed
	}
	if err := t.client.RefreshMetadata(topic); err != nil {
		return nil, t.wrap(fmt.Sprintf("metadata of %q", topic), err)
	}
	parts, err := t.client.Partitions(topic)
	if err != nil {
		return nil, t.wrap(fmt.Sprintf("partitions of %q", topic), err)
	}
	slices.Sort(parts)
	resp, err := t.groupOffsets(group, topic, parts)
	if err != nil {
		return nil, t.wrap(fmt.Sprintf("offsets of group %q", group), err)
	}
	out := make([]PartitionLag, 0, len(parts))
	for _, p := range parts {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		hw, err := t.client.GetOffset(topic, p, sarama.OffsetNewest)
		if err != nil {
			return nil, t.wrap(fmt.Sprintf("end offset of %s/%d", topic, p), err)
		}
		l := PartitionLag{Partition: p, HighWatermark: hw, Committed: -1}
		if b := resp.GetBlock(topic, p); b != nil && b.Err == sarama.ErrNoError && b.Offset >= 0 {
			l.Committed = b.Offset
			l.Lag = max(0, hw-b.Offset)
		} else {
			start, err := t.client.GetOffset(topic, p, sarama.OffsetOldest)
			if err != nil {
				return nil, t.wrap(fmt.Sprintf("start offset of %s/%d", topic, p), err)
			}
			l.Lag = max(0, hw-start)
		}
		out = append(out, l)
	}
	return out, nil
}

// groupOffsets fetches group's committed offsets; a group the broker does
// not know (kfake answers GROUP_ID_NOT_FOUND where Kafka answers -1 offsets)
// has none.
func (t *Transport) groupOffsets(group, topic string, parts []int32) (*sarama.OffsetFetchResponse, error) {
	resp, err := t.admin.ListConsumerGroupOffsets(group, map[string][]int32{topic: parts})
	if errors.Is(err, sarama.ErrGroupIDNotFound) {
		return &sarama.OffsetFetchResponse{}, nil
	}
	return resp, err
}
