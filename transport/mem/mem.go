package memtransport

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// Options configure a Transport. The zero value is usable.
type Options struct {
	// Broker is the state to connect to; Transports sharing one see the
	// same topics. Default: a new private Broker.
	Broker *Broker
	// MaxBacklog is the most messages one group holds unacked (ready,
	// delayed and in flight). When a group of the topic is full, Publish
	// blocks until there is room for the whole call or its ctx ends; a
	// single call with more messages than this fails with a LimitError.
	// URL: max_backlog. Default: 10000.
	MaxBacklog int
	// MaxPayload is the largest payload accepted. URL: max_payload.
	// Default: 16 MiB.
	MaxPayload int
	// MaxHeaders is the most headers per message. URL: max_headers.
	// Default: 256.
	MaxHeaders int
	// MaxHeaderBytes bounds one header's name plus value.
	// URL: max_header_bytes. Default: 64 KiB.
	MaxHeaderBytes int
	// Logger receives dropped and dead-lettered messages; nil discards.
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.Broker == nil {
		o.Broker = NewBroker()
	}
	if o.MaxBacklog <= 0 {
		o.MaxBacklog = 10000
	}
	if o.MaxPayload <= 0 {
		o.MaxPayload = 16 << 20
	}
	if o.MaxHeaders <= 0 {
		o.MaxHeaders = 256
	}
	if o.MaxHeaderBytes <= 0 {
		o.MaxHeaderBytes = 64 << 10
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// Transport is a connection to a Broker. It implements transport.Conn.
type Transport struct {
	o    Options
	b    *Broker
	caps transport.Capabilities

	mu       sync.Mutex
	closed   bool
	subs     map[*subscription]struct{}
	done     chan struct{} // closed by Close/Shutdown: stop fetching
	stopping atomic.Bool

	dlqWarned sync.Map // dead-letter topics warned about having no group
}

var _ transport.Conn = (*Transport)(nil)

// New returns a Transport. ctx is unused (nothing to dial) but kept for
// symmetry with the network adapters.
func New(ctx context.Context, opts Options) (*Transport, error) {
	o := opts.withDefaults()
	t := &Transport{o: o, b: o.Broker, subs: make(map[*subscription]struct{}), done: make(chan struct{})}
	t.caps = transport.Capabilities{
		Persistent:     false,
		Redelivery:     true,
		DelayedNack:    true,
		AttemptCount:   true,
		OrderedByKey:   true,
		DeadLetter:     true,
		Replay:         false,
		BrokerTime:     true,
		LeaseExtension: true,
		Limits: transport.Limits{
			MaxPayload:     o.MaxPayload,
			MaxHeaders:     o.MaxHeaders,
			MaxHeaderBytes: o.MaxHeaderBytes,
			MaxNameLen:     transport.DefaultMaxNameLen,
		},
	}
	return t, nil
}

var named struct {
	sync.Mutex
	m map[string]*Broker
}

// Named returns the process-wide Broker called name, creating it on first
// use. mem://NAME URLs connect to it. Named brokers live for the life of
// the process: that is what lets services in one process that open the
// same URL separately talk to each other.
func Named(name string) *Broker {
	named.Lock()
	defer named.Unlock()
	if named.m == nil {
		named.m = make(map[string]*Broker)
	}
	b := named.m[name]
	if b == nil {
		b = NewBroker()
		named.m[name] = b
	}
	return b
}

func init() { transport.Register("mem", open) }

func open(ctx context.Context, u *url.URL) (transport.Conn, error) {
	var o Options
	if u.Opaque != "" {
		return nil, errors.New("memtransport: want mem:// or mem://NAME")
	}
	if u.User != nil || u.Port() != "" || (u.Path != "" && u.Path != "/") {
		return nil, errors.New("memtransport: want mem:// or mem://NAME (no user, port or path)")
	}
	q := transport.NewQuery(u)
	q.Int("max_backlog", &o.MaxBacklog)
	q.Int("max_payload", &o.MaxPayload)
	q.Int("max_headers", &o.MaxHeaders)
	q.Int("max_header_bytes", &o.MaxHeaderBytes)
	if err := q.Err(); err != nil {
		return nil, fmt.Errorf("memtransport: %w", err)
	}
	if u.Host != "" {
		o.Broker = Named(u.Host)
	}
	return New(ctx, o)
}

// Capabilities implements transport.Conn.
func (t *Transport) Capabilities() transport.Capabilities { return t.caps }

// As sets *target to the *Broker behind t.
func (t *Transport) As(target any) bool {
	if p, ok := target.(**Broker); ok {
		*p = t.b
		return true
	}
	return false
}

func (t *Transport) isClosed() bool {
	select {
	case <-t.done:
		return true
	default:
		return false
	}
}

// Publish stores msgs in every group of topic, all or none, and returns
// when they are stored. Messages published to a topic that has no group and
// no running subscription are discarded, as a fanout exchange without
// queues does.
func (t *Transport) Publish(ctx context.Context, topicName string, msgs ...*message.Message) error {
	if t.isClosed() {
		return transport.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := transport.PreparePublish(topicName, msgs, t.caps.Limits); err != nil {
		return err
	}
	if len(msgs) == 0 {
		return nil
	}
	if len(msgs) > t.o.MaxBacklog {
		return &transport.LimitError{Index: t.o.MaxBacklog, MessageID: msgs[t.o.MaxBacklog].ID, What: "batch", Size: len(msgs), Limit: t.o.MaxBacklog}
	}
	now := time.Now()
	recs := make([]record, len(msgs))
	for i, m := range msgs {
		r := &recs[i]
		r.id, r.key, r.time = m.ID, m.Key, now
		if len(m.Payload) > 0 {
			r.payload = append(make([]byte, 0, len(m.Payload)), m.Payload...)
		}
		if len(m.Headers) > 0 {
			r.headers = m.Headers.Clone()
		}
	}
	tp := t.b.topic(topicName)
	tp.mu.Lock()
	for {
		full := false
		for _, g := range tp.all {
			full = full || g.backlog+len(recs) > t.o.MaxBacklog
		}
		if !full {
			break
		}
		tp.waiters++
		space := tp.space
		tp.mu.Unlock()
		var err error
		select {
		case <-space:
		case <-ctx.Done():
			err = ctx.Err()
		case <-t.done:
			err = transport.ErrClosed
		}
		tp.mu.Lock()
		tp.waiters--
		if err != nil {
			tp.mu.Unlock()
			return err
		}
	}
	add := func(g *group) {
		for i := range recs {
			g.ready.push(entry{rec: &recs[i]})
		}
		g.backlog += len(recs)
		g.signal()
	}
	for _, g := range tp.all {
		add(g)
	}
	tp.mu.Unlock()
	return nil
}

// Declare creates topic's group so it retains messages from now on.
func (t *Transport) Declare(ctx context.Context, topicName string, opts transport.SubscribeOptions) error {
	if t.isClosed() {
		return transport.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if opts.Group == "" {
		return fmt.Errorf("memtransport: Declare needs a group: %w", transport.ErrInvalidName)
	}
	if err := t.checkSubscribe(topicName, opts); err != nil {
		return err
	}
	tp := t.b.topic(topicName)
	tp.mu.Lock()
	if tp.groups[opts.Group] == nil {
		tp.groups[opts.Group] = newGroup(opts.Group, false)
		tp.rebuild()
	}
	tp.mu.Unlock()
	return nil
}

func (t *Transport) checkSubscribe(topicName string, opts transport.SubscribeOptions) error {
	if err := transport.CheckSubscribe(topicName, opts, t.caps.Limits); err != nil {
		return err
	}
	if opts.Start == transport.StartOldest {
		return fmt.Errorf("memtransport: StartOldest needs history, which mem does not keep: %w", transport.ErrUnsupported)
	}
	return nil
}

// Close stops every subscription at once: running handlers' context is
// cancelled and what they did not ack goes back to its group for
// redelivery. Publish and Subscribe then return transport.ErrClosed. The
// Broker keeps its messages. Close is idempotent.
func (t *Transport) Close() error {
	t.stop()
	t.mu.Lock()
	subs := make([]*subscription, 0, len(t.subs))
	for s := range t.subs {
		subs = append(subs, s)
	}
	t.mu.Unlock()
	for _, s := range subs {
		s.d.Cancel()
	}
	for _, s := range subs {
		<-s.exited
	}
	return nil
}

// Shutdown stops fetching, lets running handlers finish and settle, then
// closes. When ctx ends first, it cancels them (their messages are
// redelivered) and returns ctx.Err().
func (t *Transport) Shutdown(ctx context.Context) error {
	t.stop()
	t.mu.Lock()
	subs := make([]*subscription, 0, len(t.subs))
	for s := range t.subs {
		subs = append(subs, s)
	}
	t.mu.Unlock()
	var err error
	for _, s := range subs {
		if e := s.d.Stop(ctx); e != nil && err == nil {
			err = e
		}
	}
	for _, s := range subs {
		<-s.exited
	}
	return err
}

func (t *Transport) stop() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.closed {
		t.closed = true
		close(t.done)
	}
}

type subscription struct {
	t      *Transport
	tp     *topic
	g      *group
	d      *transport.Dispatcher
	opts   transport.SubscribeOptions
	out    atomic.Int64 // taken from the group, not yet settled
	exited chan struct{}
}

// delivery is one delivered entry; it is the message handed to the handler
// and its Acker, in one allocation.
type delivery struct {
	msg message.Message
	e   entry
	s   *subscription
}

func (d *delivery) Ack(context.Context) error { d.s.settle(d, false, 0); return nil }
func (d *delivery) Nack(_ context.Context, delay time.Duration) error {
	d.s.settle(d, true, delay)
	return nil
}

// Subscribe implements transport.Subscriber.
func (t *Transport) Subscribe(ctx context.Context, topicName string, h message.Handler, opts transport.SubscribeOptions) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := t.checkSubscribe(topicName, opts); err != nil {
		return err
	}
	if h == nil {
		return errors.New("memtransport: nil handler")
	}
	opts = opts.Defaults()
	tp := t.b.topic(topicName)
	s := &subscription{t: t, tp: tp, opts: opts, exited: make(chan struct{})}
	s.d = transport.NewDispatcher(ctx, h, transport.DispatchOptions{
		Topic: topicName, Group: opts.Group, Subscribe: opts, Logger: t.o.Logger,
		DeadLetter: func(ctx context.Context, dlt string, m *message.Message) error {
			return t.publishDLQ(ctx, dlt, m)
		},
	})

	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		s.d.Stop(context.Background())
		return transport.ErrClosed
	}
	t.subs[s] = struct{}{}
	t.mu.Unlock()

	tp.mu.Lock()
	if opts.Group == "" {
		s.g = newGroup("", true)
		tp.subs = append(tp.subs, s.g)
		tp.rebuild()
	} else {
		s.g = tp.groups[opts.Group]
		if s.g == nil {
			s.g = newGroup(opts.Group, false)
			tp.groups[opts.Group] = s.g
			tp.rebuild()
		}
	}
	if opts.OrderedByKey {
		s.g.ordered = true
	}
	tp.mu.Unlock()

	err := s.loop(ctx)

	t.mu.Lock()
	delete(t.subs, s)
	t.mu.Unlock()
	if s.g.private {
		tp.mu.Lock()
		for i, g := range tp.subs {
			if g == s.g {
				tp.subs = append(tp.subs[:i], tp.subs[i+1:]...)
				break
			}
		}
		tp.rebuild()
		tp.freed(nil, 0)
		tp.mu.Unlock()
	}
	close(s.exited)
	return err
}

// publishDLQ publishes a dead-letter copy even after Close, so shutdown
// never loses a message that was already failing.
func (t *Transport) publishDLQ(ctx context.Context, dlt string, m *message.Message) error {
	if err := transport.PreparePublish(dlt, []*message.Message{m}, t.caps.Limits); err != nil {
		return err
	}
	tp := t.b.topic(dlt)
	r := &record{id: m.ID, key: m.Key, headers: m.Headers.Clone(), payload: append([]byte(nil), m.Payload...), time: time.Now()}
	tp.mu.Lock()
	defer tp.mu.Unlock()
	if len(tp.all) == 0 {
		// Like any publish to a topic without groups it is discarded;
		// say so once per topic, since here it is a failed message lost.
		if _, warned := t.dlqWarned.LoadOrStore(dlt, struct{}{}); !warned {
			t.o.Logger.Warn("memtransport: dead-letter topic has no group or subscription; dead letters to it are discarded (Declare a group on it)", "dead_letter_topic", dlt)
		}
		return nil
	}
	for _, g := range tp.all {
		g.ready.push(entry{rec: r})
		g.backlog++
		g.signal()
	}
	return nil
}

const maxBatch = 256

// loop fetches deliverable entries and hands them to the dispatcher until
// ctx ends or the transport stops.
func (s *subscription) loop(ctx context.Context) error {
	g, tp := s.g, s.tp
	limit := int64(s.opts.MaxInFlight)
	batch := make([]entry, 0, min(maxBatch, s.opts.MaxInFlight))
	var timer *time.Timer
	defer func() {
		if timer != nil {
			timer.Stop()
		}
	}()
	for {
		// Stop conditions.
		select {
		case <-ctx.Done():
			s.d.Cancel()
			s.d.Stop(context.Background())
			return ctx.Err()
		case <-s.t.done:
			s.d.Stop(context.Background()) // Close cancelled it; Shutdown drains
			return transport.ErrClosed
		default:
		}

		room := limit - s.out.Load()
		var next int64
		batch = batch[:0]
		if room > 0 {
			tp.mu.Lock()
			next = g.promote(time.Now().UnixNano())
			want := int(min(room, maxBatch))
			batch = s.take(batch, want)
			// Hand the rest to a competing subscriber only when this one
			// is full: when it took less, what is left is not deliverable
			// (its keys are busy), and signalling would spin.
			more := len(batch) == want && g.ready.len() > 0
			tp.mu.Unlock()
			if more {
				g.signal() // let a competing subscriber take the rest
			}
		}

		if len(batch) == 0 {
			var tc <-chan time.Time
			if next > 0 {
				d := time.Duration(next - time.Now().UnixNano())
				if timer == nil {
					timer = time.NewTimer(d)
				} else {
					timer.Reset(d)
				}
				tc = timer.C
			}
			select {
			case <-g.wake:
			case <-tc:
			case <-ctx.Done():
			case <-s.t.done:
			}
			continue
		}

		for i := range batch {
			dv := s.newDelivery(batch[i])
			if err := s.d.Deliver(ctx, &dv.msg, dv); err != nil {
				// Not taken: return this and the rest, in order.
				s.requeue(batch[i:])
				break
			}
		}
	}
}

// take moves up to n deliverable entries from the ready queue into batch,
// skipping entries whose key is busy when the group is ordered. Called with
// tp.mu held.
func (s *subscription) take(batch []entry, n int) []entry {
	g := s.g
	if !g.ordered {
		for len(batch) < n && g.ready.len() > 0 {
			batch = append(batch, g.ready.remove(0))
		}
	} else {
		// Take from the front; a message whose key is busy is parked
		// (see group.parked), so that however many messages one busy key
		// has, the other keys' messages behind them are reached.
		for len(batch) < n && g.ready.len() > 0 {
			e := g.ready.remove(0)
			k := e.rec.key
			if k != "" && g.busy[k] > 0 && !e.held {
				g.park(e)
				continue
			}
			if k != "" && !e.held {
				g.busy[k]++
			}
			e.held = false
			batch = append(batch, e)
		}
	}
	s.out.Add(int64(len(batch)))
	return batch
}

func (s *subscription) newDelivery(e entry) *delivery {
	e.attempt++
	r := e.rec
	dv := &delivery{e: e, s: s}
	dv.msg = message.Message{ID: r.id, Key: r.key, Payload: r.payload, Topic: s.tp.name, Attempt: e.attempt, Time: r.time}
	if len(r.headers) > 0 {
		dv.msg.Headers = r.headers.Clone()
	}
	return dv
}

// requeue returns entries that were taken but never delivered to the front
// of the group, undoing their attempt count and key marks.
func (s *subscription) requeue(es []entry) {
	s.tp.mu.Lock()
	for i := len(es) - 1; i >= 0; i-- {
		e := es[i]
		if s.g.ordered && e.rec.key != "" {
			s.g.release(e.rec.key)
		}
		s.g.ready.pushFront(e)
	}
	s.tp.mu.Unlock()
	s.out.Add(-int64(len(es)))
	s.g.signal()
}

// settle acks or nacks a delivered entry.
func (s *subscription) settle(dv *delivery, nack bool, delay time.Duration) {
	g, tp := s.g, s.tp
	e := dv.e
	keyed := g.ordered && e.rec.key != ""
	tp.mu.Lock()
	switch {
	case !nack:
		g.backlog--
		if keyed {
			g.release(e.rec.key)
		}
		tp.freed(g, s.t.o.MaxBacklog)
	case delay > 0:
		e.due = time.Now().Add(delay).UnixNano()
		e.held = keyed // keep the key busy so later messages wait
		heap.Push(&g.delayed, e)
	default:
		if keyed {
			e.held = true // first in line for its key, which stays busy
		}
		g.ready.pushFront(e)
	}
	tp.mu.Unlock()
	// Wake the fetch loop only when it may be waiting on this settle: it
	// was at its in-flight bound, the message came back, or a key freed.
	if s.out.Add(-1) == int64(s.opts.MaxInFlight)-1 || nack || keyed {
		g.signal()
	}
}

var _ transport.LagReporter = (*Transport)(nil)

// Lag reports a durable group's backlog: Pending counts ready and delayed
// messages, InFlight those handed to handlers and not settled. After Close
// it returns transport.ErrClosed, as every adapter's Lag does.
func (t *Transport) Lag(ctx context.Context, topicName, group string) (transport.Lag, error) {
	if t.isClosed() {
		return transport.Lag{}, transport.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return transport.Lag{}, err
	}
	t.b.mu.RLock()
	tp := t.b.topics[topicName]
	t.b.mu.RUnlock()
	if tp == nil {
		return transport.Lag{}, fmt.Errorf("memtransport: no topic %q", topicName)
	}
	tp.mu.Lock()
	defer tp.mu.Unlock()
	g := tp.groups[group]
	if g == nil {
		return transport.Lag{}, fmt.Errorf("memtransport: topic %q has no group %q", topicName, group)
	}
	pending := int64(g.ready.len() + len(g.delayed) + g.nparked)
	return transport.Lag{Topic: topicName, Group: group, Pending: pending, InFlight: int64(g.backlog) - pending}, nil
}

var _ transport.Pinger = (*Transport)(nil)

// Ping reports transport.ErrClosed after Close or Shutdown, else nil: the
// in-process broker is always reachable.
func (t *Transport) Ping(ctx context.Context) error {
	if t.isClosed() {
		return transport.ErrClosed
	}
	return ctx.Err()
}
