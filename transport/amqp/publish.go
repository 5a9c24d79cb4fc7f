package amqptransport

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// AMQP header names the transport sets itself; they never reach
// Message.Headers and user headers may not use them.
const (
	hdrKey     = "x-courier-key"     // Message.Key
	hdrAttempt = "x-courier-attempt" // attempts that failed before a republish
)

// reservedHeader reports header names the broker or this transport own:
// the x-courier-* names, the broker's dead-lettering and delivery-count
// headers, and CC/BCC (sender-selected distribution: the broker would
// route on them).
func reservedHeader(k string) bool {
	switch k {
	case "x-death", "x-delivery-count", "CC", "BCC":
		return true
	}
	return strings.HasPrefix(k, "x-courier-") || strings.HasPrefix(k, "x-first-death-") || strings.HasPrefix(k, "x-last-death-")
}

// outgoing is one message ready for basic.publish.
type outgoing struct {
	key string
	pub amqp.Publishing
}

// toPublishing maps m onto AMQP: ID → message-id; the content-type,
// ce-correlationid and ce-type headers → the content-type, correlation-id
// and type properties (when they fit a short string); Key → the
// x-courier-key header; other headers → the header table as long strings.
func (t *Transport) toPublishing(i int, m *message.Message, now time.Time) (outgoing, error) {
	var h amqp.Table
	if len(m.Headers) > 0 || m.Key != "" {
		h = make(amqp.Table, len(m.Headers)+1)
	}
	p := amqp.Publishing{
		MessageId:    m.ID,
		DeliveryMode: amqp.Persistent,
		Timestamp:    now,
		Body:         m.Payload,
		Headers:      h,
	}
	size := len(m.ID) + 2*len(m.Key)
	for k, v := range m.Headers {
		if reservedHeader(k) {
			return outgoing{}, fmt.Errorf("%w: message %d (id %q): header name %q is reserved by the AMQP transport or the broker", transport.ErrInvalidMessage, i, m.ID, k)
		}
		if len(k) > 255 {
			return outgoing{}, &transport.LimitError{Index: i, MessageID: m.ID, What: "header", Size: len(k), Limit: 255}
		}
		size += len(k) + len(v) + 6
		if v != "" && len(v) <= 255 {
			switch k {
			case message.HeaderContentType:
				p.ContentType = v
				continue
			case message.HeaderCorrelationID:
				p.CorrelationId = v
				continue
			case message.HeaderType:
				p.Type = v
				continue
			}
		}
		h[k] = v
	}
	if size > maxHeaderTotal {
		return outgoing{}, &transport.LimitError{Index: i, MessageID: m.ID, What: "header", Size: size, Limit: maxHeaderTotal}
	}
	if m.Key != "" {
		h[hdrKey] = m.Key
	}
	key := m.Key
	if t.o.RoutingKeyHeader != "" {
		key = m.Headers[t.o.RoutingKeyHeader]
	}
	if len(key) > 255 {
		return outgoing{}, &transport.LimitError{Index: i, MessageID: m.ID, What: "key", Size: len(key), Limit: 255}
	}
	return outgoing{key: key, pub: p}, nil
}

// Publish sends msgs to the topic's exchange (declaring it when this
// connection has not yet) on a confirm-mode channel, all of them back to
// back, and returns once the broker confirmed every one. Unroutable
// messages (no queue bound) fail with ErrUnroutable unless
// Options.AllowUnroutable; a broker nack fails with ErrNacked. Messages
// left unconfirmed by a lost connection are sent again after the
// reconnect, for up to Options.PublishRetry (so a message may arrive
// twice, never zero times while Publish reports success).
func (t *Transport) Publish(ctx context.Context, topic string, msgs ...*message.Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if t.isClosed() {
		return transport.ErrClosed
	}
	if err := transport.PreparePublish(topic, msgs, t.caps.Limits); err != nil {
		return err
	}
	if len(msgs) == 0 {
		return nil
	}
	now := time.Now()
	out := make([]outgoing, len(msgs))
	for i, m := range msgs {
		o, err := t.toPublishing(i, m, now)
		if err != nil {
			return err
		}
		out[i] = o
	}
	return t.send(ctx, topic, topic, out, !t.o.AllowUnroutable)
}

func (t *Transport) isClosed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.closed
}

// send publishes out to exchange (declaring topic's exchange first when
// topic is set) and waits for the confirms, resending what a connection
// loss left unconfirmed.
func (t *Transport) send(ctx context.Context, exchange, topic string, out []outgoing, mandatory bool) error {
	// Waiting for a connection (or a free channel) and resending after a
	// loss are both bounded by PublishRetry, so a Publish with a
	// background ctx does not hang while the broker is away.
	until := time.Now().Add(t.o.PublishRetry)
	pending := out
	for {
		// During a resource alarm the broker stops reading from
		// publishing connections, and a write would block beyond the
		// reach of ctx: wait here instead.
		select {
		case <-t.whenUnblocked():
		default:
			select {
			case <-t.whenUnblocked():
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Until(until)):
				return fmt.Errorf("%w: %d message(s) on exchange %q: the broker blocked publishing (resource alarm) for %v", ErrUnconfirmed, len(pending), exchange, t.o.PublishRetry)
			case <-t.closedCh:
				return transport.ErrClosed
			}
		}
		wctx, cancel := context.WithDeadline(ctx, until)
		pc, err := t.acquire(wctx)
		cancel()
		if err != nil {
			if cerr := ctx.Err(); cerr != nil {
				return cerr
			}
			if errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("%w: %d message(s) on exchange %q: no connection to the broker within %v", ErrUnconfirmed, len(pending), exchange, t.o.PublishRetry)
			}
			return err
		}
		res := pc.publish(ctx, t, exchange, topic, pending, mandatory)
		t.release(pc)
		if res.err == nil && len(res.unconfirmed) == 0 {
			switch {
			case len(res.returned) > 0:
				r := res.returned[0]
				return fmt.Errorf("%w: %d of %d message(s) matched no queue (exchange %q, routing key %q, first id %q: %d %s)", ErrUnroutable, len(res.returned), len(pending), exchange, r.RoutingKey, r.MessageId, r.ReplyCode, r.ReplyText)
			case res.nacked > 0:
				return fmt.Errorf("%w: %d of %d message(s) on exchange %q", ErrNacked, res.nacked, len(pending), exchange)
			}
			return nil
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if res.err != nil && !res.connLoss {
			return t.scrub(res.err)
		}
		if len(res.returned) > 0 {
			return fmt.Errorf("%w: %d message(s) matched no queue (exchange %q)", ErrUnroutable, len(res.returned), exchange)
		}
		if t.isClosed() {
			return fmt.Errorf("%w: %w: %d of %d message(s) on exchange %q", transport.ErrClosed, ErrUnconfirmed, len(res.unconfirmed), len(out), exchange)
		}
		if t.o.NoPublishRetry || time.Now().After(until) {
			cause := res.err
			if cause == nil {
				cause = errors.New("connection lost")
			}
			return t.scrub(fmt.Errorf("%w: %d of %d message(s) on exchange %q: %w", ErrUnconfirmed, len(res.unconfirmed), len(out), exchange, cause))
		}
		t.log.Debug("amqptransport: resending unconfirmed messages after connection loss", "exchange", exchange, "count", len(res.unconfirmed))
		pending = res.unconfirmed
	}
}

// pubChan is a confirm-mode channel used by one send at a time.
type pubChan struct {
	t         *Transport
	closeOnce sync.Once
	ch        *amqp.Channel
	conn      *amqp.Connection
	gen       uint64
	// exchanges declared on this channel's connection generation.
	exchanges map[string]bool

	mu       sync.Mutex
	returned []amqp.Return
	dead     bool
	barrier  chan chan struct{}
	quit     chan struct{}    // closed when the returns watcher exits
	closed   chan *amqp.Error // the channel's close reason
}

type pubResult struct {
	unconfirmed []outgoing
	returned    []amqp.Return
	nacked      int
	err         error
	connLoss    bool
}

func (t *Transport) acquire(ctx context.Context) (*pubChan, error) {
	select {
	case t.pubSlots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.closedCh:
		return nil, transport.ErrClosed
	}
	for {
		select {
		case pc := <-t.pubIdle:
			if pc.usable(t) {
				return pc, nil
			}
			pc.close()
			continue
		default:
		}
		break
	}
	for {
		conn, gen, err := t.pub.connection(ctx)
		if err != nil {
			<-t.pubSlots
			return nil, err
		}
		pc, err := newPubChan(t, conn, gen)
		if err == nil {
			return pc, nil
		}
		if !t.isConnLoss(conn, err) {
			<-t.pubSlots
			return nil, t.scrub(fmt.Errorf("amqptransport: open publish channel: %w", err))
		}
		select {
		case <-time.After(10 * time.Millisecond):
		case <-ctx.Done():
			<-t.pubSlots
			return nil, ctx.Err()
		}
	}
}

func (t *Transport) release(pc *pubChan) {
	if pc.usable(t) {
		select {
		case t.pubIdle <- pc:
		default:
			pc.close()
		}
	} else {
		pc.close()
	}
	<-t.pubSlots
}

func newPubChan(t *Transport, conn *amqp.Connection, gen uint64) (*pubChan, error) {
	ch, err := conn.Channel()
	if err != nil {
		return nil, err
	}
	if err := ch.Confirm(false); err != nil {
		ch.Close()
		return nil, err
	}
	pc := &pubChan{t: t, ch: ch, conn: conn, gen: gen, exchanges: map[string]bool{}, barrier: make(chan chan struct{}), quit: make(chan struct{})}
	pc.closed = ch.NotifyClose(make(chan *amqp.Error, 1))
	// Unbuffered on purpose: the client's reader goroutine hands a
	// basic.return over (the send completes) before it processes the
	// basic.ack that follows it. So once a message's confirm is seen, its
	// return was received by watch, and a barrier round trip through watch
	// proves it was also recorded.
	returns := ch.NotifyReturn(make(chan amqp.Return))
	go pc.watch(returns)
	return pc, nil
}

func (pc *pubChan) watch(returns <-chan amqp.Return) {
	defer close(pc.quit)
	for {
		select {
		case r, ok := <-returns:
			if !ok {
				return
			}
			pc.mu.Lock()
			pc.returned = append(pc.returned, r)
			pc.mu.Unlock()
		case done := <-pc.barrier:
			close(done)
		}
	}
}

// sync returns once every basic.return received before it was called has
// been recorded.
func (pc *pubChan) sync() {
	done := make(chan struct{})
	select {
	case pc.barrier <- done:
		<-done
	case <-pc.quit:
	}
}

func (pc *pubChan) usable(t *Transport) bool {
	pc.mu.Lock()
	dead := pc.dead
	pc.mu.Unlock()
	if dead || pc.ch.IsClosed() {
		return false
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	return !t.closed && t.pub.gen == pc.gen && t.pub.conn == pc.conn
}

// close marks pc dead and closes its channel in the background: the
// close handshake waits for the broker, which may not be reading (a
// resource alarm, a partition), and must not hold the caller.
func (pc *pubChan) close() {
	pc.mu.Lock()
	pc.dead = true
	pc.mu.Unlock()
	pc.closeOnce.Do(func() { pc.t.chanTask(func() { _ = pc.ch.Close() }) })
}

// publish sends out back to back and then waits for every confirm (or the
// channel's end).
func (pc *pubChan) publish(ctx context.Context, t *Transport, exchange, topic string, out []outgoing, mandatory bool) pubResult {
	if topic != "" && !pc.exchanges[topic] {
		if err := t.declareExchange(pc.ch, topic); err != nil {
			pc.close()
			return pubResult{unconfirmed: out, err: err, connLoss: t.isConnLoss(pc.conn, err)}
		}
		pc.exchanges[topic] = true
	}
	pc.mu.Lock()
	pc.returned = pc.returned[:0]
	pc.mu.Unlock()
	dcs := make([]*amqp.DeferredConfirmation, 0, len(out))
	var perr error
	for i := range out {
		dc, err := pc.ch.PublishWithDeferredConfirmWithContext(ctx, exchange, out[i].key, mandatory, false, out[i].pub)
		if err != nil {
			perr = err
			break
		}
		dcs = append(dcs, dc)
	}
	if perr != nil && ctx.Err() != nil {
		pc.close()
		return pubResult{unconfirmed: out, err: ctx.Err()}
	}
	for _, dc := range dcs {
		select {
		case <-dc.Done():
		case <-ctx.Done():
			// The channel may still confirm some: drop it, so the
			// next call starts clean.
			pc.close()
			return pubResult{unconfirmed: out, err: ctx.Err()}
		}
	}
	pc.sync()
	closed := pc.ch.IsClosed()
	var res pubResult
	for i := range out {
		switch {
		case i >= len(dcs):
			res.unconfirmed = append(res.unconfirmed, out[i])
		case dcs[i].Acked():
		case closed:
			// A channel that closed nacks what it had pending: that
			// is not the broker's answer, so it is unconfirmed.
			res.unconfirmed = append(res.unconfirmed, out[i])
		default:
			res.nacked++
		}
	}
	pc.mu.Lock()
	res.returned = append([]amqp.Return(nil), pc.returned...)
	pc.mu.Unlock()
	if perr != nil || len(res.unconfirmed) > 0 {
		if perr == nil {
			perr = amqp.ErrClosed
		}
		if cerr := pc.closeReason(); cerr != nil {
			perr = cerr
		}
		res.err = perr
		res.connLoss = t.isConnLoss(pc.conn, perr)
	}
	return res
}

// closeReason is a best-effort reason for a closed channel.
func (pc *pubChan) closeReason() error {
	select {
	case e := <-pc.closed:
		if e != nil {
			return e
		}
	case <-time.After(50 * time.Millisecond):
	}
	if pc.conn.IsClosed() {
		return amqp.ErrClosed
	}
	return nil
}

// declareExchange declares topic's durable exchange.
func (t *Transport) declareExchange(ch *amqp.Channel, topic string) error {
	if err := ch.ExchangeDeclare(topic, t.o.ExchangeType, true, false, false, false, nil); err != nil {
		return topologyError(fmt.Sprintf("declare %s exchange %q", t.o.ExchangeType, topic), err)
	}
	return nil
}

// topologyError wraps a declaration failure, adding ErrTopology when the
// broker refused it for conflicting settings or permissions.
func topologyError(what string, err error) error {
	var ae *amqp.Error
	if errors.As(err, &ae) && (ae.Code == amqp.PreconditionFailed || ae.Code == amqp.AccessRefused || ae.Code == amqp.NotAllowed) {
		return fmt.Errorf("%w: %s: %w", ErrTopology, what, err)
	}
	return fmt.Errorf("amqptransport: %s: %w", what, err)
}
