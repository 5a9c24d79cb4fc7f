package sqstransport

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// settleTimeout bounds each call that settles a message (delete, nack,
// move to a dead-letter queue or topic, release, extension): they run
// without the subscription's ctx so that they land as it stops, and a
// stalled one must not hold Subscribe or Shutdown for ever. Tests
// shorten it (SetSettleTimeout).
const defaultSettleTimeout = 10 * time.Second

var settleNanos atomic.Int64

func settleTimeout() time.Duration {
	if d := settleNanos.Load(); d > 0 {
		return time.Duration(d)
	}
	return defaultSettleTimeout
}

// Subscribe receives topic's messages (from the group's queue in ModeSNS,
// from the topic's queue in ModeSQS) with long polling and hands them to h;
// see the package doc for the delivery semantics.
func (t *Transport) Subscribe(ctx context.Context, topic string, h message.Handler, opts transport.SubscribeOptions) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return transport.ErrClosed
	}
	t.subs.Add(1)
	t.mu.Unlock()
	defer func() {
		if t.isClosed() {
			t.closeIdle()
		}
		t.subs.Done()
	}()

	if h == nil {
		return errors.New("sqstransport: Subscribe needs a handler")
	}
	if err := t.checkNames(topic, opts.Group, opts.DeadLetterTopic); err != nil {
		return err
	}
	if opts.OrderedByKey && !t.o.FIFO {
		return fmt.Errorf("sqstransport: OrderedByKey needs FIFO queues (fifo=true): %w", transport.ErrUnsupported)
	}
	so := opts.Defaults()

	var (
		qu      string
		qn      string
		cleanup func()
		err     error
	)
	if t.o.Mode == ModeSNS && so.Group == "" {
		qn, qu, cleanup, err = t.privateQueue(ctx, topic)
	} else {
		qn = t.queueName(topic, so.Group)
		qu, err = t.declareGroup(ctx, topic, so.Group)
	}
	if err != nil {
		return err
	}
	if cleanup != nil {
		defer cleanup()
	}
	redrive := ""
	if cleanup == nil { // private queues get no redrive policy
		redrive = t.redriveURL(ctx, qn)
	}
	s := &sub{
		t: t, topic: topic, queue: qn, url: qu, so: so,
		redrive:   redrive,
		vis:       visibilitySeconds(so.AckWait),
		inflight:  map[*inflight]struct{}{},
		tokens:    make(chan struct{}, so.MaxInFlight),
		acquiring: make(chan struct{}, 1),
		gwake:     make(chan struct{}, 1),
	}
	if so.OrderedByKey {
		s.groups = map[string][]*inflight{}
	}
	return s.run(ctx, h)
}

// privateQueue creates a queue subscribed to topic for a subscription
// without a group, and a cleanup that unsubscribes and deletes it.
func (t *Transport) privateQueue(ctx context.Context, topic string) (string, string, func(), error) {
	var b [4]byte
	_, _ = rand.Read(b[:])
	qn := t.queueName(topic, "tmp"+hex.EncodeToString(b[:]))
	qu, err := t.queueURL(ctx, qn, true, nil)
	if err != nil {
		return "", "", nil, err
	}
	del := func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout())
		defer cancel()
		if _, err := t.sqs.DeleteQueue(cctx, &sqs.DeleteQueueInput{QueueUrl: aws.String(qu)}); err != nil {
			t.o.Logger.Warn("sqstransport: delete private queue failed", "queue", qn, "error", t.scrub(err))
		}
		t.nameMu.Lock()
		delete(t.queues, qn)
		t.nameMu.Unlock()
	}
	subARN, err := t.subscribeQueueARN(ctx, topic, qu)
	if err != nil {
		del()
		return "", "", nil, err
	}
	return qn, qu, func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout())
		defer cancel()
		if subARN != "" {
			if _, err := t.sns.Unsubscribe(cctx, &sns.UnsubscribeInput{SubscriptionArn: aws.String(subARN)}); err != nil {
				t.o.Logger.Warn("sqstransport: unsubscribe private queue failed", "queue", qn, "error", t.scrub(err))
			}
		}
		del()
	}, nil
}

// maxVisibility is SQS's bound on a message's visibility: it cannot end
// later than 12 hours after the ReceiveMessage that returned it
// (ChangeMessageVisibility asking for more is rejected).
const maxVisibility = 12 * time.Hour

// nackSeconds is the visibility timeout of a nack with delay, elapsed
// after the receive request was sent: the delay rounded up to whole
// seconds (0 at once; at least 1 with minOne, see Options.Goaws), cut to
// what is left of maxVisibility, rounded down. elapsed counts from before
// SQS got the request, so the cut is never too late.
func nackSeconds(delay, elapsed time.Duration, minOne bool) int32 {
	secs := int32(0)
	if delay > 0 || minOne {
		secs = visibilitySeconds(delay)
	}
	left := int64((maxVisibility - elapsed) / time.Second)
	return int32(max(0, min(int64(secs), left)))
}

// extendSeconds is the visibility timeout of a renewal of vis seconds,
// elapsed after the receive request was sent: vis cut to what is left of
// maxVisibility, rounded down (0 when nothing is left). last reports that
// the renewal was cut (or nothing is left), so no later one can help.
func extendSeconds(vis int32, elapsed time.Duration) (secs int32, last bool) {
	left := max(0, int64((maxVisibility-elapsed)/time.Second))
	if left < int64(vis) {
		return int32(left), true
	}
	return vis, false
}

// visibilitySeconds converts AckWait to SQS's whole seconds (1 to 12 h).
func visibilitySeconds(d time.Duration) int32 {
	s := int64(math.Ceil(d.Seconds()))
	return int32(min(max(s, 1), 43200))
}

type sub struct {
	t       *Transport
	topic   string
	queue   string
	url     string
	redrive string
	so      transport.SubscribeOptions
	vis     int32

	tokens    chan struct{} // MaxInFlight: a token per received, unsettled message
	acquiring chan struct{} // one receiver acquires tokens at a time
	acks      chan string   // receipt handles to delete
	recv      chan *inflight

	mu       sync.Mutex
	inflight map[*inflight]struct{}

	// With OrderedByKey (FIFO), one message per message group is with the
	// Dispatcher at a time; the others received with it wait in groups
	// (see admit and groupSettled).
	gmu     sync.Mutex
	groups  map[string][]*inflight // busy groups: the messages waiting behind the running one
	gready  []*inflight            // group heads to hand to the Dispatcher next
	gwake   chan struct{}          // signals gready (capacity 1)
	gclosed bool                   // no more hand-offs: waiting messages are released
}

// inflight is a received message not yet settled.
type inflight struct {
	sm       sqstypes.Message
	m        *message.Message
	mu       sync.Mutex
	deadline time.Time // when its visibility ends; guarded by mu
	sent     time.Time // when the ReceiveMessage that got it was sent
	settled  bool
	capped   bool   // reached maxVisibility: no more renewals; guarded by mu
	group    string // FIFO message group when sequenced (OrderedByKey), else ""
	head     bool   // handed on as its group's running message; guarded by sub.gmu
}

func (s *sub) run(ctx context.Context, h message.Handler) error {
	t := s.t
	d := transport.NewDispatcher(ctx, h, transport.DispatchOptions{
		Topic: s.topic, Group: s.so.Group, Subscribe: s.so,
		DeadLetter: func(ctx context.Context, topic string, m *message.Message) error {
			ctx, cancel := context.WithTimeout(ctx, settleTimeout())
			defer cancel()
			return t.publishOne(ctx, topic, m)
		},
		Logger: t.o.Logger,
	})
	receivers := t.o.Receivers
	if receivers <= 0 {
		receivers = min((s.so.MaxInFlight+maxBatch-1)/maxBatch, 8)
	}
	receivers = max(1, min(receivers, s.so.MaxInFlight))
	s.acks = make(chan string, s.so.MaxInFlight)
	s.recv = make(chan *inflight)

	rctx, rcancel := context.WithCancel(ctx)
	defer rcancel()
	fatal := make(chan error, receivers)

	var deleters sync.WaitGroup
	deleters.Add(1)
	go func() { defer deleters.Done(); s.deleter(receivers) }()
	extStop := make(chan struct{})
	extDone := make(chan struct{})
	go func() { defer close(extDone); s.extender(extStop) }()

	var recvWG sync.WaitGroup
	for range receivers {
		recvWG.Add(1)
		go func() {
			defer recvWG.Done()
			if err := s.receive(rctx); err != nil {
				fatal <- err
				rcancel()
			}
		}()
	}
	delivered := make(chan struct{})
	go func() {
		defer close(delivered)
		defer s.closeGroups()
		for {
			inf, ok := s.nextReady()
			if !ok {
				select {
				case inf, ok = <-s.recv:
					if !ok {
						return
					}
				case <-s.gwake:
					continue
				}
			}
			if rctx.Err() != nil {
				s.release(inf)
				continue
			}
			if err := d.Deliver(rctx, inf.m, &acker{s: s, inf: inf}); err != nil {
				s.release(inf)
			}
		}
	}()

	var result error
	select {
	case <-ctx.Done():
		result = ctx.Err()
	case <-t.closing:
		result = transport.ErrClosed
	case err := <-fatal:
		result = err
	}
	rcancel()
	graceful := result == transport.ErrClosed
	select {
	case <-t.hard:
		graceful = false
	default:
	}
	if !graceful {
		d.Cancel()
	}
	// Shutdown's ctx ending (t.hard) turns a graceful stop into a hard one.
	stopCtx, stopCancel := context.WithCancel(context.Background())
	watchDone := make(chan struct{})
	go func() {
		select {
		case <-t.hard:
			d.Cancel()
			stopCancel()
		case <-watchDone:
		}
	}()
	recvWG.Wait()
	close(s.recv)
	<-delivered
	_ = d.Stop(stopCtx)
	close(watchDone)
	stopCancel()
	close(extStop)
	<-extDone
	close(s.acks)
	deleters.Wait()
	return result
}

// receive runs one long-polling loop until ctx ends or the queue is gone.
func (s *sub) receive(ctx context.Context) error {
	t := s.t
	backoff := 100 * time.Millisecond
	for {
		n, ok := s.acquire(ctx)
		if !ok {
			return nil
		}
		// SQS starts a message's visibility timeout when it handles the
		// request, which can be long before its answer arrives on a loaded
		// machine: count from before the request, so the extender never
		// thinks a message has more time than it has.
		sent := time.Now()
		out, err := t.sqs.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{
			QueueUrl:                    aws.String(s.url),
			MaxNumberOfMessages:         int32(n),
			WaitTimeSeconds:             int32(t.o.WaitTime / time.Second),
			VisibilityTimeout:           s.vis,
			MessageAttributeNames:       []string{"All"},
			MessageSystemAttributeNames: []sqstypes.MessageSystemAttributeName{sqstypes.MessageSystemAttributeNameAll},
		})
		var got int
		if out != nil {
			got = len(out.Messages)
		}
		for range n - got {
			<-s.tokens
		}
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var gone *sqstypes.QueueDoesNotExist
			if errors.As(err, &gone) {
				return fmt.Errorf("sqstransport: queue %s: %w", s.queue, t.scrub(err))
			}
			t.o.Logger.Warn("sqstransport: receive failed; retrying", "queue", s.queue, "error", t.scrub(err), "backoff", backoff)
			timer := time.NewTimer(backoff)
			select {
			case <-ctx.Done():
				timer.Stop()
				return nil
			case <-timer.C:
			}
			backoff = min(backoff*2, 5*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		if got > 0 {
			t.o.Logger.Debug("sqstransport: received", "queue", s.queue, "count", got, "asked", n)
		}
		infs := make([]*inflight, len(out.Messages))
		for i := range out.Messages {
			inf := s.received(out.Messages[i], sent)
			s.mu.Lock()
			s.inflight[inf] = struct{}{}
			s.mu.Unlock()
			infs[i] = inf
		}
		for _, inf := range s.admit(infs) {
			select {
			case s.recv <- inf:
			case <-ctx.Done():
				s.release(inf)
			}
		}
	}
}

// acquire takes in-flight slots for one ReceiveMessage: it waits for
// half of MaxInFlight (at most 10) to be free, so that a busy subscription
// receives in batches rather than one message per call, then takes what
// else is free up to 10. One receiver acquires at a time, so receivers
// never each hold part of what another waits for.
func (s *sub) acquire(ctx context.Context) (int, bool) {
	want := min(maxBatch, max(1, s.so.MaxInFlight/2))
	select {
	case s.acquiring <- struct{}{}:
	case <-ctx.Done():
		return 0, false
	}
	defer func() { <-s.acquiring }()
	n := 0
	for n < want {
		select {
		case s.tokens <- struct{}{}:
			n++
		case <-ctx.Done():
			for range n {
				<-s.tokens
			}
			return 0, false
		}
	}
	for n < maxBatch {
		select {
		case s.tokens <- struct{}{}:
			n++
		default:
			return n, true
		}
	}
	return n, true
}

// received wraps a received message, visible to others again at
// deadline, with its Message. inf is the Message's As target (no closure
// to allocate).
func (s *sub) received(sm sqstypes.Message, sent time.Time) *inflight {
	inf := &inflight{sm: sm, sent: sent, deadline: sent.Add(time.Duration(s.vis) * time.Second)}
	inf.m = s.toMessage(&inf.sm)
	inf.m.SetNative(inf)
	if s.groups != nil {
		inf.group = sm.Attributes[string(sqstypes.MessageSystemAttributeNameMessageGroupId)]
		if inf.group == "" {
			inf.group = inf.m.Key
		}
	}
	return inf
}

// A FIFO queue may return several messages of one message group in one
// ReceiveMessage (AWS does; goaws returns one per group). With
// OrderedByKey the subscription hands only one message of a group at a
// time to the Dispatcher, and the next one only once it was settled for
// good (deleted or moved to a dead-letter queue): when it fails instead
// (nacked, or released unstarted), the messages received behind it are
// made visible again without running, so SQS redelivers the group in
// order, the failed message first. Without this, the later messages of
// the group would run (and be deleted) before the failed one's redelivery.

// admit returns the messages of one ReceiveMessage to hand to the
// Dispatcher now; the others wait behind their group's running message.
// The whole batch is admitted at once, so that a message cannot become
// its group's head because the one before it in the same batch already
// failed.
func (s *sub) admit(infs []*inflight) []*inflight {
	if s.groups == nil {
		return infs
	}
	heads := infs[:0:0]
	s.gmu.Lock()
	defer s.gmu.Unlock()
	for _, inf := range infs {
		if inf.group == "" {
			heads = append(heads, inf)
			continue
		}
		if q, busy := s.groups[inf.group]; busy {
			s.groups[inf.group] = append(q, inf)
			continue
		}
		s.groups[inf.group] = nil
		inf.head = true
		heads = append(heads, inf)
	}
	return heads
}

// nextReady returns a group's next message to hand to the Dispatcher.
func (s *sub) nextReady() (*inflight, bool) {
	if s.groups == nil {
		return nil, false
	}
	s.gmu.Lock()
	defer s.gmu.Unlock()
	if len(s.gready) == 0 {
		return nil, false
	}
	inf := s.gready[0]
	s.gready[0] = nil
	s.gready = s.gready[1:]
	return inf, true
}

// groupSettled is called when inf, its group's running message, was
// settled: gone reports that it left the queue (deleted, or moved to a
// dead-letter queue). The group's next message is then queued for the
// Dispatcher; otherwise every message waiting behind inf is made visible
// again, unrun, before inf itself is (the caller does that after).
func (s *sub) groupSettled(inf *inflight, gone bool) {
	if s.groups == nil || inf.group == "" {
		return
	}
	s.gmu.Lock()
	if !inf.head {
		s.gmu.Unlock()
		return
	}
	inf.head = false
	q := s.groups[inf.group]
	if gone && !s.gclosed && len(q) > 0 {
		next := q[0]
		q[0] = nil
		s.groups[inf.group] = q[1:]
		next.head = true
		s.gready = append(s.gready, next)
		s.gmu.Unlock()
		select {
		case s.gwake <- struct{}{}:
		default:
		}
		return
	}
	delete(s.groups, inf.group)
	s.gmu.Unlock()
	for _, w := range q {
		s.release(w)
	}
}

// closeGroups ends the hand-offs once the delivery loop is done: group
// heads not handed on yet are released, and with them the messages
// waiting behind them; the messages waiting behind a running one are
// released when it settles.
func (s *sub) closeGroups() {
	if s.groups == nil {
		return
	}
	s.gmu.Lock()
	s.gclosed = true
	ready := s.gready
	s.gready = nil
	s.gmu.Unlock()
	for _, inf := range ready {
		s.release(inf)
	}
}

func (s *sub) toMessage(sm *sqstypes.Message) *message.Message {
	m, err := decode(sm)
	if err != nil {
		// Not courier's format after all: deliver it as a foreign message
		// rather than lose it.
		s.t.o.Logger.Warn("sqstransport: message not in courier's format; delivered as it is", "queue", s.queue, "sqs_message_id", deref(sm.MessageId), "error", err)
		m = &message.Message{ID: deref(sm.MessageId), Payload: []byte(deref(sm.Body))}
		for k, v := range sm.MessageAttributes {
			if v.StringValue != nil {
				m.SetHeader(k, *v.StringValue)
			}
		}
	}
	m.Topic = s.topic
	m.Attempt = receiveCount(sm)
	m.Time = receivedAt(sm)
	return m
}

// As is Message.As for inf's message: *types.Message and **types.Message.
func (inf *inflight) As(target any) bool {
	switch p := target.(type) {
	case *sqstypes.Message:
		*p = inf.sm
	case **sqstypes.Message:
		*p = &inf.sm
	default:
		return false
	}
	return true
}

// finish marks inf settled and frees its in-flight slot. It reports false
// when inf was already settled.
func (s *sub) finish(inf *inflight) bool {
	inf.mu.Lock()
	was := inf.settled
	inf.settled = true
	inf.mu.Unlock()
	if was {
		return false
	}
	s.mu.Lock()
	delete(s.inflight, inf)
	s.mu.Unlock()
	<-s.tokens
	return true
}

// release returns a message that was received but not handed to a handler.
func (s *sub) release(inf *inflight) {
	if !s.finish(inf) {
		return
	}
	s.groupSettled(inf, false)
	ctx, cancel := context.WithTimeout(context.Background(), settleTimeout())
	defer cancel()
	secs := int32(0)
	if s.t.o.FIFO && s.t.o.Goaws {
		secs = 1 // see Options.Goaws
	}
	if err := s.changeVisibility(ctx, inf, secs); err != nil {
		s.t.o.Logger.Debug("sqstransport: release failed; the message returns after its visibility timeout", "queue", s.queue, "message_id", inf.m.ID, "error", err)
	}
}

func (s *sub) changeVisibility(ctx context.Context, inf *inflight, secs int32) error {
	_, err := s.t.sqs.ChangeMessageVisibility(ctx, &sqs.ChangeMessageVisibilityInput{
		QueueUrl: aws.String(s.url), ReceiptHandle: inf.sm.ReceiptHandle, VisibilityTimeout: secs,
	})
	if err != nil {
		return fmt.Errorf("sqstransport: ChangeMessageVisibility: %w", s.t.scrub(err))
	}
	return nil
}

// extenders bounds the ChangeMessageVisibility calls the extender makes
// at once, so that many due messages are not renewed one after another.
const extenders = 8

// extender keeps the messages of running handlers invisible. It looks
// every sixth of the visibility timeout and renews a message when less
// than two thirds of it are left, so a renewal is sent with at least half
// the timeout to spare: room for a slow round trip on a loaded broker or
// machine (a message's deadline is counted from when the request that
// set it was sent, so a slow answer only makes it earlier).
func (s *sub) extender(stop <-chan struct{}) {
	full := time.Duration(s.vis) * time.Second
	period := max(full/6, 100*time.Millisecond)
	tick := time.NewTicker(period)
	defer tick.Stop()
	sem := make(chan struct{}, extenders)
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		select {
		case <-stop:
			return
		case <-tick.C:
		}
		s.mu.Lock()
		all := make([]*inflight, 0, len(s.inflight))
		for inf := range s.inflight {
			all = append(all, inf)
		}
		s.mu.Unlock()
		now := time.Now()
		for _, inf := range all {
			if !inf.mu.TryLock() {
				continue // being renewed since an earlier tick, or settled
			}
			if inf.settled || inf.capped || inf.deadline.Sub(now) >= full*2/3 {
				inf.mu.Unlock()
				continue
			}
			select {
			case sem <- struct{}{}:
			case <-stop:
				inf.mu.Unlock()
				return
			}
			wg.Add(1)
			go func() {
				defer func() { inf.mu.Unlock(); <-sem; wg.Done() }()
				s.extend(inf)
			}()
		}
	}
}

// extend renews inf's visibility; the caller holds inf.mu. A renewal
// never asks for more than is left of maxVisibility since the receive
// (SQS would refuse it): the last one is cut to the limit, and then the
// message is marked capped, logged once at Warn and no longer renewed.
func (s *sub) extend(inf *inflight) {
	if inf.settled || inf.capped {
		return
	}
	sent := time.Now()
	secs, last := extendSeconds(s.vis, sent.Sub(inf.sent))
	if secs > 0 {
		ctx, cancel := context.WithTimeout(context.Background(), settleTimeout())
		defer cancel()
		if err := s.changeVisibility(ctx, inf, secs); err != nil {
			s.t.o.Logger.Warn("sqstransport: visibility extension failed; the message may be redelivered", "queue", s.queue, "message_id", inf.m.ID, "error", err)
			return
		}
		inf.deadline = sent.Add(time.Duration(secs) * time.Second)
	}
	if last {
		inf.capped = true
		s.t.o.Logger.Warn("sqstransport: handler still running at SQS's 12 h visibility limit from the receive; no more extensions, the message will become visible again at visible_at and may be redelivered",
			"queue", s.queue, "message_id", inf.m.ID, "visible_at", inf.deadline)
	}
}

// deleter gathers acks into batches of 10 (or what came within
// AckLinger) and hands each to one of parallel senders, each sending one
// DeleteMessageBatch at a time, until s.acks closes and every call
// returned. The senders live as long as the subscription: a goroutine per
// batch would grow a fresh stack to the SDK's depth every time (about a
// tenth of the receiving side's CPU).
func (s *sub) deleter(parallel int) {
	batches := make(chan []string)
	var senders sync.WaitGroup
	for range parallel {
		senders.Add(1)
		go func() {
			defer senders.Done()
			for batch := range batches {
				s.deleteBatch(batch)
			}
		}()
	}
	defer func() {
		close(batches)
		senders.Wait()
	}()
	// One timer for every batch (Stop and Reset need no draining since
	// Go 1.23).
	timer := time.NewTimer(s.t.o.AckLinger)
	timer.Stop()
	for {
		rh, ok := <-s.acks
		if !ok {
			return
		}
		batch := make([]string, 1, maxBatch)
		batch[0] = rh
		timer.Reset(s.t.o.AckLinger)
		open := true
	fill:
		for len(batch) < maxBatch {
			select {
			case rh, ok := <-s.acks:
				if !ok {
					open = false
					break fill
				}
				batch = append(batch, rh)
			case <-timer.C:
				break fill
			}
		}
		timer.Stop()
		batches <- batch
		if !open {
			return
		}
	}
}

func (s *sub) deleteBatch(batch []string) {
	ctx, cancel := context.WithTimeout(context.Background(), settleTimeout())
	defer cancel()
	in := &sqs.DeleteMessageBatchInput{QueueUrl: aws.String(s.url), Entries: make([]sqstypes.DeleteMessageBatchRequestEntry, len(batch))}
	for i, rh := range batch {
		in.Entries[i] = sqstypes.DeleteMessageBatchRequestEntry{Id: aws.String(strconv.Itoa(i)), ReceiptHandle: aws.String(rh)}
	}
	out, err := s.t.sqs.DeleteMessageBatch(ctx, in)
	if err != nil {
		s.t.o.Logger.Warn("sqstransport: delete failed; the messages will be redelivered", "queue", s.queue, "count", len(batch), "error", s.t.scrub(err))
		return
	}
	for _, f := range out.Failed {
		s.t.o.Logger.Warn("sqstransport: delete failed; the message will be redelivered", "queue", s.queue, "code", deref(f.Code), "error", deref(f.Message))
	}
}

// acker settles one message for the Dispatcher.
type acker struct {
	s   *sub
	inf *inflight
}

// Ack queues the message's deletion; deletes go out in batches of 10.
func (a *acker) Ack(ctx context.Context) error {
	if !a.s.finish(a.inf) {
		return nil
	}
	a.s.acks <- deref(a.inf.sm.ReceiptHandle)
	a.s.groupSettled(a.inf, true)
	return nil
}

// Nack makes the message visible again after delay (whole seconds, at most
// 12 hours; 0 at once).
func (a *acker) Nack(ctx context.Context, delay time.Duration) error {
	if !a.s.finish(a.inf) {
		return nil
	}
	a.s.groupSettled(a.inf, false)
	ctx, cancel := context.WithTimeout(ctx, settleTimeout())
	defer cancel()
	secs := nackSeconds(delay, time.Since(a.inf.sent), a.s.t.o.FIFO && a.s.t.o.Goaws)
	return a.s.changeVisibility(ctx, a.inf, secs)
}

// Term handles a permanent failure when no DeadLetterTopic is set: with a
// redrive policy the message is moved to its dead-letter queue at once
// (sent there, then deleted); otherwise it is deleted and logged.
func (a *acker) Term(ctx context.Context, reason string) error {
	s := a.s
	if !s.finish(a.inf) {
		return nil
	}
	sm := &a.inf.sm
	ctx, cancel := context.WithTimeout(ctx, settleTimeout())
	defer cancel()
	if s.redrive == "" {
		s.t.o.Logger.Error("sqstransport: message failed permanently and neither a dead-letter topic nor a redrive policy is configured; deleted",
			"topic", s.topic, "queue", s.queue, "message_id", a.inf.m.ID, "reason", reason)
		s.acks <- deref(sm.ReceiptHandle)
		s.groupSettled(a.inf, true)
		return nil
	}
	in := &sqs.SendMessageInput{QueueUrl: aws.String(s.redrive), MessageBody: sm.Body, MessageAttributes: sm.MessageAttributes}
	if s.t.o.FIFO {
		in.MessageGroupId, in.MessageDeduplicationId = fifoIDs(a.inf.m)
	}
	if _, err := s.t.sqs.SendMessage(ctx, in); err != nil {
		// Keep it: SQS's own redrive moves it after MaxReceiveCount.
		s.groupSettled(a.inf, false)
		vctx, vcancel := context.WithTimeout(context.WithoutCancel(ctx), settleTimeout())
		defer vcancel()
		_ = s.changeVisibility(vctx, a.inf, 0)
		return fmt.Errorf("sqstransport: move to dead-letter queue: %w", s.t.scrub(err))
	}
	s.t.o.Logger.Warn("sqstransport: message failed permanently; moved to the redrive dead-letter queue", "topic", s.topic, "queue", s.queue, "message_id", a.inf.m.ID, "reason", reason)
	s.acks <- deref(sm.ReceiptHandle)
	s.groupSettled(a.inf, true)
	return nil
}
