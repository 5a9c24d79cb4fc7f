package kafkatransport

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/IBM/sarama"
	metrics "github.com/rcrowley/go-metrics"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// Subscribe delivers topic's messages to h until ctx ends or the
// transport closes. With opts.Group it joins that Kafka consumer group;
// without, it reads every partition from the end (StartNew) or the oldest
// retained record (StartOldest) and commits nothing. See the package doc
// for the delivery rules: offsets are committed only up to the last
// contiguously acknowledged message of each partition.
func (t *Transport) Subscribe(ctx context.Context, topic string, h message.Handler, opts transport.SubscribeOptions) error {
	if h == nil {
		return errors.New("kafkatransport: Subscribe needs a handler")
	}
	if err := transport.CheckSubscribe(topic, opts, t.limits); err != nil {
		return err
	}
	if t.isClosed() {
		return transport.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	t.log.Debug("kafkatransport: subscribing", "topic", topic, "group", opts.Group)
	if err := t.ensureTopic(ctx, topic); err != nil {
		return err
	}
	so := opts.Defaults()
	s := &subscription{
		t: t, topic: topic, group: so.Group, opts: so,
		lim:      newLimiter(so.MaxInFlight),
		stopping: make(chan struct{}),
		finished: make(chan struct{}),
		runDone:  make(chan struct{}),
		feedDone: make(chan struct{}),
		parts:    map[*partState]struct{}{},
	}
	s.q.signal = make(chan struct{}, 1)
	if so.Concurrency <= 1 {
		s.serial = new(sync.Mutex)
	}
	dopts := so
	dopts.OrderedByKey = false // per-key order is kept here, across nacks too
	s.disp = transport.NewDispatcher(ctx, h, transport.DispatchOptions{
		Topic: topic, Group: so.Group, Subscribe: dopts, Logger: t.log,
		DeadLetter: func(ctx context.Context, dlq string, m *message.Message) error {
			return t.Publish(ctx, dlq, m)
		},
	})
	s.cctx, s.ccancel = context.WithCancel(context.WithoutCancel(ctx))

	cfg := *t.cfg
	cfg.Consumer.Group.Rebalance.GroupStrategies, _ = t.o.balance() // validated by New
	cfg.MetricRegistry = metrics.NewRegistry()                      // its own: closing it unregisters only its meters
	cfg.Producer.Idempotent = false
	cfg.Net.MaxOpenRequests = 5
	// Bound what the client prefetches: per partition, one fetch of
	// FetchBytes and MaxInFlight decoded records.
	cfg.ChannelBufferSize = so.MaxInFlight
	fetch := t.o.FetchBytes
	if fetch <= 0 {
		fetch = min(max(so.MaxInFlight*4<<10, 32<<10), 1<<20)
	}
	cfg.Consumer.Fetch.Default = int32(fetch)
	if so.Start == transport.StartOldest {
		cfg.Consumer.Offsets.Initial = sarama.OffsetOldest
	} else {
		cfg.Consumer.Offsets.Initial = sarama.OffsetNewest
	}
	var run func()
	if so.Group != "" {
		if err := t.pinGroup(ctx, topic, so); err != nil {
			if ctx.Err() != nil {
				s.abort()
				return ctx.Err()
			}
			t.log.Debug("kafkatransport: could not pin the group's start offsets", "topic", topic, "group", so.Group, "error", t.wrap("pin", err))
		}
		cg, err := sarama.NewConsumerGroup(t.o.Brokers, so.Group, &cfg)
		if err != nil {
			s.abort()
			return t.wrap(fmt.Sprintf("consumer group %q", so.Group), err)
		}
		s.cg = cg
		run = s.runGroup
	} else {
		c, err := sarama.NewConsumer(t.o.Brokers, &cfg)
		if err != nil {
			s.abort()
			return t.wrap("consumer", err)
		}
		s.consumer = c
		starts, err := s.startOffsets(c, so.Start)
		if err != nil {
			s.abort()
			return err
		}
		run = func() { s.runPlain(starts) }
	}

	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		s.abort()
		return transport.ErrClosed
	}
	t.subs[s] = struct{}{}
	t.mu.Unlock()

	go func() { defer close(s.feedDone); s.feed() }()
	go func() { defer close(s.runDone); run() }()

	select {
	case <-ctx.Done():
		_ = s.stop(ctx)
		return ctx.Err()
	case <-s.stopping:
		<-s.finished
		return transport.ErrClosed
	}
}

// subscription is one Subscribe call.
type subscription struct {
	t     *Transport
	topic string
	group string
	opts  transport.SubscribeOptions
	disp  *transport.Dispatcher

	cg       sarama.ConsumerGroup
	consumer sarama.Consumer

	cctx     context.Context // fetching; cancelled to stop
	ccancel  context.CancelFunc
	runDone  chan struct{} // closed when fetching ended
	feedDone chan struct{} // closed when the feeder ended

	lim    *limiter    // MaxInFlight: taken at fetch, returned at ack or drop
	serial *sync.Mutex // Concurrency 1: held while delivering (handlers run inline)
	q      queue

	mu    sync.Mutex
	parts map[*partState]struct{}

	stopOnce sync.Once
	stopping chan struct{}
	finished chan struct{}
	stopErr  error
}

// abort releases what a Subscribe that did not start made.
func (s *subscription) abort() {
	s.ccancel()
	s.q.close()
	_ = s.disp.Stop(context.Background())
	if s.cg != nil {
		_ = s.cg.Close()
	}
	if s.consumer != nil {
		_ = s.consumer.Close()
	}
}

// stop ends the subscription: stop fetching, let in-flight handlers finish
// (cancelling them when ctx ends first), commit, leave the group. It is
// idempotent; every caller waits for the end.
func (s *subscription) stop(ctx context.Context) error {
	s.stopOnce.Do(func() {
		close(s.stopping)
		go func() {
			defer close(s.finished)
			s.stopErr = s.drain(ctx)
			s.t.mu.Lock()
			delete(s.t.subs, s)
			s.t.mu.Unlock()
		}()
	})
	select {
	case <-s.finished:
	case <-ctx.Done():
		// Whoever started the stop has a ctx of its own; this caller's
		// ended: hard-stop and wait for the landing of settles.
		s.disp.Cancel()
		<-s.finished
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.stopErr
}

func (s *subscription) drain(ctx context.Context) error {
	began := time.Now()
	defer func() {
		s.t.log.Debug("kafkatransport: subscription stopped", "topic", s.topic, "group", s.group, "took", time.Since(began))
	}()
	if ctx.Err() != nil {
		s.disp.Cancel()
	}
	// Stop fetching: every partition stops taking work, waits for its
	// in-flight messages to settle and marks its offset; the group
	// session commits in Cleanup.
	s.ccancel()
	select {
	case <-s.runDone:
	case <-ctx.Done():
		s.disp.Cancel()
		<-s.runDone
	}
	// Every partition is revoked: what is left in the queue is dropped.
	s.q.close()
	<-s.feedDone
	err := s.disp.Stop(ctx)
	if s.cg != nil {
		if e := s.cg.Close(); e != nil {
			s.t.log.Debug("kafkatransport: closing consumer group", "group", s.group, "error", s.t.wrap("close", e))
		}
	}
	if s.consumer != nil {
		_ = s.consumer.Close()
	}
	return err
}

// runGroup consumes as a member of the group until the subscription stops,
// joining again after rebalances and broker errors.
func (s *subscription) runGroup() {
	go func() {
		for err := range s.cg.Errors() {
			s.t.log.Warn("kafkatransport: consumer group error", "topic", s.topic, "group", s.group, "error", s.t.wrap("consume", err))
		}
	}()
	h := &groupHandler{s: s}
	for s.cctx.Err() == nil {
		err := s.cg.Consume(s.cctx, []string{s.topic}, h)
		if s.cctx.Err() != nil {
			break
		}
		if errors.Is(err, sarama.ErrClosedConsumerGroup) {
			break
		}
		if err != nil {
			s.t.log.Warn("kafkatransport: consumer group session failed; joining again", "topic", s.topic, "group", s.group, "error", s.t.wrap("consume", err))
			select {
			case <-s.cctx.Done():
			case <-time.After(s.t.o.ReconnectBackoff):
			}
		}
	}
}

// startOffsets resolves where a group-less subscription starts, at the
// moment Subscribe is called.
func (s *subscription) startOffsets(c sarama.Consumer, start transport.StartPosition) (map[int32]int64, error) {
	parts, err := c.Partitions(s.topic)
	if err != nil {
		return nil, s.t.wrap(fmt.Sprintf("partitions of %q", s.topic), err)
	}
	which := sarama.OffsetNewest
	if start == transport.StartOldest {
		which = sarama.OffsetOldest
	}
	out := make(map[int32]int64, len(parts))
	for _, p := range parts {
		off, err := s.t.client.GetOffset(s.topic, p, which)
		if err != nil {
			return nil, s.t.wrap(fmt.Sprintf("offset of %s/%d", s.topic, p), err)
		}
		out[p] = off
	}
	return out, nil
}

// runPlain reads every partition without a group.
func (s *subscription) runPlain(starts map[int32]int64) {
	var wg sync.WaitGroup
	for p, off := range starts {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.runPartition(p, off)
		}()
	}
	wg.Wait()
}

func (s *subscription) runPartition(p int32, off int64) {
	s.t.log.Debug("kafkatransport: reading partition", "topic", s.topic, "partition", p, "offset", off)
	for s.cctx.Err() == nil {
		pc, err := s.consumer.ConsumePartition(s.topic, p, off)
		if err != nil {
			s.t.log.Warn("kafkatransport: cannot consume partition; retrying", "topic", s.topic, "partition", p, "error", s.t.wrap("consume", err))
			select {
			case <-s.cctx.Done():
				return
			case <-time.After(s.t.o.ReconnectBackoff):
				continue
			}
		}
		errsDone := make(chan struct{})
		go func() {
			defer close(errsDone)
			for err := range pc.Errors() {
				s.t.log.Warn("kafkatransport: partition consumer error", "topic", s.topic, "partition", p, "error", s.t.wrap("consume", err))
			}
		}()
		pt := s.newPart(p, s.cctx, nil, nil)
		var closeOnce sync.Once
		closePC := func() { closeOnce.Do(pc.AsyncClose) }
		stopWatch := context.AfterFunc(s.cctx, closePC)
		s.consumeLoop(pt, pc.Messages())
		stopWatch()
		closePC()
		for range pc.Messages() {
		}
		<-errsDone
		// Not committed anywhere: a restart of this partition consumer
		// (after an error closed it) resumes after what this process
		// settled, and what was dropped is read again.
		next := pt.resumeOffset()
		if next >= 0 {
			off = next
		}
	}
}

type groupHandler struct{ s *subscription }

func (g *groupHandler) Setup(sess sarama.ConsumerGroupSession) error {
	g.s.t.log.Debug("kafkatransport: group session started", "topic", g.s.topic, "group", g.s.group,
		"generation", sess.GenerationID(), "member", sess.MemberID(), "claims", sess.Claims()[g.s.topic])
	return nil
}

// Cleanup runs after every claim of the session returned, that is after
// their in-flight messages settled: commit what they acknowledged before
// the partitions go to another member.
func (g *groupHandler) Cleanup(sess sarama.ConsumerGroupSession) error {
	sess.Commit()
	return nil
}

func (g *groupHandler) ConsumeClaim(sess sarama.ConsumerGroupSession, claim sarama.ConsumerGroupClaim) error {
	topic, p := claim.Topic(), claim.Partition()
	pt := g.s.newPart(p, sess.Context(), func(off int64) { sess.MarkOffset(topic, p, off, "") }, sess)
	g.s.consumeLoop(pt, claim.Messages())
	return nil
}

// consumeLoop takes messages of one partition (claim) into the
// subscription until msgs closes or the partition's context ends, then
// revokes the partition: it stops taking work, drops what did not start,
// waits for the in-flight messages to settle and marks the committable
// offset.
func (s *subscription) consumeLoop(pt *partState, msgs <-chan *sarama.ConsumerMessage) {
	defer s.releasePart(pt)
	defer pt.revoke()
	stopWake := context.AfterFunc(pt.ctx, s.lim.wake)
	defer stopWake()
	buf := make([]*sarama.ConsumerMessage, 0, 128)
	ds := make([]*delivery, 0, 128)
	var arena []delivery
	for {
		batch := buf[:0] // (batch is resliced below; buf keeps the capacity)
		var cm *sarama.ConsumerMessage
		var ok bool
		select {
		case cm, ok = <-msgs: // already fetched: no need to watch ctx (acquire does)
		default:
			select {
			case cm, ok = <-msgs:
			case <-pt.ctx.Done():
				return
			}
		}
		if !ok {
			return
		}
		batch = append(batch, cm)
		// Take what else is already fetched, so that the hand-off to the
		// feeder costs one lock and one wake-up per batch.
		closed := false
	more:
		for len(batch) < cap(batch) {
			select {
			case cm, ok := <-msgs:
				if !ok {
					closed = true
					break more
				}
				batch = append(batch, cm)
			default:
				break more
			}
		}
		for len(batch) > 0 {
			n := s.lim.acquire(pt.ctx, len(batch))
			if n == 0 {
				return // revoked while waiting: the rest is fetched again by the next owner
			}
			ds = ds[:0]
			for _, cm := range batch[:n] {
				// Deliveries (and the Messages inside them) come from
				// chunks: one allocation per deliveryChunk records.
				if len(arena) == 0 {
					arena = make([]delivery, deliveryChunk)
				}
				d := &arena[0]
				arena = arena[1:]
				d.pt, d.cm, d.attempt = pt, cm, 1
				d.fill()
				ds = append(ds, d)
			}
			s.hand(pt, pt.admit(ds))
			batch = batch[n:]
		}
		if closed {
			return
		}
	}
}

// hand passes a partition's admitted deliveries on. With Concurrency 1
// the handler turn (serial) is taken only by whoever runs handlers: when
// it is free and nothing is queued the reader runs them itself (no
// goroutine hand-off for an idle subscription); otherwise they join the
// queue, which the feeder takes as one batch when the turn comes, so a
// reader never waits for another partition's handlers. With more
// concurrency the reader hands them to the Dispatcher's workers itself.
func (s *subscription) hand(pt *partState, ds []*delivery) {
	if len(ds) == 0 {
		return
	}
	if s.serial == nil {
		s.dispatch(ds)
		return
	}
	// Idle subscription (no handler running, nothing queued): run them
	// here, saving the feeder's wake-up. Queued deliveries are only taken
	// with the turn held, so nothing queued can be overtaken.
	if s.serial.TryLock() {
		if s.q.empty() {
			s.dispatchRuns(ds)
			s.serial.Unlock()
			return
		}
		s.serial.Unlock()
	}
	if !s.q.push(ds...) {
		for _, d := range ds {
			pt.drop(d)
		}
	}
}

func (s *subscription) releasePart(pt *partState) {
	s.mu.Lock()
	delete(s.parts, pt)
	s.mu.Unlock()
}

// feed passes queued deliveries (held behind a key, redelivered, or
// queued while the handler turn was taken) to the Dispatcher; with
// Concurrency 1 their handlers run right here, with the turn held.
func (s *subscription) feed() {
	var batch []*delivery
	for {
		if s.serial != nil {
			// Take the queue with the turn held (see hand).
			if !s.q.wait() {
				return
			}
			s.serial.Lock()
			batch = s.q.take(batch[:0])
			s.dispatchRuns(batch)
			s.serial.Unlock()
			clear(batch)
			continue
		}
		var ok bool
		batch, ok = s.q.popAll(batch[:0])
		if !ok {
			return
		}
		s.dispatch(batch)
		clear(batch)
	}
}

// dispatch hands ds to the Dispatcher in order, a run of deliveries of
// the same partition at a time (DeliverBatch: with Concurrency 1 the
// handlers run inside it, one run per lock round). With Concurrency 1,
// callers (each partition's reader and the feeder) take turns batch by
// batch under serial: one handler at a time for the subscription, and no
// goroutine hand-off per message.
func (s *subscription) dispatch(ds []*delivery) {
	if len(ds) == 0 {
		return
	}
	if s.serial != nil {
		s.serial.Lock()
		defer s.serial.Unlock()
	}
	s.dispatchRuns(ds)
}

// dispatchRuns is dispatch with the handler turn (Concurrency 1) held.
func (s *subscription) dispatchRuns(ds []*delivery) {
	for len(ds) > 0 {
		pt := ds[0].pt
		n := 1
		for n < len(ds) && ds[n].pt == pt {
			n++
		}
		run := ds[:n]
		ds = ds[n:]
		pt.mu.Lock()
		if pt.revoked {
			pt.mu.Unlock()
			for _, d := range run {
				pt.drop(d)
			}
			continue
		}
		pt.inDispatch += len(run)
		pt.mu.Unlock()
		taken, err := s.disp.DeliverBatch(pt.ctx, len(run), func(i int) (*message.Message, transport.Acker) {
			d := run[i]
			return d.message(), d
		})
		if s.serial != nil {
			pt.ackRun(run[:taken])
		}
		if err != nil && taken < len(run) {
			rest := run[taken:]
			pt.mu.Lock()
			pt.inDispatch -= len(rest)
			pt.cond.Broadcast()
			pt.mu.Unlock()
			for _, d := range rest {
				pt.drop(d)
			}
		}
	}
}

// deliveryChunk is how many deliveries one allocation holds. A chunk is
// freed when none of its messages is referenced any more: a handler that
// keeps a Message keeps its chunk (about 5 KiB) alive.
const deliveryChunk = 32

// delivery is one fetched record on its way through the subscription,
// with the Message of its first delivery built in.
type delivery struct {
	m       message.Message
	pt      *partState
	cm      *sarama.ConsumerMessage
	attempt int
	gone    bool // its token was returned (acked or dropped)
	acked   bool // Concurrency 1: acked in a run, settled by ackRun
}

// view returns b's bytes as a string without copying. b is part of the
// fetch response sarama decoded, which nothing writes to afterwards (the
// record's Value, handed to handlers as Payload, is such a view too).
func view(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

// fill builds d's Message from its record (first delivery).
func (d *delivery) fill() {
	cm := d.cm
	m := &d.m
	m.Key, m.Payload, m.Topic, m.Attempt, m.Time = view(cm.Key), cm.Value, cm.Topic, 1, cm.Timestamp
	for _, h := range cm.Headers {
		if h == nil {
			continue
		}
		if string(h.Key) == HeaderID {
			m.ID = view(h.Value)
			continue
		}
		if m.Headers == nil {
			m.Headers = make(message.Header, len(cm.Headers))
		}
		m.Headers[string(h.Key)] = string(h.Value)
	}
	if m.ID == "" {
		// A record from another producer: a stable ID from its position.
		m.ID = cm.Topic + "-" + strconv.Itoa(int(cm.Partition)) + "-" + strconv.FormatInt(cm.Offset, 10)
	}
	m.SetNative(d) // d's As: no closure to allocate
}

// message is the Message to hand to the handler: the built-in one the
// first time, a copy with the new attempt count on a redelivery (the
// handler of an earlier attempt may still hold the first).
func (d *delivery) message() *message.Message {
	if d.attempt == 1 {
		return &d.m
	}
	m := d.m
	if d.m.Headers != nil {
		m.Headers = make(message.Header, len(d.m.Headers))
		for k, v := range d.m.Headers {
			m.Headers[k] = v
		}
	}
	m.Attempt = d.attempt
	return &m
}

// As is Message.As for d's record (message.Native).
func (d *delivery) As(target any) bool {
	switch p := target.(type) {
	case **sarama.ConsumerMessage:
		*p = d.cm
	case *sarama.ConsumerGroupSession:
		if d.pt.sess == nil {
			return false
		}
		*p = d.pt.sess
	default:
		return false
	}
	return true
}

// Ack settles d for the Dispatcher (transport.Acker).
func (d *delivery) Ack(context.Context) error {
	if d.pt.s.serial != nil {
		// Concurrency 1: the handler ran inside DeliverBatch, in the
		// goroutine that called it, which settles the whole run at once
		// when it returns (ackRun).
		d.acked = true
		return nil
	}
	d.pt.ack(d)
	return nil
}

// Nack schedules d's redelivery (transport.Acker).
func (d *delivery) Nack(_ context.Context, delay time.Duration) error {
	d.pt.nack(d, delay)
	return nil
}

// partState tracks one partition of one subscription (one claim of a
// group session): which offsets are outstanding, which keys are busy,
// which nacked messages wait for redelivery.
type partState struct {
	s    *subscription
	p    int32
	ctx  context.Context
	stop context.CancelFunc
	mark func(next int64) // nil without a group
	sess sarama.ConsumerGroupSession

	mu         sync.Mutex
	cond       *sync.Cond
	pending    []pendingOffset // outstanding offsets in fetch order
	head       int             // first live entry of pending
	last       int64           // last fetched offset, -1 before any
	inDispatch int
	revoked    bool
	keys       map[string]*keyGate // OrderedByKey: key → messages held behind the busy one
	timers     map[*delivery]*time.Timer
	marked     int64
}

type pendingOffset struct {
	off  int64
	done bool
}

type keyGate struct{ held []*delivery }

func (s *subscription) newPart(p int32, parent context.Context, mark func(int64), sess sarama.ConsumerGroupSession) *partState {
	pt := &partState{s: s, p: p, mark: mark, sess: sess, last: -1, timers: map[*delivery]*time.Timer{}, marked: -1}
	pt.ctx, pt.stop = context.WithCancel(parent)
	pt.cond = sync.NewCond(&pt.mu)
	if s.opts.OrderedByKey {
		pt.keys = map[string]*keyGate{}
	}
	s.mu.Lock()
	s.parts[pt] = struct{}{}
	s.mu.Unlock()
	return pt
}

// admit records the offsets of ds (fetched, in offset order) as
// outstanding and returns those to dispatch now, holding back those whose
// key is busy.
func (pt *partState) admit(ds []*delivery) []*delivery {
	pt.mu.Lock()
	for _, d := range ds {
		pt.pending = append(pt.pending, pendingOffset{off: d.cm.Offset})
		pt.last = d.cm.Offset
	}
	if pt.revoked {
		pt.mu.Unlock()
		for _, d := range ds {
			pt.drop(d)
		}
		return nil
	}
	out := ds
	if pt.keys != nil {
		out = out[:0:0]
		for _, d := range ds {
			if len(d.cm.Key) > 0 {
				k := string(d.cm.Key)
				if g, busy := pt.keys[k]; busy {
					g.held = append(g.held, d)
					continue
				}
				pt.keys[k] = &keyGate{}
			}
			out = append(out, d)
		}
	}
	pt.mu.Unlock()
	return out
}

// find returns the position of off in pending (offsets are appended in
// increasing order). Called with mu held.
func (pt *partState) find(off int64) (int, bool) {
	live := pt.pending[pt.head:]
	i, ok := slices.BinarySearchFunc(live, off, func(e pendingOffset, off int64) int { return cmp.Compare(e.off, off) })
	return pt.head + i, ok
}

// commitPoint is the offset to commit: the first outstanding offset, or
// the one after the last fetched when none is. Called with mu held.
func (pt *partState) commitPoint() int64 {
	for pt.head < len(pt.pending) && pt.pending[pt.head].done {
		pt.head++
	}
	if pt.head > 1024 && pt.head*2 > len(pt.pending) {
		n := copy(pt.pending, pt.pending[pt.head:])
		pt.pending = pt.pending[:n]
		pt.head = 0
	}
	if pt.head < len(pt.pending) {
		return pt.pending[pt.head].off
	}
	return pt.last + 1
}

// ack settles d for good: its offset may be committed once every earlier
// one is, and the next held message of its key goes.
func (pt *partState) ack(d *delivery) {
	pt.mu.Lock()
	if i, ok := pt.find(d.cm.Offset); ok {
		pt.pending[i].done = true
	}
	next := pt.commitPoint()
	var mark func(int64)
	if next > pt.marked {
		pt.marked = next
		mark = pt.mark
	}
	pt.inDispatch--
	if pt.revoked {
		pt.cond.Broadcast() // revoke waits for inDispatch to reach 0
	}
	nd := pt.releaseKey(d)
	gone := d.gone
	d.gone = true
	pt.mu.Unlock()
	if mark != nil {
		mark(next)
	}
	if !gone {
		pt.s.lim.release(1)
	}
	if nd != nil && !pt.s.q.push(nd) {
		pt.drop(nd)
	}
}

// ackRun settles the deliveries of ds that were acked inside a
// DeliverBatch run (Concurrency 1), under one lock: their offsets become
// committable, the partition's mark moves once, their tokens return
// together and held messages of their keys go.
func (pt *partState) ackRun(ds []*delivery) {
	var held []*delivery
	n, tokens := 0, 0
	pt.mu.Lock()
	hint := pt.head // runs are in offset order: the next one is usually at hint
	for _, d := range ds {
		if !d.acked {
			continue
		}
		d.acked = false
		n++
		if hint < len(pt.pending) && pt.pending[hint].off == d.cm.Offset {
			pt.pending[hint].done = true
			hint++
		} else if i, ok := pt.find(d.cm.Offset); ok {
			pt.pending[i].done = true
			hint = i + 1
		}
		if nd := pt.releaseKey(d); nd != nil {
			held = append(held, nd)
		}
		if !d.gone {
			d.gone = true
			tokens++
		}
	}
	if n == 0 {
		pt.mu.Unlock()
		return
	}
	pt.inDispatch -= n
	if pt.revoked {
		pt.cond.Broadcast() // revoke waits for inDispatch to reach 0
	}
	next := pt.commitPoint()
	var mark func(int64)
	if next > pt.marked {
		pt.marked = next
		mark = pt.mark
	}
	pt.mu.Unlock()
	if mark != nil {
		mark(next)
	}
	if tokens > 0 {
		pt.s.lim.release(tokens)
	}
	if len(held) > 0 && !pt.s.q.push(held...) {
		for _, d := range held {
			pt.drop(d)
		}
	}
}

// releaseKey returns the next message held behind d's key, or frees the
// key. Called with mu held.
func (pt *partState) releaseKey(d *delivery) *delivery {
	if pt.keys == nil || len(d.cm.Key) == 0 {
		return nil
	}
	k := string(d.cm.Key)
	g := pt.keys[k]
	if g == nil {
		return nil
	}
	if len(g.held) == 0 || pt.revoked {
		delete(pt.keys, k)
		return nil
	}
	nd := g.held[0]
	g.held[0] = nil
	g.held = g.held[1:]
	return nd
}

// nack schedules d for redelivery in this process after delay (or the
// backoff when none was asked for). Its offset stays uncommitted and its
// key stays busy, so later messages of the key wait behind it.
func (pt *partState) nack(d *delivery, delay time.Duration) {
	o := pt.s.t.o
	if delay <= 0 {
		delay = o.RetryBackoff
		for i := 1; i < d.attempt && delay < o.RetryBackoffMax; i++ {
			delay *= 2
		}
		delay = min(delay, o.RetryBackoffMax)
	}
	pt.mu.Lock()
	pt.inDispatch--
	pt.cond.Broadcast()
	if pt.revoked {
		pt.mu.Unlock()
		pt.drop(d)
		return
	}
	d.attempt++
	pt.timers[d] = time.AfterFunc(delay, func() {
		pt.mu.Lock()
		if _, ok := pt.timers[d]; !ok {
			pt.mu.Unlock()
			return // revoked: already dropped
		}
		delete(pt.timers, d)
		revoked := pt.revoked
		pt.mu.Unlock()
		if revoked || !pt.s.q.push(d) {
			pt.drop(d)
		}
	})
	pt.mu.Unlock()
}

// drop gives up on d in this process: its token is returned and its offset
// stays uncommitted, so whoever reads the partition next gets it again.
func (pt *partState) drop(d *delivery) { pt.giveBack(d) }

func (pt *partState) giveBack(d *delivery) {
	pt.mu.Lock()
	gone := d.gone
	d.gone = true
	pt.mu.Unlock()
	if !gone {
		pt.s.lim.release(1)
	}
}

// revoke stops the partition taking work, drops what waits (held behind a
// key, waiting for a redelivery timer), waits for the messages in the
// Dispatcher to settle and marks the committable offset.
func (pt *partState) revoke() {
	pt.stop()
	pt.mu.Lock()
	pt.revoked = true
	var dropped []*delivery
	for d, tm := range pt.timers {
		tm.Stop()
		dropped = append(dropped, d)
	}
	clear(pt.timers)
	for _, g := range pt.keys {
		dropped = append(dropped, g.held...)
	}
	clear(pt.keys)
	for pt.inDispatch > 0 {
		pt.cond.Wait()
	}
	next := pt.commitPoint()
	var mark func(int64)
	if pt.last >= 0 {
		// Mark even when an ack already moved pt.marked to next: ack and
		// ackRun mark after unlocking, so that mark may not have happened
		// yet, and the session commits as soon as this returns.
		// MarkOffset only moves forward: marking twice is harmless.
		pt.marked = max(pt.marked, next)
		mark = pt.mark
	}
	pt.mu.Unlock()
	for _, d := range dropped {
		pt.drop(d)
	}
	if mark != nil {
		mark(next)
	}
}

// resumeOffset is where a group-less partition reader restarts: the first
// offset not settled, or -1 when nothing was fetched.
func (pt *partState) resumeOffset() int64 {
	pt.mu.Lock()
	defer pt.mu.Unlock()
	if pt.last < 0 {
		return -1
	}
	return pt.commitPoint()
}

// queue is the unbounded hand-off from partitions (and redelivery timers)
// to the feeder; its length is bounded by the subscription's tokens.
type queue struct {
	mu     sync.Mutex
	items  []*delivery
	closed bool
	signal chan struct{}
}

func (q *queue) push(ds ...*delivery) bool {
	if len(ds) == 0 {
		return true
	}
	q.mu.Lock()
	if q.closed {
		q.mu.Unlock()
		return false
	}
	q.items = append(q.items, ds...)
	q.mu.Unlock()
	select {
	case q.signal <- struct{}{}:
	default:
	}
	return true
}

// popAll moves every queued delivery into buf, waiting for one when the
// queue is empty; false once the queue is closed and empty.
func (q *queue) popAll(buf []*delivery) ([]*delivery, bool) {
	for {
		q.mu.Lock()
		if len(q.items) > 0 {
			buf = append(buf, q.items...)
			clear(q.items)
			q.items = q.items[:0]
			q.mu.Unlock()
			return buf, true
		}
		if q.closed {
			q.mu.Unlock()
			return buf, false
		}
		q.mu.Unlock()
		<-q.signal
	}
}

// take moves every queued delivery into buf without waiting.
func (q *queue) take(buf []*delivery) []*delivery {
	q.mu.Lock()
	buf = append(buf, q.items...)
	clear(q.items)
	q.items = q.items[:0]
	q.mu.Unlock()
	return buf
}

func (q *queue) empty() bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	return len(q.items) == 0
}

// wait blocks until something is queued; false once the queue is closed
// and empty.
func (q *queue) wait() bool {
	for {
		q.mu.Lock()
		n, closed := len(q.items), q.closed
		q.mu.Unlock()
		if n > 0 {
			return true
		}
		if closed {
			return false
		}
		<-q.signal
	}
}

func (q *queue) close() {
	q.mu.Lock()
	q.closed = true
	q.mu.Unlock()
	select {
	case q.signal <- struct{}{}:
	default:
	}
}

// limiter bounds the messages a subscription holds (MaxInFlight). Taking
// and returning tokens is an atomic add while tokens are free; a reader
// that finds none waits on a condition and is woken once a quarter of the
// bound is free again rather than at every release, so a full pipeline
// moves in batches instead of one goroutine wake-up per message.
type limiter struct {
	used    atomic.Int64
	max     int64
	low     int64 // wake waiters when used drops to this
	waiting atomic.Int32
	mu      sync.Mutex
	cond    *sync.Cond
}

func newLimiter(n int) *limiter {
	l := &limiter{max: int64(n), low: int64(n - max(1, n/4))}
	l.cond = sync.NewCond(&l.mu)
	return l
}

// acquire takes between 1 and n slots, waiting while none is free; 0 when
// ctx ended first.
func (l *limiter) acquire(ctx context.Context, n int) int {
	for {
		if ctx.Err() != nil {
			return 0
		}
		u := l.used.Load()
		if u < l.max {
			k := min(int64(n), l.max-u)
			if l.used.CompareAndSwap(u, u+k) {
				return int(k)
			}
			continue
		}
		l.mu.Lock()
		l.waiting.Add(1)
		for l.used.Load() >= l.max && ctx.Err() == nil {
			l.cond.Wait()
		}
		l.waiting.Add(-1)
		l.mu.Unlock()
	}
}

func (l *limiter) release(n int) {
	u := l.used.Add(-int64(n))
	if l.waiting.Load() > 0 && u <= l.low {
		l.wake()
	}
}

// wake lets waiters re-check the tokens and their context.
func (l *limiter) wake() {
	l.mu.Lock()
	l.mu.Unlock() //nolint:staticcheck // orders the broadcast after a waiter's check
	l.cond.Broadcast()
}
