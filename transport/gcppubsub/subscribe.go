package gcppubsubtransport

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// subscription is one running Subscribe call.
type subscription struct {
	stopOnce sync.Once
	graceful chan struct{} // closed by Shutdown
}

func (s *subscription) stopFetching() {
	s.stopOnce.Do(func() { close(s.graceful) })
}

// Subscribe pulls topic's messages through the group's subscription
// "<topic>.<group>" (created unless Options.DisableCreate), or through a
// private subscription deleted on return when opts.Group is empty, and
// hands them to h. See transport.Subscriber.
func (t *Transport) Subscribe(ctx context.Context, topic string, h message.Handler, opts transport.SubscribeOptions) error {
	if h == nil {
		return errors.New("gcppubsubtransport: Subscribe needs a handler")
	}
	if err := t.enter(); err != nil {
		return err
	}
	defer t.ops.Done()
	if err := t.checkSubscribe(topic, opts); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	so := t.subscribeDefaults(opts)

	private := so.Group == ""
	id := subscriptionID(topic, so.Group)
	if private {
		id = privateSubscriptionID(topic)
	}
	// Creating the subscription must not outlive Close.
	sctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(t.hard, cancel)
	_, err := t.ensureSubscription(sctx, topic, id, so, private)
	stop()
	cancel()
	if err != nil {
		if ctx.Err() == nil && t.hard.Err() != nil {
			return transport.ErrClosed
		}
		return err
	}
	if private {
		defer t.deleteSubscription(id)
	}

	d := transport.NewDispatcher(ctx, h, transport.DispatchOptions{
		Topic: topic, Group: so.Group, Subscribe: so, Logger: t.log,
		DeadLetter: func(ctx context.Context, dlt string, m *message.Message) error {
			return t.publish(ctx, dlt, []*message.Message{m})
		},
	})
	fctx, fetch := context.WithCancel(context.WithoutCancel(ctx))
	defer fetch()
	s := &subscription{graceful: make(chan struct{})}

	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		_ = d.Stop(context.Background())
		return transport.ErrClosed
	}
	t.subs[s] = struct{}{}
	t.mu.Unlock()
	defer func() {
		t.mu.Lock()
		delete(t.subs, s)
		t.mu.Unlock()
	}()

	// Turn the three ways to stop into fetch and handler cancellation.
	exited := make(chan struct{})
	var watch sync.WaitGroup
	watch.Go(func() {
		select {
		case <-ctx.Done():
		case <-t.hard.Done():
		case <-exited:
			return
		case <-s.graceful:
			fetch() // stop pulling; handlers finish
			select {
			case <-ctx.Done():
			case <-t.hard.Done():
			case <-exited:
				return
			}
		}
		fetch()
		d.Cancel()
	})

	sub := t.client.Subscriber(t.subPath(id))
	rs := &sub.ReceiveSettings
	rs.NumGoroutines = t.opts.ReceiveGoroutines
	rs.MaxOutstandingMessages = so.MaxInFlight
	rs.MaxOutstandingBytes = t.opts.MaxOutstandingBytes
	rs.MaxExtension = t.opts.MaxExtension
	// Extend leases by at most AckWait at a time, so that the messages of
	// a subscriber that died come back within about AckWait.
	rs.MaxDurationPerAckExtension = clampAck(so.AckWait)

	// The library calls back from many goroutines at once, while the
	// Dispatcher runs a Concurrency-1 handler in the caller's goroutine:
	// take turns so that one handler runs at a time.
	var serial chan struct{}
	if so.Concurrency == 1 {
		serial = make(chan struct{}, 1)
	}
	rerr := sub.Receive(fctx, func(cctx context.Context, pm *pubsub.Message) {
		t.deliver(cctx, fctx, d, serial, topic, sub, pm)
	})
	close(exited)
	watch.Wait()
	// Every delivered message was settled before its callback returned.
	_ = d.Stop(context.WithoutCancel(ctx))

	switch {
	case t.hard.Err() != nil:
		return transport.ErrClosed
	case ctx.Err() != nil:
		return ctx.Err()
	case isClosing(s):
		return transport.ErrClosed
	case rerr != nil:
		return fmt.Errorf("gcppubsubtransport: receive from %s: %w", id, rerr)
	}
	return transport.ErrClosed
}

func isClosing(s *subscription) bool {
	select {
	case <-s.graceful:
		return true
	default:
		return false
	}
}

// deleteSubscription removes a private subscription; a failure only means
// it expires a day later.
func (t *Transport) deleteSubscription(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := t.client.SubscriptionAdminClient.DeleteSubscription(ctx, &pubsubpb.DeleteSubscriptionRequest{Subscription: t.subPath(id)})
	if err != nil {
		t.log.Warn("gcppubsubtransport: deleting a private subscription failed; it expires after 24h of inactivity", "subscription", id, "error", err)
	}
}

// deliver runs in the client library's callback goroutine. It converts
// the message, hands it to the Dispatcher and returns only once the
// message is settled, so the library's flow control (MaxOutstanding*)
// counts exactly the messages courier holds, and its lease extension
// covers them until then.
func (t *Transport) deliver(cctx, fctx context.Context, d *transport.Dispatcher, serial chan struct{}, topic string, sub *pubsub.Subscriber, pm *pubsub.Message) {
	got := time.Now()
	if serial != nil {
		select {
		case serial <- struct{}{}:
		case <-cctx.Done():
			pm.Nack() // stopping: redeliver
			return
		}
	}
	m, a := receive(pm, topic, sub)
	err := d.Deliver(cctx, m, a)
	if err == nil {
		<-a.settled
	}
	if serial != nil {
		<-serial
	}
	if err != nil {
		pm.Nack() // not taken: redeliver
		return
	}
	if a.delay > 0 {
		// Pub/Sub has no per-message redelivery delay: keep the message
		// leased (the library extends it) until the delay has passed, then
		// nack it. When the subscription stops first, nack at once. The
		// library extends the lease for MaxExtension from receipt only:
		// hold no longer than that, or the lease would lapse, Pub/Sub
		// redeliver the message while this callback still held its
		// flow-control slot.
		hold := holdFor(a.delay, time.Since(got), t.opts.MaxExtension)
		if hold < a.delay {
			t.log.Debug("gcppubsubtransport: nack delay capped by max_extension", "topic", topic, "message_id", m.ID, "delay", a.delay, "held", hold, "max_extension", t.opts.MaxExtension)
		}
		tm := time.NewTimer(hold)
		select {
		case <-tm.C:
		case <-fctx.Done():
			tm.Stop()
		}
		pm.Nack()
	}
}

// leaseMargin is kept back from MaxExtension when holding a nacked
// message: the library counts MaxExtension from when it received the
// message, a little before the callback started.
const leaseMargin = time.Second

// holdFor returns how long to keep a message nacked with delay leased,
// elapsed after its callback started: the delay, cut to what is left of
// maxExt (less leaseMargin), and never negative.
func holdFor(delay, elapsed, maxExt time.Duration) time.Duration {
	return max(0, min(delay, maxExt-leaseMargin-elapsed))
}

// receive builds the Message and the acker for pm, which sub received.
// The acker is the Message's As target (no closure to allocate).
func receive(pm *pubsub.Message, topic string, sub *pubsub.Subscriber) (*message.Message, *acker) {
	m := toMessage(pm, topic)
	a := &acker{pm: pm, sub: sub, settled: make(chan struct{})}
	m.SetNative(a)
	return m, a
}

func toMessage(pm *pubsub.Message, topic string) *message.Message {
	m := &message.Message{
		ID:      pm.Attributes[idAttr],
		Key:     pm.OrderingKey,
		Payload: pm.Data,
		Topic:   topic,
		Time:    pm.PublishTime,
	}
	if m.ID == "" {
		m.ID = pm.ID // published by something other than courier
	}
	if n := len(pm.Attributes); n > 1 || (n == 1 && pm.Attributes[idAttr] == "") {
		m.Headers = make(message.Header, n)
		for k, v := range pm.Attributes {
			if k != idAttr {
				m.Headers[k] = v
			}
		}
	}
	if pm.DeliveryAttempt != nil {
		m.Attempt = *pm.DeliveryAttempt
	}
	return m
}

// acker settles one message for the Dispatcher.
type acker struct {
	pm      *pubsub.Message
	sub     *pubsub.Subscriber // that received pm, for As
	settled chan struct{}
	delay   time.Duration
}

// As is Message.As for a's message: *(*pubsub.Message) and
// *(*pubsub.Subscriber).
func (a *acker) As(target any) bool {
	switch p := target.(type) {
	case **pubsub.Message:
		*p = a.pm
	case **pubsub.Subscriber:
		*p = a.sub
	default:
		return false
	}
	return true
}

func (a *acker) Ack(ctx context.Context) error {
	defer close(a.settled)
	// Without exactly-once delivery the result is ready at once; with it,
	// this waits for Pub/Sub's confirmation.
	_, err := a.pm.AckWithResult().Get(ctx)
	return err
}

func (a *acker) Nack(_ context.Context, delay time.Duration) error {
	if delay > 0 {
		a.delay = delay // deliver nacks after the delay
	} else {
		a.pm.Nack()
	}
	close(a.settled)
	return nil
}
