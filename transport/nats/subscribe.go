package natstransport

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// Subscribe delivers topic's messages to h until ctx ends (it returns
// ctx.Err()) or the transport closes (transport.ErrClosed). With a group
// it consumes the group's durable pull consumer (created when missing,
// its ack wait and max ack pending set to opts); without one it creates
// an ephemeral consumer starting where opts.Start says, deleted when
// Subscribe returns. See the package doc for the delivery semantics.
func (t *Transport) Subscribe(ctx context.Context, topic string, h message.Handler, opts transport.SubscribeOptions) error {
	if h == nil {
		return errors.New("natstransport: Subscribe needs a handler")
	}
	if err := transport.CheckSubscribe(topic, opts, t.caps.Limits); err != nil {
		return err
	}
	t.stateMu.Lock()
	if t.closed {
		t.stateMu.Unlock()
		return transport.ErrClosed
	}
	t.subs.Add(1)
	t.stateMu.Unlock()
	defer t.subs.Done()
	if err := ctx.Err(); err != nil {
		return err
	}
	so := opts.Defaults()
	if t.o.Core {
		return t.subscribeCore(ctx, topic, h, so)
	}
	s := &jsSub{t: t, topic: topic, opts: so, inflight: map[*jsAcker]struct{}{}}
	return s.run(ctx, h)
}

// runContext returns a context that ends with ctx or when the transport
// starts closing.
func (t *Transport) runContext(ctx context.Context) (context.Context, context.CancelFunc) {
	rctx, cancel := context.WithCancel(ctx)
	go func() {
		select {
		case <-t.closing:
			cancel()
		case <-rctx.Done():
		}
	}()
	return rctx, cancel
}

// watchHard cancels d's handlers as soon as ctx ends or the transport
// closes hard (Close, expired Shutdown); call the returned func when the
// subscription is over.
func (t *Transport) watchHard(ctx context.Context, d *transport.Dispatcher) func() {
	done := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			d.Cancel()
		case <-t.hard:
			d.Cancel()
		case <-done:
		}
	}()
	return func() { close(done) }
}

// stopDispatcher settles what the Dispatcher holds: hard (ctx ended or
// Close) cancels handlers first; a graceful stop lets them finish unless
// Close or an expired Shutdown comes first. Then acks are flushed.
func (t *Transport) stopDispatcher(ctx context.Context, d *transport.Dispatcher) {
	hard := ctx.Err() != nil
	select {
	case <-t.hard:
		hard = true
	default:
	}
	if hard {
		d.Cancel()
	}
	sctx, cancel := context.WithCancel(context.Background())
	go func() {
		select {
		case <-t.hard:
			cancel()
		case <-sctx.Done():
		}
	}()
	_ = d.Stop(sctx)
	cancel()
	if t.nc.IsConnected() {
		fctx, fcancel := context.WithTimeout(context.Background(), t.o.APITimeout)
		_ = t.nc.FlushWithContext(fctx)
		fcancel()
	}
}

func (t *Transport) endErr(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return transport.ErrClosed
}

// jsSub is one JetStream subscription.
type jsSub struct {
	t     *Transport
	topic string
	opts  transport.SubscribeOptions
	d     *transport.Dispatcher

	stream jetstream.Stream
	cons   jetstream.Consumer

	mu       sync.Mutex
	inflight map[*jsAcker]struct{} // received, not yet settled: kept leased
	lastSeq  uint64                // highest stream sequence received
	// Without a group: stream sequences nacked (or left) and not received
	// again, still unacked on the server, so that a recreated ephemeral
	// consumer starts no later than them (resumeSeq).
	nacked map[uint64]struct{}
	// resumed: the consumer was just recreated at resumeSeq; its first
	// message shows which nacked sequences the stream no longer holds.
	resumed bool
}

type delivery struct {
	m *message.Message
	a *jsAcker
}

func (s *jsSub) run(ctx context.Context, h message.Handler) error {
	t := s.t
	st, err := t.ensureStream(ctx, s.topic)
	if err == nil {
		s.stream = st
		err = s.createConsumer(ctx, 0)
	}
	if err != nil {
		if ctx.Err() == nil && t.isClosed() {
			return transport.ErrClosed // closed while setting up
		}
		return err
	}
	if s.opts.Group == "" {
		defer s.deleteEphemeral()
	}
	s.d = transport.NewDispatcher(ctx, h, transport.DispatchOptions{
		Topic: s.topic, Group: s.opts.Group, Subscribe: s.opts, Logger: t.log,
		DeadLetter: func(ctx context.Context, topic string, m *message.Message) error {
			return t.publishDeadLetter(ctx, topic, m)
		},
	})
	unwatch := t.watchHard(ctx, s.d)
	defer unwatch()
	rctx, cancel := t.runContext(ctx)
	defer cancel()

	kctx, kcancel := context.WithCancel(context.Background())
	defer kcancel()
	kdone := make(chan struct{})
	go s.keepLeases(kctx, kdone)

	ch := make(chan delivery, s.opts.MaxInFlight)
	fetchErr := make(chan error, 1)
	go func() { fetchErr <- s.fetch(rctx, ch) }()

	for dv := range ch {
		if rctx.Err() != nil {
			s.leave(dv)
			continue
		}
		if err := s.d.Deliver(rctx, dv.m, dv.a); err != nil {
			s.leave(dv)
		}
	}
	ferr := <-fetchErr
	cancel()
	// Handlers still running keep their leases until they settle.
	t.stopDispatcher(ctx, s.d)
	kcancel()
	<-kdone
	if ferr != nil && ctx.Err() == nil && !t.isClosed() {
		return ferr
	}
	return t.endErr(ctx)
}

// leave returns a message that was not handed to the Dispatcher for
// prompt redelivery.
func (s *jsSub) leave(dv delivery) {
	s.untrackNacked(dv.a)
	_ = dv.a.msg.Nak()
}

// createConsumer creates the group's durable consumer, or an ephemeral
// one; resume > 0 starts an ephemeral one at that stream sequence.
func (s *jsSub) createConsumer(ctx context.Context, resume uint64) error {
	t := s.t
	if s.opts.Group != "" {
		c, err := t.ensureConsumer(ctx, s.stream, s.topic, s.opts, true)
		if err != nil {
			return err
		}
		s.cons = c
		return nil
	}
	cfg := jetstream.ConsumerConfig{
		Description:       "courier subscription to topic " + s.topic,
		AckPolicy:         jetstream.AckExplicitPolicy,
		AckWait:           s.opts.AckWait,
		MaxAckPending:     s.opts.MaxInFlight,
		MaxDeliver:        -1,
		FilterSubject:     t.subject(s.topic),
		DeliverPolicy:     jetstream.DeliverNewPolicy,
		InactiveThreshold: t.o.EphemeralInactiveThreshold,
		Metadata:          map[string]string{metaTopic: s.topic},
	}
	switch {
	case resume > 0:
		cfg.DeliverPolicy = jetstream.DeliverByStartSequencePolicy
		cfg.OptStartSeq = resume
	case s.opts.Start == transport.StartOldest:
		cfg.DeliverPolicy = jetstream.DeliverAllPolicy
	}
	c, err := s.stream.CreateConsumer(ctx, cfg)
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		return t.wrap(fmt.Sprintf("natstransport: ephemeral consumer for topic %q", s.topic), err)
	}
	s.cons = c
	if resume > 0 {
		s.mu.Lock()
		s.resumed = true
		s.mu.Unlock()
	}
	if resume == 0 {
		if info := c.CachedInfo(); info != nil {
			s.mu.Lock()
			if info.Delivered.Stream > s.lastSeq {
				s.lastSeq = info.Delivered.Stream
			}
			s.mu.Unlock()
		}
	}
	return nil
}

func (s *jsSub) deleteEphemeral() {
	if s.cons == nil || !s.t.nc.IsConnected() {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	_ = s.stream.DeleteConsumer(ctx, s.cons.CachedInfo().Name)
}

// resumeSeq is where a replacement ephemeral consumer starts: the oldest
// message not acked on the server (held by a handler, or nacked and not
// received again), else the one after the last received.
func (s *jsSub) resumeSeq() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	var lo uint64
	for a := range s.inflight {
		if lo == 0 || a.seq < lo {
			lo = a.seq
		}
	}
	for seq := range s.nacked {
		if lo == 0 || seq < lo {
			lo = seq
		}
	}
	if lo > 0 {
		return lo
	}
	return s.lastSeq + 1
}

// fetch pulls messages into ch until ctx ends or the iterator fails for
// good, then returns what it buffered for redelivery and closes ch.
func (s *jsSub) fetch(ctx context.Context, ch chan<- delivery) error {
	defer close(ch)
	var backoff time.Duration
	for {
		err := s.consume(ctx, ch)
		if ctx.Err() != nil || err == nil {
			return nil
		}
		if errors.Is(err, nats.ErrConnectionClosed) || s.t.nc.IsClosed() {
			if s.t.isClosed() {
				return nil
			}
			return s.t.wrap("natstransport: connection closed", err)
		}
		s.t.log.Warn("natstransport: consumer lost; recreating", "topic", s.topic, "group", s.opts.Group, "error", s.t.redact(err))
		backoff = min(max(2*backoff, 100*time.Millisecond), 2*time.Second)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff):
		}
		cctx, cancel := context.WithTimeout(ctx, s.t.o.APITimeout)
		var resume uint64
		if s.opts.Group == "" {
			resume = s.resumeSeq()
			old := s.cons
			if old != nil {
				_ = s.stream.DeleteConsumer(cctx, old.CachedInfo().Name)
			}
		}
		if cerr := s.createConsumer(cctx, resume); cerr != nil && ctx.Err() == nil {
			s.t.log.Warn("natstransport: recreating consumer failed; retrying", "topic", s.topic, "group", s.opts.Group, "error", s.t.redact(cerr))
		}
		cancel()
	}
}

// consume runs one message iterator; it returns nil when ctx ended and an
// error when the consumer needs recreating or the connection closed.
func (s *jsSub) consume(ctx context.Context, ch chan<- delivery) error {
	it, err := s.cons.Messages(
		jetstream.PullMaxMessages(s.opts.MaxInFlight),
		jetstream.PullExpiry(10*time.Second),
		jetstream.WithMessagesErrOnMissingHeartbeat(true),
	)
	if err != nil {
		return err
	}
	defer s.drainIterator(it)
	// Stop pulling when ctx ends; what the iterator buffered still comes
	// out of Next and is returned for redelivery below.
	stop := context.AfterFunc(ctx, it.Drain)
	defer stop()
	// Next returns at least every nextWait: the iterator decides whether
	// to send the next pull request only inside Next, and a request
	// skipped while the previous one was still being sent would otherwise
	// leave it waiting for a heartbeat timeout (seen with a small
	// MaxInFlight under load).
	p, stopPacer := startPacer(ctx)
	defer stopPacer()
	for {
		msg, err := it.Next(p.opt())
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if errors.Is(err, context.Canceled) || errors.Is(err, nats.ErrTimeout) {
				continue // the pacer's tick
			}
			if errors.Is(err, jetstream.ErrNoHeartbeat) {
				// Missing heartbeats: a healthy consumer resumes by
				// itself; a vanished one (an ephemeral lost in a server
				// restart, a deleted durable) needs recreating.
				ictx, cancel := context.WithTimeout(ctx, s.t.o.APITimeout)
				_, ierr := s.cons.Info(ictx)
				cancel()
				if errors.Is(ierr, jetstream.ErrConsumerNotFound) {
					return ierr
				}
				continue
			}
			return err
		}
		dv, ok := s.receive(msg)
		if !ok {
			continue
		}
		if ctx.Err() != nil {
			s.leave(dv)
			continue
		}
		select {
		case ch <- dv:
		case <-ctx.Done():
			s.leave(dv)
		}
	}
}

// nextWait bounds one wait in the iterator's Next; see consume.
const nextWait = 250 * time.Millisecond

// nextPacer hands out a Next option whose context is replaced (and the
// old one cancelled) every nextWait: Next returns at least that often, and
// no timer is made per call.
type nextPacer struct {
	cur  atomic.Value // pacerOpt
	done chan struct{}
}

type pacerOpt struct{ o jetstream.NextOpt }

func (p *nextPacer) opt() jetstream.NextOpt { return p.cur.Load().(pacerOpt).o }

func startPacer(ctx context.Context) (*nextPacer, func()) {
	p := &nextPacer{done: make(chan struct{})}
	cctx, cancel := context.WithCancel(ctx)
	p.cur.Store(pacerOpt{jetstream.NextContext(cctx)})
	quit := make(chan struct{})
	go func() {
		defer close(p.done)
		tk := time.NewTicker(nextWait)
		defer tk.Stop()
		for {
			select {
			case <-tk.C:
				nctx, ncancel := context.WithCancel(ctx)
				p.cur.Store(pacerOpt{jetstream.NextContext(nctx)})
				cancel()
				cancel = ncancel
			case <-quit:
				cancel()
				return
			}
		}
	}()
	return p, func() { close(quit); <-p.done }
}

// drainIterator stops it and returns the messages it had buffered.
func (s *jsSub) drainIterator(it jetstream.MessagesContext) {
	it.Drain()
	deadline := time.Now().Add(2 * time.Second)
	for time.Now().Before(deadline) {
		msg, err := it.Next(jetstream.NextMaxWait(200 * time.Millisecond))
		if err != nil {
			if errors.Is(err, nats.ErrTimeout) {
				continue
			}
			break
		}
		_ = msg.Nak()
	}
	it.Stop()
}

// receive converts a JetStream message and starts keeping it leased.
func (s *jsSub) receive(msg jetstream.Msg) (delivery, bool) {
	// One allocation for the acker and the courier message it carries.
	a := &jsAcker{s: s, msg: msg}
	m := &a.m
	derr := decodeInto(m, s.topic, msg.Headers(), msg.Data())
	if derr != nil {
		// Not a courier-encoded message we can read: it goes down the
		// dead-letter path with the reason (below), never to the handler
		// and never retried. What it carries is kept as it came.
		*m = message.Message{Topic: s.topic, Payload: msg.Data(), Headers: rawHeaders(msg.Headers())}
	}
	if md, err := msg.Metadata(); err == nil {
		m.Attempt = int(md.NumDelivered)
		m.Time = md.Timestamp
		a.seq = md.Sequence.Stream
		if m.ID == "" {
			// Published without Nats-Msg-Id (not by courier): the
			// stream position is an ID stable across redeliveries.
			m.ID = md.Stream + ":" + strconv.FormatUint(md.Sequence.Stream, 10)
		}
	}
	if derr != nil {
		s.t.log.Error("natstransport: undecodable message dead-lettered", "topic", s.topic, "subject", msg.Subject(), "message_id", m.ID, "dead_letter_topic", s.opts.DeadLetterTopic, "error", derr)
		s.d.Reject(m, a, derr)
		return delivery{}, false
	}
	m.SetNative(a) // a's As: no closure to allocate
	a.touched.Store(time.Now().UnixNano())
	s.mu.Lock()
	s.inflight[a] = struct{}{}
	if a.seq > s.lastSeq {
		s.lastSeq = a.seq
	}
	if s.nacked != nil {
		delete(s.nacked, a.seq)
		if s.resumed {
			// A recreated consumer delivers from resumeSeq in stream
			// order: nacked sequences before its first message are gone
			// from the stream (limits, deletion) and never come back.
			for seq := range s.nacked {
				if seq < a.seq {
					delete(s.nacked, seq)
				}
			}
		}
	}
	s.resumed = false
	s.mu.Unlock()
	return delivery{m: m, a: a}, true
}

// untrackNacked is untrack for a message about to be nacked: an ephemeral
// consumer remembers its sequence until it is received again (see
// resumeSeq).
func (s *jsSub) untrackNacked(a *jsAcker) {
	s.mu.Lock()
	delete(s.inflight, a)
	if s.opts.Group == "" && a.seq != 0 {
		if s.nacked == nil {
			s.nacked = make(map[uint64]struct{})
		}
		s.nacked[a.seq] = struct{}{}
	}
	s.mu.Unlock()
}

func (s *jsSub) untrack(a *jsAcker) {
	s.mu.Lock()
	delete(s.inflight, a)
	s.mu.Unlock()
}

// keepLeases sends InProgress for every message held longer than a third
// of the ack wait since it was received or last extended, so a handler
// that runs longer than AckWait keeps its message.
func (s *jsSub) keepLeases(ctx context.Context, done chan<- struct{}) {
	defer close(done)
	every := s.opts.AckWait / 4
	if every < 20*time.Millisecond {
		every = 20 * time.Millisecond
	}
	after := (s.opts.AckWait / 3).Nanoseconds()
	tk := time.NewTicker(every)
	defer tk.Stop()
	var due []*jsAcker
	for {
		select {
		case <-ctx.Done():
			return
		case <-tk.C:
		}
		now := time.Now().UnixNano()
		due = due[:0]
		s.mu.Lock()
		for a := range s.inflight {
			if now-a.touched.Load() >= after {
				due = append(due, a)
			}
		}
		s.mu.Unlock()
		for _, a := range due {
			if a.settled.Load() {
				continue
			}
			if err := a.msg.InProgress(); err != nil {
				s.t.log.Debug("natstransport: in-progress failed", "topic", s.topic, "error", s.t.redact(err))
				continue
			}
			a.touched.Store(now)
		}
	}
}

// jsAcker settles one JetStream message.
type jsAcker struct {
	m       message.Message
	s       *jsSub
	msg     jetstream.Msg
	seq     uint64
	touched atomic.Int64
	settled atomic.Bool
}

var _ transport.Terminator = (*jsAcker)(nil)

// As is Message.As for the message a carries: *jetstream.Msg.
func (a *jsAcker) As(target any) bool {
	if p, ok := target.(*jetstream.Msg); ok {
		*p = a.msg
		return true
	}
	return false
}

func (a *jsAcker) done() {
	a.settled.Store(true)
	a.s.untrack(a)
}

func (a *jsAcker) Ack(ctx context.Context) error {
	a.done()
	if a.s.t.o.AckSync {
		return a.msg.DoubleAck(ctx)
	}
	return a.msg.Ack()
}

func (a *jsAcker) Nack(_ context.Context, delay time.Duration) error {
	a.settled.Store(true)
	a.s.untrackNacked(a)
	if delay > 0 {
		return a.msg.NakWithDelay(delay)
	}
	return a.msg.Nak()
}

func (a *jsAcker) Term(_ context.Context, reason string) error {
	a.done()
	if len(reason) > 512 {
		reason = reason[:512]
	}
	return a.msg.TermWithReason(reason)
}

// publishDeadLetter is the Dispatcher's dead-letter publish: it must
// succeed before the original is acked. A copy that the dead-letter
// headers pushed over the size limit is cut to fit (transport.FitDeadLetter): it
// would otherwise fail, and be nacked and retried, forever.
func (t *Transport) publishDeadLetter(ctx context.Context, topic string, m *message.Message) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 2*t.o.APITimeout)
		defer cancel()
	}
	if fm, cut := transport.FitDeadLetter(m, func(m *message.Message) bool { return t.deadLetterFits(topic, m) }); cut {
		t.log.Warn("natstransport: dead-letter copy over the size limit; its reason (or optional dead-letter headers) cut to fit", "topic", topic, "message_id", m.ID)
		m = fm
	}
	return t.publish(ctx, topic, []*message.Message{m})
}

// rawHeaders is the headers of an undecodable message, first values as
// they came (nothing unquoted), for its dead-letter copy; the adapter's
// own (Nats-*, courier's encoding markers) are left out, as a publish
// would refuse them.
func rawHeaders(h nats.Header) message.Header {
	var out message.Header
	for k, vs := range h {
		if len(vs) == 0 || reservedHeader(k) {
			continue
		}
		if out == nil {
			out = make(message.Header, len(h))
		}
		out[k] = vs[0]
	}
	return out
}
