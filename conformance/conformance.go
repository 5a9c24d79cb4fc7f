package conformance

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// testCase is one conformance case: a name and a sentence saying what it
// proves (printed with -v).
type testCase struct {
	name  string
	proof string
	run   func(*suite, *testing.T)
}

var cases = []testCase{
	{"RoundTrip", "ID, Key, Headers (unicode, empty values) and Payload (empty, binary with NUL bytes, the maximum size) arrive byte-exact", (*suite).roundTrip},
	{"GeneratedID", "Publish gives a message without an ID a unique one, visible to the caller and to the consumer", (*suite).generatedID},
	{"ReceivedFields", "received messages carry their topic, attempt 1 on first delivery and the broker time where declared", (*suite).receivedFields},
	{"DeclaredGroupRetains", "messages published to a declared group before any of its handlers runs are all delivered", (*suite).declaredGroupRetains},
	{"GroupsFanOut", "two groups each get every message", (*suite).groupsFanOut},
	{"CompetingConsumers", "N subscribers in one group share the messages and each message is handled once when nothing fails", (*suite).competingConsumers},
	{"NoGroupSubscription", "a subscription without a group receives what is published while it runs", (*suite).noGroup},
	{"TopicsIsolated", "many topics used concurrently never see each other's messages", (*suite).topicsIsolated},
	{"ConcurrentPublishers", "many goroutines publishing at once lose and duplicate nothing", (*suite).concurrentPublishers},
	{"BatchPublish", "one Publish call with many messages delivers all of them", (*suite).batchPublish},
	{"NackRedelivers", "a handler error redelivers the message, with the attempt count rising where counted", (*suite).nackRedelivers},
	{"DelayedNack", "a nack with a delay (message.RetryAfter) is not redelivered before the delay", (*suite).delayedNack},
	{"HandlerPanic", "a panicking handler does not crash the process; the message is redelivered", (*suite).handlerPanic},
	{"PermanentDeadLetter", "a Permanent error is never redelivered and reaches the dead-letter topic with the reason", (*suite).permanentDeadLetter},
	{"MaxAttemptsDeadLetter", "a message failing MaxAttempts times goes to the dead-letter topic, with the attempt count", (*suite).maxAttemptsDeadLetter},
	{"ResubscribeNoLoss", "a subscriber stopped mid-stream with unacked messages loses nothing when started again", (*suite).resubscribeNoLoss},
	{"MaxInFlight", "handlers never run more than Concurrency at once and the in-flight bound holds", (*suite).maxInFlight},
	{"BoundedMemory", "a slow handler over a large backlog keeps the client's memory bounded", (*suite).boundedMemory},
	{"OrderedByKey", "per-key order holds while different keys are handled concurrently", (*suite).orderedByKey},
	{"LeaseExtension", "a handler running longer than AckWait is not redelivered meanwhile", (*suite).leaseExtension},
	{"Replay", "StartOldest reads messages published before the subscription existed", (*suite).replay},
	{"CancelSubscribe", "cancelling Subscribe's ctx returns promptly, even with a handler blocked", (*suite).cancelSubscribe},
	{"ShutdownDrains", "Shutdown lets in-flight handlers finish and their acks land; the messages are not redelivered", (*suite).shutdownDrains},
	{"CloseIdempotent", "Close is idempotent and safe concurrently; Publish, Subscribe and Declare after Close return ErrClosed", (*suite).closeIdempotent},
	{"CancelledPublish", "Publish with a cancelled ctx returns the ctx error", (*suite).cancelledPublish},
	{"InvalidNames", "invalid topic and group names are a clear error (ErrInvalidName)", (*suite).invalidNames},
	{"Limits", "oversize payloads, too many and too large headers are a clear error (ErrLimit) and nothing of the call is sent", (*suite).limits},
	{"BrokerRestart", "after a broker restart publisher and subscriber reconnect on their own and nothing is lost", (*suite).brokerRestart},
}

// Run runs every case against the transport h connects to, each as its own
// subtest.
func Run(t *testing.T, h Harness) {
	t.Helper()
	if h.Open == nil {
		t.Fatal("conformance: Harness.Open is required")
	}
	s := &suite{h: h}
	s.defaults()
	c := s.conn(t)
	s.caps = c.Capabilities()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Log(tc.proof)
			tc.run(s, t)
		})
	}
}

func (s *suite) roundTrip(t *testing.T) {
	pub, sub := s.conn(t), s.conn(t)
	topic, group := s.name("rt"), s.name("g")
	o := transport.SubscribeOptions{Group: group}
	s.declare(t, sub, topic, o)

	maxSize := min(s.h.MaxPayloadTested, s.caps.Limits.MaxPayload)
	if maxSize == 0 {
		maxSize = s.h.MaxPayloadTested
	}
	big := make([]byte, maxSize)
	for i := range big {
		big[i] = byte(i * 7)
	}
	want := []*message.Message{
		{ID: "rt-plain", Key: "k1", Payload: []byte("hello")},
		{ID: "rt-empty", Payload: nil},
		{ID: "rt-binary", Key: "ключ-🔑", Payload: []byte{0, 1, 0, 255, 0, '\n', '\r', 0x7f, 0x80, 0}},
		{ID: "rt-headers", Headers: message.Header{
			"x-unicode":                 "héllo wörld ✓ 日本",
			"x-empty":                   "",
			"x-spaces":                  "  leading and trailing  ",
			message.HeaderCorrelationID: "corr-1",
			message.HeaderContentType:   "application/octet-stream",
		}, Payload: []byte("h")},
		{ID: "rt-max", Key: "max", Payload: big},
	}
	if s.caps.Limits.MaxMessage > 0 && len(big) > s.caps.Limits.MaxMessage-64 {
		want[4].Payload = big[:s.caps.Limits.MaxMessage-64]
	}
	// Publish one by one so the maximum-size message is alone in its call.
	for _, m := range want {
		s.publish(t, pub, topic, m)
	}
	col := newCollector()
	r := s.subscribe(t, sub, topic, o, col)
	col.waitDistinct(t, len(want), s.h.Timeout, r)
	got := map[string]*message.Message{}
	for _, m := range col.snapshot() {
		got[m.ID] = m
	}
	for _, w := range want {
		g := got[w.ID]
		if g == nil {
			t.Errorf("message %s not received", w.ID)
			continue
		}
		if g.Key != w.Key {
			t.Errorf("%s: Key = %q, want %q", w.ID, g.Key, w.Key)
		}
		if !bytes.Equal(g.Payload, w.Payload) {
			t.Errorf("%s: payload differs (got %d bytes %q, want %d bytes %q)", w.ID, len(g.Payload), short(string(g.Payload)), len(w.Payload), short(string(w.Payload)))
		}
		for k, v := range w.Headers {
			gv, ok := g.Headers[k]
			if !ok || gv != v {
				t.Errorf("%s: header %q = %q (present %v), want %q", w.ID, k, gv, ok, v)
			}
		}
	}
}

func (s *suite) generatedID(t *testing.T) {
	pub, sub := s.conn(t), s.conn(t)
	topic, group := s.name("id"), s.name("g")
	o := transport.SubscribeOptions{Group: group}
	s.declare(t, sub, topic, o)
	a, b := &message.Message{Payload: []byte("a")}, &message.Message{Payload: []byte("b")}
	s.publish(t, pub, topic, a, b)
	if a.ID == "" || b.ID == "" || a.ID == b.ID {
		t.Fatalf("Publish left IDs %q and %q; want two distinct generated IDs", a.ID, b.ID)
	}
	col := newCollector()
	r := s.subscribe(t, sub, topic, o, col)
	col.waitDistinct(t, 2, s.h.Timeout, r)
	for _, id := range []string{a.ID, b.ID} {
		if col.count(id) == 0 {
			t.Errorf("generated ID %s not seen by the consumer (got %v)", id, ids(col.snapshot()))
		}
	}
}

func (s *suite) receivedFields(t *testing.T) {
	pub, sub := s.conn(t), s.conn(t)
	topic, group := s.name("rf"), s.name("g")
	o := transport.SubscribeOptions{Group: group}
	s.declare(t, sub, topic, o)
	before := time.Now()
	s.publish(t, pub, topic, message.New([]byte("x")))
	col := newCollector()
	r := s.subscribe(t, sub, topic, o, col)
	col.waitDistinct(t, 1, s.h.Timeout, r)
	m := col.snapshot()[0]
	if m.Topic != topic {
		t.Errorf("Topic = %q, want %q", m.Topic, topic)
	}
	if s.caps.AttemptCount && m.Attempt != 1 {
		t.Errorf("Attempt = %d on first delivery, want 1", m.Attempt)
	}
	if s.caps.BrokerTime {
		if m.Time.IsZero() {
			t.Errorf("Time is zero although the transport declares BrokerTime")
		} else if d := m.Time.Sub(before); d < -2*time.Second || d > s.h.Timeout {
			t.Errorf("Time = %v, %v after publish; want close to the publish time", m.Time, d)
		}
	}
}

func (s *suite) declaredGroupRetains(t *testing.T) {
	pub, sub := s.conn(t), s.conn(t)
	topic, group := s.name("dg"), s.name("g")
	o := transport.SubscribeOptions{Group: group}
	s.declare(t, sub, topic, o)
	n := volume(200)
	s.publish(t, pub, topic, numbered("dg", n)...)
	col := newCollector()
	r := s.subscribe(t, sub, topic, o, col)
	col.waitDistinct(t, n, s.h.Timeout, r)
}

func (s *suite) groupsFanOut(t *testing.T) {
	if s.caps.PointToPoint {
		t.Skip("transport declares capability PointToPoint: groups compete for one queue instead of fanning out")
	}
	pub := s.conn(t)
	topic := s.name("fo")
	n := volume(100)
	var cols []*collector
	var rs []*running
	for i := range 2 {
		sub := s.conn(t)
		o := transport.SubscribeOptions{Group: s.name("g" + strconv.Itoa(i))}
		s.declare(t, sub, topic, o)
		col := newCollector()
		cols = append(cols, col)
		rs = append(rs, s.subscribe(t, sub, topic, o, col))
	}
	s.publish(t, pub, topic, numbered("fo", n)...)
	for i, col := range cols {
		col.waitDistinct(t, n, s.h.Timeout, rs[i])
	}
}

func (s *suite) competingConsumers(t *testing.T) {
	pub := s.conn(t)
	topic, group := s.name("cc"), s.name("g")
	o := transport.SubscribeOptions{Group: group}
	const subs = 3
	n := volume(300)
	col := newCollector()
	var per [subs]atomic.Int64
	var rs []*running
	for i := range subs {
		c := s.conn(t)
		if i == 0 {
			s.declare(t, c, topic, o)
		}
		rs = append(rs, s.subscribe(t, c, topic, o, message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			per[i].Add(1)
			return col.Handle(ctx, m)
		})))
	}
	s.settle()
	s.publish(t, pub, topic, numbered("cc", n)...)
	col.waitDistinct(t, n, s.h.Timeout, rs...)
	// Let stragglers show up before counting duplicates.
	time.Sleep(200 * time.Millisecond)
	if tot := col.total(); tot != n {
		t.Errorf("handled %d times for %d messages; want each once when nothing fails", tot, n)
	}
	dist := make([]int64, subs)
	for i := range per {
		dist[i] = per[i].Load()
	}
	t.Logf("messages per subscriber: %v", dist)
}

func (s *suite) noGroup(t *testing.T) {
	pub, sub := s.conn(t), s.conn(t)
	topic := s.name("ng")
	col := newCollector()
	r := s.subscribe(t, sub, topic, transport.SubscribeOptions{}, col)
	// The subscription becomes active asynchronously on some brokers:
	// publish probes until one arrives.
	// A probe published before the subscription is bound may fail on
	// brokers that refuse unroutable messages (RabbitMQ's mandatory
	// flag): that is allowed, the probes go on until one arrives.
	probe := 0
	var lastErr error
	if !eventually(s.h.Timeout, func() bool {
		probe++
		ctx, cancel := context.WithTimeout(context.Background(), s.h.Timeout)
		defer cancel()
		if err := pub.Publish(ctx, topic, message.New([]byte("probe-"+strconv.Itoa(probe)))); err != nil {
			lastErr = err
		}
		return eventually(200*time.Millisecond, func() bool { return col.total() > 0 })
	}) {
		t.Fatalf("a subscription without a group received none of %d probes within %s (last publish error: %v)", probe, s.h.Timeout, lastErr)
	}
	n := volume(50)
	msgs := numbered("ng", n)
	// Probes may still arrive late: count the real messages by ID.
	s.publish(t, pub, topic, msgs...)
	if !eventually(s.h.Timeout, func() bool {
		for _, m := range msgs {
			if col.count(m.ID) == 0 {
				return false
			}
		}
		return true
	}) {
		got := 0
		for _, m := range msgs {
			if col.count(m.ID) > 0 {
				got++
			}
		}
		t.Fatalf("received %d of %d messages published while subscribed; subscription error %v", got, n, r.failedEarly())
	}
}

func (s *suite) topicsIsolated(t *testing.T) {
	pub, sub := s.conn(t), s.conn(t)
	const topics = 8
	n := volume(50)
	var wg sync.WaitGroup
	type tp struct {
		name string
		col  *collector
		r    *running
		o    transport.SubscribeOptions
	}
	tps := make([]*tp, topics)
	for i := range tps {
		x := &tp{name: s.name("ti" + strconv.Itoa(i)), col: newCollector(), o: transport.SubscribeOptions{Group: s.name("g")}}
		s.declare(t, sub, x.name, x.o)
		tps[i] = x
	}
	for _, x := range tps {
		x.r = s.subscribe(t, sub, x.name, x.o, x.col)
	}
	for i, x := range tps {
		wg.Add(1)
		go func() {
			defer wg.Done()
			msgs := make([]*message.Message, n)
			for j := range msgs {
				msgs[j] = message.New([]byte(fmt.Sprintf("%d/%d", i, j)))
				msgs[j].Headers = message.Header{"x-topic": x.name}
			}
			if err := pub.Publish(s.ctx(t), x.name, msgs...); err != nil {
				t.Errorf("Publish(%s): %v", x.name, err)
			}
		}()
	}
	wg.Wait()
	for _, x := range tps {
		x.col.waitDistinct(t, n, s.h.Timeout, x.r)
		for _, m := range x.col.snapshot() {
			if m.Headers["x-topic"] != x.name || m.Topic != x.name {
				t.Errorf("topic %s received a message of %s (Topic %q)", x.name, m.Headers["x-topic"], m.Topic)
			}
		}
	}
}

func (s *suite) concurrentPublishers(t *testing.T) {
	sub := s.conn(t)
	topic, group := s.name("cp"), s.name("g")
	o := transport.SubscribeOptions{Group: group, Concurrency: 4}
	s.declare(t, sub, topic, o)
	const publishers = 8
	per := volume(100)
	pubs := []transport.Conn{s.conn(t), s.conn(t)}
	var wg sync.WaitGroup
	for p := range publishers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := pubs[p%len(pubs)]
			for i := range per {
				if err := c.Publish(s.ctx(t), topic, message.New([]byte(fmt.Sprintf("%d-%d", p, i)))); err != nil {
					t.Errorf("publisher %d: %v", p, err)
					return
				}
			}
		}()
	}
	col := newCollector()
	r := s.subscribe(t, sub, topic, o, col)
	wg.Wait()
	col.waitDistinct(t, publishers*per, s.h.Timeout, r)
	payloads := map[string]bool{}
	for _, m := range col.snapshot() {
		payloads[string(m.Payload)] = true
	}
	if len(payloads) != publishers*per {
		t.Errorf("%d distinct payloads, want %d", len(payloads), publishers*per)
	}
}

func (s *suite) batchPublish(t *testing.T) {
	pub, sub := s.conn(t), s.conn(t)
	topic, group := s.name("bp"), s.name("g")
	o := transport.SubscribeOptions{Group: group}
	s.declare(t, sub, topic, o)
	n := volume(500)
	msgs := numbered("bp", n)
	for i, m := range msgs {
		m.Key = "k" + strconv.Itoa(i%7)
	}
	s.publish(t, pub, topic, msgs...)
	col := newCollector()
	r := s.subscribe(t, sub, topic, o, col)
	col.waitDistinct(t, n, s.h.Timeout, r)
	for _, m := range msgs {
		if col.count(m.ID) == 0 {
			t.Fatalf("message %s of the batch not received", m.ID)
		}
	}
}

func (s *suite) nackRedelivers(t *testing.T) {
	requireCap(t, s.caps.Redelivery, "Redelivery")
	pub, sub := s.conn(t), s.conn(t)
	topic, group := s.name("nk"), s.name("g")
	o := transport.SubscribeOptions{Group: group}
	s.declare(t, sub, topic, o)
	m := message.New([]byte("retry me"))
	s.publish(t, pub, topic, m)
	var mu sync.Mutex
	var attempts []int
	done := make(chan struct{})
	r := s.subscribe(t, sub, topic, o, message.HandlerFunc(func(ctx context.Context, got *message.Message) error {
		mu.Lock()
		defer mu.Unlock()
		attempts = append(attempts, got.Attempt)
		if len(attempts) < 3 {
			return errors.New("transient failure")
		}
		if len(attempts) == 3 {
			close(done)
		}
		return nil
	}))
	select {
	case <-done:
	case <-time.After(s.h.RedeliveryTimeout * 3):
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("handled %d times within %s, want 3 (2 nacks then an ack); subscription error: %v", len(attempts), 3*s.h.RedeliveryTimeout, r.failedEarly())
	}
	mu.Lock()
	defer mu.Unlock()
	if s.caps.AttemptCount {
		for i, a := range attempts[:3] {
			if a != i+1 {
				t.Errorf("attempts seen %v, want [1 2 3]", attempts)
				break
			}
		}
	}
}

func (s *suite) delayedNack(t *testing.T) {
	requireCap(t, s.caps.DelayedNack, "DelayedNack")
	pub, sub := s.conn(t), s.conn(t)
	topic, group := s.name("dn"), s.name("g")
	o := transport.SubscribeOptions{Group: group}
	s.declare(t, sub, topic, o)
	s.publish(t, pub, topic, message.New([]byte("later")))
	const delay = 1500 * time.Millisecond
	var first time.Time
	var n atomic.Int32
	got := make(chan time.Duration, 1)
	s.subscribe(t, sub, topic, o, message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		if n.Add(1) == 1 {
			first = time.Now()
			return message.RetryAfter(errors.New("not yet"), delay)
		}
		select {
		case got <- time.Since(first):
		default:
		}
		return nil
	}))
	select {
	case d := <-got:
		if d < delay {
			t.Fatalf("redelivered after %v, before the %v delay", d, delay)
		}
		t.Logf("redelivered after %v (delay %v)", d, delay)
	case <-time.After(delay + s.h.RedeliveryTimeout):
		t.Fatalf("not redelivered within %v", delay+s.h.RedeliveryTimeout)
	}
}

func (s *suite) handlerPanic(t *testing.T) {
	requireCap(t, s.caps.Redelivery, "Redelivery")
	pub, sub := s.conn(t), s.conn(t)
	topic, group := s.name("hp"), s.name("g")
	o := transport.SubscribeOptions{Group: group}
	s.declare(t, sub, topic, o)
	s.publish(t, pub, topic, message.New([]byte("boom")))
	var n atomic.Int32
	done := make(chan struct{})
	var once sync.Once
	s.subscribe(t, sub, topic, o, message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		if n.Add(1) == 1 {
			panic("handler bug")
		}
		once.Do(func() { close(done) })
		return nil
	}))
	select {
	case <-done:
	case <-time.After(s.h.RedeliveryTimeout * 2):
		t.Fatalf("message not redelivered after the handler panicked (handled %d times)", n.Load())
	}
}

// dlqSetup subscribes a collector to a fresh dead-letter topic.
func (s *suite) dlqSetup(t *testing.T) (string, *collector, *running) {
	c := s.conn(t)
	dlt := s.name("dlq")
	o := transport.SubscribeOptions{Group: s.name("g")}
	s.declare(t, c, dlt, o)
	col := newCollector()
	return dlt, col, s.subscribe(t, c, dlt, o, col)
}

func (s *suite) permanentDeadLetter(t *testing.T) {
	requireCap(t, s.caps.DeadLetter, "DeadLetter")
	dlt, dcol, dr := s.dlqSetup(t)
	pub, sub := s.conn(t), s.conn(t)
	topic, group := s.name("pd"), s.name("g")
	o := transport.SubscribeOptions{Group: group, DeadLetterTopic: dlt}
	s.declare(t, sub, topic, o)
	poison := message.New([]byte("poison"))
	poison.Headers = message.Header{"x-original": "yes"}
	good := message.New([]byte("good"))
	s.publish(t, pub, topic, poison, good)
	var poisonCalls atomic.Int32
	gotGood := make(chan struct{})
	var once sync.Once
	s.subscribe(t, sub, topic, o, message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		if m.ID == poison.ID {
			poisonCalls.Add(1)
			return message.Permanent(errors.New("cannot parse order 42"))
		}
		once.Do(func() { close(gotGood) })
		return nil
	}))
	dcol.waitDistinct(t, 1, s.h.Timeout, dr)
	select {
	case <-gotGood:
	case <-time.After(s.h.Timeout):
		t.Fatal("the good message behind the poison one was not handled")
	}
	d := dcol.snapshot()[0]
	if d.ID != poison.ID || string(d.Payload) != "poison" || d.Headers["x-original"] != "yes" {
		t.Errorf("dead-lettered message = id %s payload %q headers %v; want the original", d.ID, d.Payload, d.Headers)
	}
	if r := d.Headers[message.HeaderDeadLetterReason]; r != "cannot parse order 42" {
		t.Errorf("dead-letter reason header = %q", r)
	}
	if tp := d.Headers[message.HeaderDeadLetterTopic]; tp != topic {
		t.Errorf("dead-letter topic header = %q, want %q", tp, topic)
	}
	// Bounded check that it is not redelivered to the handler.
	time.Sleep(500 * time.Millisecond)
	if c := poisonCalls.Load(); c != 1 {
		t.Errorf("permanently failed message handled %d times, want 1", c)
	}
}

func (s *suite) maxAttemptsDeadLetter(t *testing.T) {
	requireCap(t, s.caps.DeadLetter, "DeadLetter")
	requireCap(t, s.caps.AttemptCount, "AttemptCount")
	requireCap(t, s.caps.Redelivery, "Redelivery")
	dlt, dcol, dr := s.dlqSetup(t)
	pub, sub := s.conn(t), s.conn(t)
	topic, group := s.name("ma"), s.name("g")
	o := transport.SubscribeOptions{Group: group, DeadLetterTopic: dlt, MaxAttempts: 3}
	s.declare(t, sub, topic, o)
	m := message.New([]byte("always fails"))
	s.publish(t, pub, topic, m)
	var calls atomic.Int32
	s.subscribe(t, sub, topic, o, message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		calls.Add(1)
		return fmt.Errorf("attempt %d failed", m.Attempt)
	}))
	dcol.waitDistinct(t, 1, 3*s.h.RedeliveryTimeout, dr)
	d := dcol.snapshot()[0]
	if d.Headers[message.HeaderDeadLetterAttempts] != "3" || d.Headers[message.HeaderDeadLetterReason] != "attempt 3 failed" {
		t.Errorf("dead-letter headers %v; want attempts 3 and reason 'attempt 3 failed'", d.Headers)
	}
	if c := calls.Load(); c != 3 {
		t.Errorf("handled %d times, want exactly 3", c)
	}
}

func (s *suite) resubscribeNoLoss(t *testing.T) {
	pub, sub := s.conn(t), s.conn(t)
	topic, group := s.name("rs"), s.name("g")
	o := transport.SubscribeOptions{Group: group, Concurrency: 4, MaxInFlight: 16}
	s.declare(t, sub, topic, o)
	n := volume(200)
	s.publish(t, pub, topic, numbered("rs", n)...)

	// First subscriber: acks some, then blocks the rest until it is
	// stopped, so messages are in flight and unacked when it goes.
	acked := newCollector()
	var seen atomic.Int32
	release := make(chan struct{})
	r1 := s.subscribe(t, sub, topic, o, message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		if seen.Add(1) <= int32(n/4) {
			return acked.Handle(ctx, m)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-release:
			return errors.New("stopped")
		}
	}))
	if !eventually(s.h.Timeout, func() bool { return seen.Load() > int32(n/4)+2 }) {
		t.Fatalf("first subscriber handled only %d messages", seen.Load())
	}
	r1.stop(t)
	close(release)

	// Second subscriber on a new connection: everything not acked arrives.
	col := newCollector()
	sub2 := s.conn(t)
	r2 := s.subscribe(t, sub2, topic, o, col)
	want := n - acked.distinct()
	if !eventually(s.h.RedeliveryTimeout*2, func() bool { return unionCount(acked, col) >= n }) {
		t.Fatalf("after restart: %d acked before + %d received after of %d (want %d more); subscription error %v", acked.distinct(), col.distinct(), n, want, r2.failedEarly())
	}
}

func unionCount(a, b *collector) int {
	a.mu.Lock()
	ids := maps.Clone(a.ids)
	a.mu.Unlock()
	b.mu.Lock()
	for id := range b.ids {
		ids[id]++
	}
	b.mu.Unlock()
	return len(ids)
}

func (s *suite) maxInFlight(t *testing.T) {
	pub, sub := s.conn(t), s.conn(t)
	topic, group := s.name("mf"), s.name("g")
	const conc = 3
	o := transport.SubscribeOptions{Group: group, Concurrency: conc, MaxInFlight: conc}
	s.declare(t, sub, topic, o)
	n := volume(100)
	s.publish(t, pub, topic, numbered("mf", n)...)
	var cur, peak atomic.Int32
	col := newCollector()
	r := s.subscribe(t, sub, topic, o, message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		c := cur.Add(1)
		for {
			p := peak.Load()
			if c <= p || peak.CompareAndSwap(p, c) {
				break
			}
		}
		time.Sleep(2 * time.Millisecond)
		cur.Add(-1)
		return col.Handle(ctx, m)
	}))
	col.waitDistinct(t, n, s.h.Timeout, r)
	if p := peak.Load(); p > conc {
		t.Errorf("%d handlers ran at once, more than Concurrency %d", p, conc)
	} else if p < 2 {
		t.Logf("peak concurrency %d (of %d allowed)", p, conc)
	}
}

func (s *suite) boundedMemory(t *testing.T) {
	pub, sub := s.conn(t), s.conn(t)
	topic, group := s.name("bm"), s.name("g")
	o := transport.SubscribeOptions{Group: group, MaxInFlight: 4}
	s.declare(t, sub, topic, o)
	// The backlog is not shrunk under -short: brokers fetch whole record
	// batches (Kafka) or fill transport windows (gRPC) whatever the
	// in-flight bound, and below a few MiB that fixed floor, not
	// buffering of the backlog, would decide the case.
	const size = 8 << 10
	n := 1000
	if l := s.caps.Limits.MaxPayload; l > 0 && l < size {
		t.Skipf("MaxPayload %d below the %d-byte test payload", l, size)
	}
	payload := bytes.Repeat([]byte{'m'}, size)
	for i := 0; i < n; i += 100 {
		batch := make([]*message.Message, 0, 100)
		for j := i; j < min(n, i+100); j++ {
			batch = append(batch, message.New(payload))
		}
		s.publish(t, pub, topic, batch...)
	}
	backlog := uint64(n * size)
	heap := func() uint64 {
		runtime.GC()
		var ms runtime.MemStats
		runtime.ReadMemStats(&ms)
		return ms.HeapAlloc
	}
	base := heap()
	var handled atomic.Int32
	release := make(chan struct{})
	r := s.subscribe(t, sub, topic, o, message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		if handled.Add(1) == 1 {
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	}))
	// While the first handler is stuck, the client may prefetch up to its
	// bound; give it time to (wrongly) pull the whole backlog.
	eventually(2*time.Second, func() bool { return false })
	grown := int64(heap()) - int64(base)
	close(release)
	if !eventually(s.h.Timeout, func() bool { return int(handled.Load()) >= n }) {
		t.Fatalf("handled %d of %d after release; subscription error %v", handled.Load(), n, r.failedEarly())
	}
	t.Logf("heap grew by %d bytes while a %d-byte backlog waited behind a stuck handler", grown, backlog)
	if grown > int64(backlog/2) {
		t.Errorf("heap grew by %d bytes with a stuck handler and MaxInFlight 4: the client buffers the backlog (%d bytes)", grown, backlog)
	}
}

func (s *suite) orderedByKey(t *testing.T) {
	requireCap(t, s.caps.OrderedByKey, "OrderedByKey")
	pub, sub := s.conn(t), s.conn(t)
	topic, group := s.name("ok"), s.name("g")
	o := transport.SubscribeOptions{Group: group, Concurrency: 4, MaxInFlight: 16, OrderedByKey: true}
	s.declare(t, sub, topic, o)
	const keys = 5
	per := volume(40)
	var msgs []*message.Message
	for i := range per {
		for k := range keys {
			m := message.New([]byte(strconv.Itoa(i)))
			m.Key = "key-" + strconv.Itoa(k)
			msgs = append(msgs, m)
		}
	}
	s.publish(t, pub, topic, msgs...)
	var mu sync.Mutex
	last := map[string]int{}
	active := map[string]bool{}
	seenID := map[string]bool{}
	var parallel atomic.Int32
	var cur atomic.Int32
	col := newCollector()
	r := s.subscribe(t, sub, topic, o, message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		seq, _ := strconv.Atoi(string(m.Payload))
		mu.Lock()
		if active[m.Key] {
			t.Errorf("key %s handled concurrently", m.Key)
		}
		active[m.Key] = true
		// A redelivered message may repeat; a new one must be next.
		if prev, ok := last[m.Key]; ok && !seenID[m.ID] && seq != prev+1 {
			t.Errorf("key %s: message %d after %d", m.Key, seq, prev)
		}
		seenID[m.ID] = true
		last[m.Key] = seq
		mu.Unlock()
		if c := cur.Add(1); c > 1 {
			parallel.Store(1)
		}
		time.Sleep(time.Millisecond)
		cur.Add(-1)
		mu.Lock()
		active[m.Key] = false
		mu.Unlock()
		return col.Handle(ctx, m)
	}))
	col.waitDistinct(t, len(msgs), s.h.Timeout, r)
	if parallel.Load() == 0 {
		t.Logf("no two keys were handled at the same time (allowed, but no parallelism seen)")
	}
}

func (s *suite) leaseExtension(t *testing.T) {
	requireCap(t, s.caps.LeaseExtension, "LeaseExtension")
	pub, sub := s.conn(t), s.conn(t)
	topic, group := s.name("le"), s.name("g")
	ackWait := s.h.SubscribeOptions.AckWait
	if ackWait == 0 {
		ackWait = 2 * time.Second
	}
	o := transport.SubscribeOptions{Group: group, AckWait: ackWait, Concurrency: 2, MaxInFlight: 2}
	s.declare(t, sub, topic, o)
	m := message.New([]byte("slow"))
	s.publish(t, pub, topic, m)
	var calls atomic.Int32
	done := make(chan struct{})
	s.subscribe(t, sub, topic, o, message.HandlerFunc(func(ctx context.Context, got *message.Message) error {
		if calls.Add(1) > 1 {
			return nil
		}
		select {
		case <-time.After(ackWait*5/2 + 500*time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
		close(done)
		return nil
	}))
	select {
	case <-done:
	case <-time.After(ackWait*5 + s.h.Timeout):
		t.Fatalf("slow handler did not finish")
	}
	if c := calls.Load(); c != 1 {
		t.Errorf("message handled %d times while one handler held it for 2.5×AckWait (%v)", c, ackWait)
	}
}

func (s *suite) replay(t *testing.T) {
	requireCap(t, s.caps.Replay, "Replay")
	pub, sub := s.conn(t), s.conn(t)
	topic := s.name("rp")
	// Make the topic exist with a group so the broker keeps the history.
	s.declare(t, sub, topic, transport.SubscribeOptions{Group: s.name("keep")})
	n := volume(20)
	s.publish(t, pub, topic, numbered("rp", n)...)
	col := newCollector()
	r := s.subscribe(t, sub, topic, transport.SubscribeOptions{Group: s.name("late"), Start: transport.StartOldest}, col)
	col.waitDistinct(t, n, s.h.Timeout, r)
}

func (s *suite) cancelSubscribe(t *testing.T) {
	pub, sub := s.conn(t), s.conn(t)
	topic, group := s.name("cs"), s.name("g")
	o := s.opts(transport.SubscribeOptions{Group: group})
	s.declare(t, sub, topic, o)
	s.publish(t, pub, topic, message.New([]byte("block")))
	ctx, cancel := context.WithCancel(context.Background())
	entered := make(chan struct{}, 1)
	done := make(chan error, 1)
	go func() {
		done <- sub.Subscribe(ctx, topic, message.HandlerFunc(func(hctx context.Context, m *message.Message) error {
			select {
			case entered <- struct{}{}:
			default:
			}
			<-hctx.Done() // a handler that honours its ctx
			return hctx.Err()
		}), o)
	}()
	select {
	case <-entered:
	case <-time.After(s.h.Timeout):
		cancel()
		t.Fatal("handler never ran")
	}
	start := time.Now()
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Subscribe returned %v after cancel, want context.Canceled", err)
		}
		if d := time.Since(start); d > 5*time.Second {
			t.Errorf("Subscribe took %v to return after cancel", d)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Subscribe did not return within 10s of its ctx being cancelled")
	}
}

func (s *suite) shutdownDrains(t *testing.T) {
	pub := s.conn(t)
	c, err := s.h.Open(s.ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	topic, group := s.name("sd"), s.name("g")
	o := transport.SubscribeOptions{Group: group, Concurrency: 2, MaxInFlight: 2}
	s.declare(t, c, topic, o)
	s.publish(t, pub, topic, message.New([]byte("one")), message.New([]byte("two")))
	entered := make(chan string, 2)
	release := make(chan struct{})
	var finished atomic.Int32
	subErr := make(chan error, 1)
	go func() {
		subErr <- c.Subscribe(context.Background(), topic, message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			entered <- m.ID
			<-release
			finished.Add(1)
			return nil
		}), s.opts(o))
	}()
	var handled []string
	for range 2 {
		select {
		case id := <-entered:
			handled = append(handled, id)
		case <-time.After(s.h.Timeout):
			t.Fatalf("handlers did not start (%d of 2)", len(handled))
		}
	}
	shut := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), s.h.Timeout)
		defer cancel()
		shut <- c.Shutdown(ctx)
	}()
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned (%v) while handlers were still running", err)
	case <-time.After(300 * time.Millisecond):
	}
	close(release)
	select {
	case err := <-shut:
		if err != nil {
			t.Fatalf("Shutdown: %v", err)
		}
	case <-time.After(s.h.Timeout):
		t.Fatal("Shutdown did not return after the handlers finished")
	}
	if f := finished.Load(); f != 2 {
		t.Errorf("%d handlers finished before Shutdown returned, want 2", f)
	}
	select {
	case err := <-subErr:
		if !errors.Is(err, transport.ErrClosed) {
			t.Errorf("Subscribe returned %v after Shutdown, want transport.ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("Subscribe did not return after Shutdown")
	}
	// The acks landed: a new subscriber gets the marker, not the two.
	marker := message.New([]byte("marker"))
	s.publish(t, pub, topic, marker)
	sub2 := s.conn(t)
	col := newCollector()
	r := s.subscribe(t, sub2, topic, o, col)
	col.waitDistinct(t, 1, s.h.Timeout, r)
	wait := 1 * time.Second
	if aw := s.h.SubscribeOptions.AckWait; aw > 0 && aw < 5*time.Second {
		wait = aw + time.Second
	}
	time.Sleep(wait)
	for _, id := range handled {
		if col.count(id) > 0 {
			t.Errorf("message %s was handled before Shutdown but delivered again: its ack did not land", id)
		}
	}
}

func (s *suite) closeIdempotent(t *testing.T) {
	c, err := s.h.Open(s.ctx(t))
	if err != nil {
		t.Fatal(err)
	}
	topic := s.name("ci")
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() { defer wg.Done(); _ = c.Close() }()
	}
	wg.Wait()
	if err := c.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := c.Publish(context.Background(), topic, message.New([]byte("x"))); !errors.Is(err, transport.ErrClosed) {
		t.Errorf("Publish after Close = %v, want transport.ErrClosed", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := c.Subscribe(ctx, topic, newCollector(), transport.SubscribeOptions{Group: "g"}); !errors.Is(err, transport.ErrClosed) {
		t.Errorf("Subscribe after Close = %v, want transport.ErrClosed", err)
	}
	if err := c.Declare(ctx, topic, transport.SubscribeOptions{Group: "g"}); !errors.Is(err, transport.ErrClosed) {
		t.Errorf("Declare after Close = %v, want transport.ErrClosed", err)
	}
	if err := c.Shutdown(ctx); err != nil && !errors.Is(err, transport.ErrClosed) {
		t.Errorf("Shutdown after Close = %v", err)
	}
}

func (s *suite) cancelledPublish(t *testing.T) {
	c := s.conn(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := c.Publish(ctx, s.name("cx"), message.New([]byte("x")))
	if err != context.Canceled {
		t.Errorf("Publish with a cancelled ctx = %v (%T), want context.Canceled itself", err, err)
	}
	dctx, dcancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
	defer dcancel()
	if err := c.Publish(dctx, s.name("cx"), message.New([]byte("x"))); err != context.DeadlineExceeded {
		t.Errorf("Publish with an expired ctx = %v, want context.DeadlineExceeded", err)
	}
}

func (s *suite) invalidNames(t *testing.T) {
	c := s.conn(t)
	ctx := s.ctx(t)
	for _, bad := range []string{"", "has space", "star*", "gt>", "slash/x", "-lead", "ünï"} {
		if err := c.Publish(ctx, bad, message.New([]byte("x"))); !errors.Is(err, transport.ErrInvalidName) {
			t.Errorf("Publish to topic %q = %v, want ErrInvalidName", bad, err)
		}
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		if err := c.Subscribe(sctx, bad, newCollector(), transport.SubscribeOptions{Group: "g"}); !errors.Is(err, transport.ErrInvalidName) {
			t.Errorf("Subscribe to topic %q = %v, want ErrInvalidName", bad, err)
		}
		if bad != "" {
			if err := c.Subscribe(sctx, s.name("ok"), newCollector(), transport.SubscribeOptions{Group: bad}); !errors.Is(err, transport.ErrInvalidName) {
				t.Errorf("Subscribe with group %q = %v, want ErrInvalidName", bad, err)
			}
		}
		cancel()
	}
}

func (s *suite) limits(t *testing.T) {
	l := s.caps.Limits
	if l.MaxPayload == 0 && l.MaxHeaders == 0 && l.MaxHeaderBytes == 0 && l.MaxMessage == 0 {
		t.Skip("transport declares no Limits")
	}
	pub, sub := s.conn(t), s.conn(t)
	topic, group := s.name("lm"), s.name("g")
	o := transport.SubscribeOptions{Group: group}
	s.declare(t, sub, topic, o)
	ctx := s.ctx(t)
	check := func(what string, bad *message.Message) {
		t.Helper()
		ok := message.New([]byte("fits"))
		err := pub.Publish(ctx, topic, ok, bad)
		if !errors.Is(err, transport.ErrLimit) {
			t.Errorf("%s: Publish = %v, want an error matching transport.ErrLimit", what, err)
			return
		}
		var le *transport.LimitError
		if !errors.As(err, &le) || le.Index != 1 {
			t.Errorf("%s: error %v should be a *LimitError naming message 1", what, err)
		}
	}
	if l.MaxPayload > 0 && l.MaxPayload <= 64<<20 {
		check("payload over MaxPayload", message.New(make([]byte, l.MaxPayload+1)))
	}
	if l.MaxHeaders > 0 {
		m := message.New([]byte("h"))
		m.Headers = message.Header{}
		for i := range l.MaxHeaders + 1 {
			m.Headers["x-h"+strconv.Itoa(i)] = "v"
		}
		check("too many headers", m)
	}
	if l.MaxHeaderBytes > 0 {
		m := message.New([]byte("h"))
		m.Headers = message.Header{"x-big": string(bytes.Repeat([]byte("v"), l.MaxHeaderBytes+1))}
		check("header over MaxHeaderBytes", m)
	}
	// Nothing of the failed calls was sent: only the marker arrives.
	marker := message.New([]byte("marker"))
	s.publish(t, pub, topic, marker)
	col := newCollector()
	r := s.subscribe(t, sub, topic, o, col)
	col.waitDistinct(t, 1, s.h.Timeout, r)
	time.Sleep(300 * time.Millisecond)
	for _, m := range col.snapshot() {
		if string(m.Payload) == "fits" {
			t.Errorf("a message of a Publish call that failed its limit check was delivered")
		}
	}
}

func (s *suite) brokerRestart(t *testing.T) {
	if s.h.Restart == nil {
		t.Skip("harness cannot restart the broker (Harness.Restart is nil)")
	}
	requireCap(t, s.caps.Persistent, "Persistent")
	pub, sub := s.conn(t), s.conn(t)
	topic, group := s.name("br"), s.name("g")
	o := transport.SubscribeOptions{Group: group, Concurrency: 2}
	s.declare(t, sub, topic, o)
	n := volume(200)
	col := newCollector()
	r := s.subscribe(t, sub, topic, o, col)
	var published []string
	var pmu sync.Mutex
	stop := make(chan struct{})
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		for i := 0; i < n; i++ {
			select {
			case <-stop:
				return
			default:
			}
			m := message.New([]byte("br-" + strconv.Itoa(i)))
			ctx, cancel := context.WithTimeout(context.Background(), s.h.Timeout)
			err := pub.Publish(ctx, topic, m)
			cancel()
			if err == nil {
				pmu.Lock()
				published = append(published, m.ID)
				pmu.Unlock()
			}
			// A failed publish during the outage is allowed: the
			// contract is that success means stored.
			time.Sleep(5 * time.Millisecond)
		}
	}()
	eventually(s.h.Timeout, func() bool { return col.distinct() >= n/4 })
	ctx, cancel := context.WithTimeout(context.Background(), 2*s.h.Timeout)
	if err := s.h.Restart(ctx); err != nil {
		cancel()
		close(stop)
		<-pubDone
		t.Fatalf("Harness.Restart: %v", err)
	}
	cancel()
	<-pubDone
	pmu.Lock()
	want := append([]string(nil), published...)
	pmu.Unlock()
	if len(want) < n/2 {
		t.Errorf("only %d of %d publishes succeeded around the restart", len(want), n)
	}
	if !eventually(3*s.h.Timeout, func() bool {
		col.mu.Lock()
		defer col.mu.Unlock()
		for _, id := range want {
			if col.ids[id] == 0 {
				return false
			}
		}
		return true
	}) {
		missing := 0
		col.mu.Lock()
		for _, id := range want {
			if col.ids[id] == 0 {
				missing++
			}
		}
		col.mu.Unlock()
		t.Fatalf("%d of %d acknowledged publishes never delivered after the broker restart; subscription error %v", missing, len(want), r.failedEarly())
	}
}
