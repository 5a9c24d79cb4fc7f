package natstransport

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// subscribeCore subscribes in core NATS mode: a plain subscription, or a
// queue subscription named after the group. Delivery is at most once.
func (t *Transport) subscribeCore(ctx context.Context, topic string, h message.Handler, so transport.SubscribeOptions) error {
	d := transport.NewDispatcher(ctx, h, transport.DispatchOptions{
		Topic: topic, Group: so.Group, Subscribe: so, Logger: t.log,
		DeadLetter: func(ctx context.Context, topic string, m *message.Message) error {
			return t.publishDeadLetter(ctx, topic, m)
		},
	})
	unwatch := t.watchHard(ctx, d)
	defer unwatch()
	rctx, cancel := t.runContext(ctx)
	defer cancel()
	cb := func(msg *nats.Msg) {
		m, err := coreMessage(topic, msg)
		if err != nil {
			t.log.Error("natstransport: undecodable message dropped", "topic", topic, "error", err)
			return
		}
		if rctx.Err() != nil {
			t.log.Debug("natstransport: message dropped: subscription stopping", "topic", topic, "message_id", m.ID)
			return
		}
		if err := d.Deliver(rctx, m, coreAcker{}); err != nil {
			t.log.Debug("natstransport: message dropped: subscription stopping", "topic", topic, "message_id", m.ID)
		}
	}
	subj := t.subject(topic)
	var sub *nats.Subscription
	var err error
	if so.Group != "" {
		sub, err = t.nc.QueueSubscribe(subj, so.Group, cb)
	} else {
		sub, err = t.nc.Subscribe(subj, cb)
	}
	if err == nil {
		// Make sure the server has the interest before anything else.
		fctx, fcancel := context.WithTimeout(ctx, t.o.APITimeout)
		err = t.nc.FlushWithContext(fctx)
		fcancel()
	}
	if err != nil {
		if sub != nil {
			_ = sub.Unsubscribe()
		}
		d.Cancel()
		_ = d.Stop(context.Background())
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		if t.isClosed() {
			return transport.ErrClosed
		}
		return t.wrap(fmt.Sprintf("natstransport: subscribe to %q", subj), err)
	}
	<-rctx.Done()
	_ = sub.Unsubscribe()
	t.stopDispatcher(ctx, d)
	return t.endErr(ctx)
}

// coreMessage decodes a core NATS message; its As reaches msg.
func coreMessage(topic string, msg *nats.Msg) (*message.Message, error) {
	m, err := decode(topic, msg.Header, msg.Data)
	if err != nil {
		return nil, err
	}
	m.SetNative((*coreMsg)(msg))
	return m, nil
}

// coreMsg is a received *nats.Msg as Message.As's target. It is the same
// pointer converted, so attaching it allocates nothing.
type coreMsg nats.Msg

// As sets a **nats.Msg.
func (n *coreMsg) As(target any) bool {
	if p, ok := target.(**nats.Msg); ok {
		*p = (*nats.Msg)(n)
		return true
	}
	return false
}

// coreAcker settles a core NATS message: there is nothing to ack, and a
// nack cannot bring the message back, which it says with ErrNoRedelivery.
type coreAcker struct{}

func (coreAcker) Ack(context.Context) error                 { return nil }
func (coreAcker) Nack(context.Context, time.Duration) error { return ErrNoRedelivery }
