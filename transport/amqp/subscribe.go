package amqptransport

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

var consumerSeq atomic.Uint64

type subscription struct {
	t      *Transport
	topic  string
	opts   transport.SubscribeOptions
	d      *transport.Dispatcher
	exited chan struct{}
	cur    atomic.Pointer[consumerChan] // the channel consuming now; nil between channels
}

// QueueName is the durable queue a group of a topic consumes from:
// "<topic>.<group>".
func QueueName(topic, group string) string { return topic + "." + group }

// Declare declares the topic's exchange and the group's durable queue and
// bindings, so messages published from now on are kept for the group.
// Settings that conflict with existing ones fail with ErrTopology.
func (t *Transport) Declare(ctx context.Context, topic string, opts transport.SubscribeOptions) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if opts.Group == "" {
		return errors.New("amqptransport: Declare needs a group")
	}
	if err := transport.CheckSubscribe(topic, opts, t.caps.Limits); err != nil {
		return err
	}
	if t.isStopping() {
		return transport.ErrClosed
	}
	for {
		conn, _, err := t.sub.connection(ctx)
		if err != nil {
			return err
		}
		ch, err := conn.Channel()
		if err == nil {
			_, err = t.declareTopology(ch, topic, opts.Group)
			_ = ch.Close()
		}
		if err == nil {
			return nil
		}
		if !t.isConnLoss(conn, err) {
			return t.scrub(err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func (t *Transport) isStopping() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.stopping
}

// declareTopology declares topic's exchange and group's queue with its
// bindings, returning the queue's name.
func (t *Transport) declareTopology(ch *amqp.Channel, topic, group string) (string, error) {
	if err := t.declareExchange(ch, topic); err != nil {
		return "", err
	}
	var name string
	if group == "" {
		q, err := ch.QueueDeclare("", false, true, true, false, nil)
		if err != nil {
			return "", topologyError("declare exclusive queue", err)
		}
		name = q.Name
	} else {
		name = QueueName(topic, group)
		args := amqp.Table{}
		if t.o.QueueType == QueueQuorum {
			args["x-queue-type"] = QueueQuorum
		}
		if t.o.DeadLetterExchange != "" {
			args["x-dead-letter-exchange"] = t.o.DeadLetterExchange
		}
		if _, err := ch.QueueDeclare(name, true, false, false, false, args); err != nil {
			return "", topologyError(fmt.Sprintf("declare %s queue %q", t.o.QueueType, name), err)
		}
	}
	switch t.o.ExchangeType {
	case ExchangeFanout:
		if err := ch.QueueBind(name, "", topic, false, nil); err != nil {
			return "", topologyError(fmt.Sprintf("bind queue %q to %q", name, topic), err)
		}
	case ExchangeHeaders:
		args := amqp.Table{"x-match": t.o.BindingMatch}
		for k, v := range t.o.BindingHeaders {
			args[k] = v
		}
		if err := ch.QueueBind(name, "", topic, false, args); err != nil {
			return "", topologyError(fmt.Sprintf("bind queue %q to %q", name, topic), err)
		}
	default:
		keys := t.o.BindingKeys
		if k, ok := t.o.GroupBindingKeys[group]; ok {
			keys = k
		}
		for _, k := range keys {
			if err := ch.QueueBind(name, k, topic, false, nil); err != nil {
				return "", topologyError(fmt.Sprintf("bind queue %q to %q with key %q", name, topic, k), err)
			}
		}
	}
	return name, nil
}

// Subscribe consumes the group's queue (or, without a group, an exclusive
// auto-delete queue) of topic until ctx ends or the transport closes. It
// sets basic.qos to MaxInFlight, re-declares and resumes after connection
// or channel loss, and returns a declaration error (ErrTopology) at once,
// or when a re-declaration after a reconnect fails.
func (t *Transport) Subscribe(ctx context.Context, topic string, h message.Handler, opts transport.SubscribeOptions) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if h == nil {
		return errors.New("amqptransport: nil handler")
	}
	if err := transport.CheckSubscribe(topic, opts, t.caps.Limits); err != nil {
		return err
	}
	if opts.Start == transport.StartOldest {
		return fmt.Errorf("%w: StartOldest: a RabbitMQ queue holds only messages published after it was declared", transport.ErrUnsupported)
	}
	so := opts.Defaults()
	s := &subscription{t: t, topic: topic, opts: so, exited: make(chan struct{})}
	s.d = transport.NewDispatcher(ctx, h, transport.DispatchOptions{
		Topic: topic, Group: so.Group, Subscribe: so, Logger: t.log,
		DeadLetter: func(ctx context.Context, dlt string, m *message.Message) error {
			// A copy the dead-letter headers pushed over the size limit
			// is cut to fit: it would otherwise fail, and be nacked and
			// retried, forever.
			if fm, cut := transport.FitDeadLetter(m, func(m *message.Message) bool { return t.deadLetterFits(dlt, m) }); cut {
				t.log.Warn("amqptransport: dead-letter copy over the size limit; its reason (or optional dead-letter headers) cut to fit", "topic", dlt, "message_id", m.ID)
				m = fm
			}
			return t.Publish(ctx, dlt, m)
		},
	})
	t.mu.Lock()
	if t.stopping {
		t.mu.Unlock()
		_ = s.d.Stop(context.Background())
		return transport.ErrClosed
	}
	t.subs[s] = struct{}{}
	t.mu.Unlock()
	defer func() {
		t.mu.Lock()
		delete(t.subs, s)
		t.mu.Unlock()
		close(s.exited)
	}()
	return s.run(ctx)
}

func (s *subscription) run(ctx context.Context) error {
	t := s.t
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-t.done:
			cancel()
		case <-runCtx.Done():
		}
	}()
	var cc *consumerChan
	// finish ends the subscription. When cancelled is not nil a
	// basic.cancel is under way on cc; the channel is closed only after
	// it, so the cancel never follows the channel.close (the broker
	// answers a frame on a channel it has dropped by closing the whole
	// connection: 504 "expected 'channel.open'").
	finish := func(err error, cancelled <-chan struct{}) error {
		if ctx.Err() != nil {
			s.d.Cancel()
			err = ctx.Err()
		} else if t.isStopping() {
			err = transport.ErrClosed
		}
		_ = s.d.Stop(context.Background())
		if cc == nil {
			return err
		}
		// Unacked messages return to the queue when the channel
		// closes; the handshake runs in the background so an
		// unresponsive broker cannot hold Subscribe.
		c := cc
		t.chanTask(func() {
			if cancelled != nil {
				<-cancelled
			}
			_ = c.close()
		})
		return err
	}
	first := true
	for {
		conn, _, err := t.sub.connection(runCtx)
		if err != nil {
			return finish(err, nil)
		}
		var dl <-chan amqp.Delivery
		var queue, tag string
		cc, dl, queue, tag, err = s.start(conn)
		if err != nil {
			cc = nil
			if runCtx.Err() != nil {
				return finish(runCtx.Err(), nil)
			}
			if !t.isConnLoss(conn, err) {
				if !first {
					t.log.Error("amqptransport: subscription cannot resume", "topic", s.topic, "group", s.opts.Group, "error", t.scrub(err).Error())
				}
				return finish(t.scrub(err), nil)
			}
			select {
			case <-runCtx.Done():
			case <-time.After(50 * time.Millisecond):
			}
			continue
		}
		s.cur.Store(cc)
		if t.isClosed() {
			cc.stop() // Close may have missed it
		}
		if !first {
			t.log.Info("amqptransport: subscription resumed", "topic", s.topic, "group", s.opts.Group, "queue", queue)
		}
		first = false
		lost := s.consume(runCtx, cc, dl, queue)
		if !lost {
			// Stop the broker pushing more (basic.cancel) while the
			// taken messages drain; in the background, as above.
			c := cc
			cancelled := make(chan struct{})
			t.chanTask(func() {
				defer close(cancelled)
				_ = c.cancel(tag)
			})
			return finish(nil, cancelled)
		}
		t.log.Warn("amqptransport: consumer channel lost; resuming", "topic", s.topic, "group", s.opts.Group, "queue", queue)
		// Handlers may still be settling on the old channel: close
		// takes it from them first, so no ack follows the close.
		s.cur.Store(nil)
		_ = cc.close()
		cc = nil
	}
}

// consumerChan is a consuming channel shared by the handlers settling its
// deliveries and the subscription ending it. Once stop or close has been
// called, the settle methods and cancel fail with amqp.ErrClosed without
// sending: the broker drops a channel when it answers channel.close (and
// all of them on connection.close), and a frame for a dropped channel
// ends the whole connection (504 CHANNEL_ERROR "expected
// 'channel.open'"), cutting off every other subscription on it. The
// settlement is not needed then: the broker returns the channel's
// unsettled deliveries to their queues.
type consumerChan struct {
	ch        *amqp.Channel
	mu        sync.RWMutex // held for reading while a frame is sent
	stopped   atomic.Bool
	closeOnce sync.Once
	closeErr  error
}

func (c *consumerChan) send(f func(*amqp.Channel) error) error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.stopped.Load() {
		return amqp.ErrClosed
	}
	return f(c.ch)
}

func (c *consumerChan) ack(tag uint64) error {
	return c.send(func(ch *amqp.Channel) error { return ch.Ack(tag, false) })
}

func (c *consumerChan) nack(tag uint64, requeue bool) error {
	return c.send(func(ch *amqp.Channel) error { return ch.Nack(tag, false, requeue) })
}

func (c *consumerChan) reject(tag uint64) error {
	return c.send(func(ch *amqp.Channel) error { return ch.Reject(tag, false) })
}

// cancel sends basic.cancel for tag and waits for the broker's answer.
func (c *consumerChan) cancel(tag string) error {
	return c.send(func(ch *amqp.Channel) error { return ch.Cancel(tag, false) })
}

// stop refuses further frames without waiting for those being sent
// (Close, about to close the connection, must not wait for a broker).
func (c *consumerChan) stop() { c.stopped.Store(true) }

// close refuses further frames, waits for those being sent and closes
// the channel. It is idempotent.
func (c *consumerChan) close() error {
	c.stop()
	c.mu.Lock() // waits for frames being sent; later ones see stopped
	c.mu.Unlock()
	c.closeOnce.Do(func() { c.closeErr = c.ch.Close() })
	return c.closeErr
}

// start opens a channel, sets QoS, declares the topology and consumes.
func (s *subscription) start(conn *amqp.Connection) (*consumerChan, <-chan amqp.Delivery, string, string, error) {
	t := s.t
	ch, err := conn.Channel()
	if err != nil {
		return nil, nil, "", "", err
	}
	fail := func(err error) (*consumerChan, <-chan amqp.Delivery, string, string, error) {
		_ = ch.Close()
		return nil, nil, "", "", err
	}
	prefetch := s.opts.MaxInFlight
	if prefetch > math.MaxUint16 {
		prefetch = math.MaxUint16
	}
	if err := ch.Qos(prefetch, 0, false); err != nil {
		return fail(fmt.Errorf("amqptransport: basic.qos: %w", err))
	}
	queue, err := t.declareTopology(ch, s.topic, s.opts.Group)
	if err != nil {
		return fail(err)
	}
	tag := "courier-" + strconv.FormatUint(consumerSeq.Add(1), 10)
	dl, err := ch.Consume(queue, tag, false, false, false, false, nil)
	if err != nil {
		return fail(fmt.Errorf("amqptransport: consume %q: %w", queue, err))
	}
	return &consumerChan{ch: ch}, dl, queue, tag, nil
}

// consume hands deliveries to the dispatcher until ctx ends (false) or the
// channel closes (true).
func (s *subscription) consume(ctx context.Context, ch *consumerChan, dl <-chan amqp.Delivery, queue string) bool {
	for {
		select {
		case <-ctx.Done():
			return false
		case dv, ok := <-dl:
			if !ok {
				return ctx.Err() == nil
			}
			m, a := s.receive(dv, ch, queue)
			if err := s.d.Deliver(ctx, m, a); err != nil {
				// Not taken: it stays unacked and returns to the queue
				// when the channel closes.
				return false
			}
		}
	}
}

// receive builds the Message and the Acker for a delivery on ch. The
// acker is the Message's As target (no closure to allocate).
func (s *subscription) receive(dv amqp.Delivery, ch *consumerChan, queue string) (*message.Message, transport.Acker) {
	m := s.toMessage(dv)
	a := &acker{s: s, ch: ch, dv: dv, queue: queue, attempt: m.Attempt}
	m.SetNative(a)
	if s.t.o.DeadLetterExchange != "" && s.opts.Group != "" {
		return m, &termAcker{a}
	}
	return m, a
}

// toMessage maps a delivery back onto a Message (see toPublishing).
func (s *subscription) toMessage(dv amqp.Delivery) *message.Message {
	m := &message.Message{ID: dv.MessageId, Topic: s.topic, Payload: dv.Body}
	var h message.Header
	set := func(k, v string) {
		if h == nil {
			h = make(message.Header, len(dv.Headers)+3)
		}
		h[k] = v
	}
	prev, count := 0, -1
	for k, v := range dv.Headers {
		switch {
		case k == hdrKey:
			m.Key = tableString(v)
		case k == hdrAttempt:
			prev = tableInt(v)
		case k == "x-delivery-count":
			count = tableInt(v)
		case reservedHeader(k):
		default:
			set(k, tableString(v))
		}
	}
	if dv.ContentType != "" {
		set(message.HeaderContentType, dv.ContentType)
	}
	if dv.CorrelationId != "" {
		set(message.HeaderCorrelationID, dv.CorrelationId)
	}
	if dv.Type != "" {
		set(message.HeaderType, dv.Type)
	}
	m.Headers = h
	if count < 0 {
		count = 0
		if dv.Redelivered {
			count = 1
		}
	}
	m.Attempt = prev + count + 1
	if !dv.Timestamp.IsZero() {
		m.Time = dv.Timestamp
	}
	return m
}

func tableString(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case []byte:
		return string(x)
	case nil:
		return ""
	}
	return fmt.Sprint(v)
}

func tableInt(v any) int {
	switch x := v.(type) {
	case int64:
		return int(x)
	case int32:
		return int(x)
	case int16:
		return int(x)
	case int8:
		return int(x)
	case int:
		return x
	case uint8:
		return int(x)
	case uint16:
		return int(x)
	case uint32:
		return int(x)
	case string:
		n, _ := strconv.Atoi(x)
		return n
	}
	return 0
}

// acker settles one delivery on the channel it arrived on.
type acker struct {
	s       *subscription
	ch      *consumerChan
	dv      amqp.Delivery
	queue   string
	attempt int
}

// As is Message.As for a's delivery: *amqp.Delivery (as received) and
// **amqp.Channel (the channel it arrived on).
func (a *acker) As(target any) bool {
	switch p := target.(type) {
	case *amqp.Delivery:
		*p = a.dv
		return true
	case **amqp.Channel:
		*p = a.ch.ch
		return true
	}
	return false
}

func (a *acker) Ack(context.Context) error {
	if err := a.ch.ack(a.dv.DeliveryTag); err != nil {
		return fmt.Errorf("amqptransport: ack: %w", err)
	}
	return nil
}

// Nack requeues. With a delay it republishes the message to the retry
// queue for that delay (see the package doc) and then acks; without one, a
// quorum queue requeues natively (x-delivery-count counts it) and a classic
// queue gets the message republished with its attempt count, since a
// classic queue does not count deliveries.
func (a *acker) Nack(ctx context.Context, delay time.Duration) error {
	t := a.s.t
	if delay <= 0 && (t.o.QueueType == QueueQuorum && a.s.opts.Group != "" || a.s.d.Context().Err() != nil) {
		// Quorum queues count native requeues; a hard stop returns the
		// message to its place without a round trip.
		return a.requeue()
	}
	if err := t.republish(ctx, a.queue, a.dv, a.attempt, delay); err != nil {
		t.log.Warn("amqptransport: republish for redelivery failed; requeueing at once", "queue", a.queue, "message_id", a.dv.MessageId, "delay", delay, "error", err.Error())
		return errors.Join(err, a.requeue())
	}
	return a.Ack(ctx)
}

func (a *acker) requeue() error {
	if err := a.ch.nack(a.dv.DeliveryTag, true); err != nil {
		return fmt.Errorf("amqptransport: nack: %w", err)
	}
	return nil
}

// termAcker adds native dead-lettering: Term rejects without requeue, so
// the broker moves the message to the queue's x-dead-letter-exchange.
type termAcker struct{ *acker }

func (a *termAcker) Term(_ context.Context, reason string) error {
	a.s.t.log.Info("amqptransport: message rejected into the dead-letter exchange", "queue", a.queue, "message_id", a.dv.MessageId, "dead_letter_exchange", a.s.t.o.DeadLetterExchange, "reason", reason)
	if err := a.ch.reject(a.dv.DeliveryTag); err != nil {
		return fmt.Errorf("amqptransport: reject: %w", err)
	}
	return nil
}

// republish sends a copy of dv, with its attempt count, straight to queue
// (delay 0) or to the retry queue that dead-letters it back to queue after
// delay.
func (t *Transport) republish(ctx context.Context, queue string, dv amqp.Delivery, attempt int, delay time.Duration) error {
	h := make(amqp.Table, len(dv.Headers)+1)
	for k, v := range dv.Headers {
		if k == hdrKey || !reservedHeader(k) {
			h[k] = v
		}
	}
	h[hdrAttempt] = int64(attempt)
	p := amqp.Publishing{
		Headers: h, ContentType: dv.ContentType, ContentEncoding: dv.ContentEncoding,
		DeliveryMode: amqp.Persistent, Priority: dv.Priority, CorrelationId: dv.CorrelationId,
		ReplyTo: dv.ReplyTo, MessageId: dv.MessageId, Timestamp: dv.Timestamp, Type: dv.Type,
		AppId: dv.AppId, Body: dv.Body,
	}
	// Not copied: user-id (the broker checks it against this
	// connection's user and would refuse a foreign one) and expiration
	// (a per-message TTL would cut the retry queue's delay short).
	target := queue
	if delay > 0 {
		var err error
		if target, err = t.retryQueue(ctx, queue, delay); err != nil {
			return err
		}
	}
	return t.send(ctx, "", "", []outgoing{{key: target, pub: p}}, true)
}

// retryBucket rounds d up to whole milliseconds and then up to two
// significant digits (1234ms → 1300ms), so a few retry queues serve any
// mix of delays and no message returns before its delay.
func retryBucket(d time.Duration) int64 {
	ms := int64((d + time.Millisecond - 1) / time.Millisecond)
	if ms < 1 {
		ms = 1
	}
	scale := int64(1)
	for ms/scale >= 100 {
		scale *= 10
	}
	return min((ms+scale-1)/scale*scale, maxTTL)
}

// maxTTL is the largest x-message-ttl RabbitMQ accepts (2^32-1 ms, about
// 49.7 days); longer delays are capped to it.
const maxTTL = 1<<32 - 1

// retryExpiry is how long an unused retry queue lives after its last
// declaration beyond its TTL (x-expires = TTL + retryExpiry).
const retryExpiry = 10 * time.Minute

// RetryQueueName is the queue holding queue's messages nacked with a delay
// that rounds to ms milliseconds.
func RetryQueueName(queue string, ms int64) string {
	return "courier-retry." + queue + "." + strconv.FormatInt(ms, 10) + "ms"
}

// retryQueue declares (at most once a minute) the retry queue for queue
// and delay: x-message-ttl is the delay, expired messages are
// dead-lettered through the default exchange back to queue.
func (t *Transport) retryQueue(ctx context.Context, queue string, delay time.Duration) (string, error) {
	ms := retryBucket(delay)
	name := RetryQueueName(queue, ms)
	t.mu.Lock()
	last, ok := t.declared[name]
	t.mu.Unlock()
	if ok && time.Since(last) < time.Minute {
		return name, nil
	}
	conn, _, err := t.pub.connection(ctx)
	if err != nil {
		return "", err
	}
	ch, err := conn.Channel()
	if err != nil {
		return "", fmt.Errorf("amqptransport: open channel: %w", err)
	}
	defer ch.Close()
	args := amqp.Table{
		"x-message-ttl":             ms,
		"x-dead-letter-exchange":    "",
		"x-dead-letter-routing-key": queue,
		"x-expires":                 ms + retryExpiry.Milliseconds(),
	}
	if _, err := ch.QueueDeclare(name, true, false, false, false, args); err != nil {
		return "", topologyError(fmt.Sprintf("declare retry queue %q", name), err)
	}
	t.mu.Lock()
	t.declared[name] = time.Now()
	t.mu.Unlock()
	return name, nil
}
