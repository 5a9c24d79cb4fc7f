package natstransport

import (
	"context"
	"errors"
	"fmt"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/courierkit/courier/transport"
)

var (
	_ transport.LagReporter = (*Transport)(nil)
	_ transport.Pinger      = (*Transport)(nil)
)

// ErrUnknownGroup is returned by Lag when the group has no durable
// consumer on the topic's stream (or the stream does not exist). The
// JetStream error (jetstream.ErrConsumerNotFound or
// jetstream.ErrStreamNotFound) stays reachable with errors.Is.
var ErrUnknownGroup = errors.New("natstransport: unknown group")

// Lag reports group's backlog on topic (transport.LagReporter) from the
// ConsumerInfo of the group's durable consumer: Pending is its
// num_pending (messages of the topic's subject not yet delivered to the
// group), InFlight its num_ack_pending (delivered, not yet acked, nacked
// messages waiting out their delay included). Partitions is nil. It never
// creates a stream or consumer; a group without a consumer is
// ErrUnknownGroup. In core NATS mode, which keeps nothing for a group, Lag
// returns an error matching transport.ErrUnsupported. One JetStream API
// round trip, bounded by ctx (and Options.APITimeout when ctx has no
// deadline).
func (t *Transport) Lag(ctx context.Context, topic, group string) (transport.Lag, error) {
	out := transport.Lag{Topic: topic, Group: group, InFlight: -1}
	if t.isClosed() {
		return out, transport.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return out, err
	}
	if err := transport.CheckSubscribe(topic, transport.SubscribeOptions{Group: group}, t.caps.Limits); err != nil {
		return out, err
	}
	if t.o.Core {
		return out, fmt.Errorf("%w: core NATS keeps no backlog for a group, so it has no lag", transport.ErrUnsupported)
	}
	stream, name := t.streamName(topic), t.durableName(topic, group)
	// Consumer fetches the consumer's info (one CONSUMER.INFO request);
	// CachedInfo is that answer.
	c, err := t.js.Consumer(ctx, stream, name)
	var info *jetstream.ConsumerInfo
	if err == nil {
		info = c.CachedInfo()
	}
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return out, cerr
		}
		if t.isClosed() {
			return out, transport.ErrClosed
		}
		if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
			return out, fmt.Errorf("%w %q on topic %q (no consumer %q on stream %q): %w", ErrUnknownGroup, group, topic, name, stream, err)
		}
		return out, t.wrap(fmt.Sprintf("natstransport: lag of group %q on topic %q (consumer %q on stream %q)", group, topic, name, stream), err)
	}
	md := info.Config.Metadata
	if g, ok := md[metaGroup]; ok && (g != group || md[metaTopic] != topic) {
		return out, fmt.Errorf("%w: consumer %q belongs to group %q of topic %q, not group %q of topic %q", ErrNameConflict, name, g, md[metaTopic], group, topic)
	}
	out.Pending = int64(info.NumPending)
	out.InFlight = int64(info.NumAckPending)
	return out, nil
}

// Ping checks the connection with a round trip to the server
// (transport.Pinger). In JetStream mode it asks JetStream for the
// account's info, so it also fails when the server answers but JetStream
// does not (disabled, or no meta leader in a cluster); in core mode it
// flushes a PING and waits for the PONG. It fails at once while the
// client is disconnected (reconnecting), returns transport.ErrClosed after
// Close or Shutdown, and ctx.Err() when ctx ends first. Without a ctx
// deadline the round trip is bounded by Options.APITimeout.
func (t *Transport) Ping(ctx context.Context) error {
	if t.isClosed() {
		return transport.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if !t.nc.IsConnected() {
		return fmt.Errorf("natstransport: ping: not connected to the server (client status %s)", t.nc.Status())
	}
	pctx := ctx
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		pctx, cancel = context.WithTimeout(ctx, t.o.APITimeout)
		defer cancel()
	}
	var err error
	if t.o.Core {
		err = t.nc.FlushWithContext(pctx)
	} else {
		_, err = t.js.AccountInfo(pctx)
	}
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		if t.isClosed() {
			return transport.ErrClosed
		}
		return t.wrap("natstransport: ping", err)
	}
	return nil
}
