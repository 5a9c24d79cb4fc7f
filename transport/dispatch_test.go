package transport_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// recAcker records how a message was settled.
type recAcker struct {
	mu      sync.Mutex
	acks    int
	nacks   []time.Duration
	terms   []string
	settled chan struct{}
}

func newAcker() *recAcker { return &recAcker{settled: make(chan struct{}, 16)} }

func (a *recAcker) Ack(ctx context.Context) error {
	if ctx.Err() != nil {
		panic("settle context must not be cancelled")
	}
	a.mu.Lock()
	a.acks++
	a.mu.Unlock()
	a.settled <- struct{}{}
	return nil
}

func (a *recAcker) Nack(ctx context.Context, d time.Duration) error {
	a.mu.Lock()
	a.nacks = append(a.nacks, d)
	a.mu.Unlock()
	a.settled <- struct{}{}
	return nil
}

type termAcker struct{ *recAcker }

func (a termAcker) Term(ctx context.Context, reason string) error {
	a.mu.Lock()
	a.terms = append(a.terms, reason)
	a.mu.Unlock()
	a.settled <- struct{}{}
	return nil
}

func TestDispatcherSettles(t *testing.T) {
	var dlq []*message.Message
	var dlqFail atomic.Bool
	newD := func(h message.HandlerFunc, so transport.SubscribeOptions) *transport.Dispatcher {
		return transport.NewDispatcher(context.Background(), h, transport.DispatchOptions{
			Topic: "orders", Group: "billing", Subscribe: so,
			DeadLetter: func(ctx context.Context, topic string, m *message.Message) error {
				if dlqFail.Load() {
					return errors.New("dlq down")
				}
				if topic != "orders-dlq" {
					t.Errorf("dead-letter topic %q", topic)
				}
				dlq = append(dlq, m)
				return nil
			},
		})
	}
	ctx := context.Background()
	errTransient := errors.New("transient")
	cases := []struct {
		name    string
		err     error
		so      transport.SubscribeOptions
		attempt int
		fail    bool
		want    func(a *recAcker) string
	}{
		{"nil acks", nil, transport.SubscribeOptions{}, 1, false, func(a *recAcker) string { return check(a.acks == 1 && len(a.nacks) == 0) }},
		{"error nacks with NackDelay", errTransient, transport.SubscribeOptions{NackDelay: time.Second}, 1, false, func(a *recAcker) string { return check(len(a.nacks) == 1 && a.nacks[0] == time.Second) }},
		{"RetryAfter overrides NackDelay", message.RetryAfter(errTransient, 5*time.Second), transport.SubscribeOptions{NackDelay: time.Second}, 1, false, func(a *recAcker) string { return check(len(a.nacks) == 1 && a.nacks[0] == 5*time.Second) }},
		{"permanent goes to DLT then acks", message.Permanent(errors.New("bad order")), transport.SubscribeOptions{DeadLetterTopic: "orders-dlq"}, 2, false, func(a *recAcker) string {
			return check(a.acks == 1 && len(dlq) == 1 && dlq[0].Headers[message.HeaderDeadLetterReason] == "bad order" && dlq[0].Headers[message.HeaderDeadLetterGroup] == "billing" && dlq[0].Headers[message.HeaderDeadLetterAttempts] == "2")
		}},
		{"max attempts goes to DLT", errTransient, transport.SubscribeOptions{DeadLetterTopic: "orders-dlq", MaxAttempts: 3}, 3, false, func(a *recAcker) string { return check(a.acks == 1 && len(dlq) == 1) }},
		{"below max attempts nacks", errTransient, transport.SubscribeOptions{DeadLetterTopic: "orders-dlq", MaxAttempts: 3}, 2, false, func(a *recAcker) string { return check(len(a.nacks) == 1 && len(dlq) == 0) }},
		{"failed DLT publish nacks", message.Permanent(errTransient), transport.SubscribeOptions{DeadLetterTopic: "orders-dlq"}, 1, true, func(a *recAcker) string { return check(a.acks == 0 && len(a.nacks) == 1) }},
		{"permanent without DLT acks (drop)", message.Permanent(errTransient), transport.SubscribeOptions{}, 1, false, func(a *recAcker) string { return check(a.acks == 1 && len(a.nacks) == 0) }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dlq = nil
			dlqFail.Store(tc.fail)
			d := newD(func(context.Context, *message.Message) error { return tc.err }, tc.so)
			a := newAcker()
			m := &message.Message{ID: "m", Attempt: tc.attempt, Headers: message.Header{"x": "y"}}
			if err := d.Deliver(ctx, m, a); err != nil {
				t.Fatal(err)
			}
			<-a.settled
			if msg := tc.want(a); msg != "" {
				t.Errorf("acks %d nacks %v dlq %d", a.acks, a.nacks, len(dlq))
			}
			if err := d.Stop(ctx); err != nil {
				t.Fatal(err)
			}
		})
	}
	t.Run("permanent without DLT uses Term", func(t *testing.T) {
		d := newD(func(context.Context, *message.Message) error { return message.Permanent(errors.New("nope")) }, transport.SubscribeOptions{})
		a := termAcker{newAcker()}
		d.Deliver(ctx, &message.Message{ID: "m"}, a)
		<-a.settled
		if len(a.terms) != 1 || a.terms[0] != "nope" || a.acks != 0 {
			t.Errorf("terms %v acks %d", a.terms, a.acks)
		}
		d.Stop(ctx)
	})
	t.Run("panic nacks", func(t *testing.T) {
		d := newD(func(context.Context, *message.Message) error { panic("bug") }, transport.SubscribeOptions{})
		a := newAcker()
		d.Deliver(ctx, &message.Message{ID: "m"}, a)
		<-a.settled
		if len(a.nacks) != 1 {
			t.Errorf("nacks %v", a.nacks)
		}
		d.Stop(ctx)
	})
}

func check(ok bool) string {
	if ok {
		return ""
	}
	return "mismatch"
}

// TestDispatcherOrderedByKey: per-key order holds and different keys run in
// parallel, with concurrency never above the limit.
func TestDispatcherOrderedByKey(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const conc = 4
		var mu sync.Mutex
		last := map[string]int{}
		var cur, peak atomic.Int32
		d := transport.NewDispatcher(context.Background(), message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			c := cur.Add(1)
			if c > peak.Load() {
				peak.Store(c)
			}
			seq, _ := strconv.Atoi(string(m.Payload))
			mu.Lock()
			if prev, ok := last[m.Key]; ok && seq != prev+1 {
				t.Errorf("key %s: %d after %d", m.Key, seq, prev)
			}
			last[m.Key] = seq
			mu.Unlock()
			time.Sleep(time.Duration(1+seq%3) * time.Millisecond)
			cur.Add(-1)
			return nil
		}), transport.DispatchOptions{Subscribe: transport.SubscribeOptions{Concurrency: conc, MaxInFlight: 32, OrderedByKey: true}})
		a := &countAcker{}
		for i := range 50 {
			for k := range 6 {
				m := &message.Message{ID: fmt.Sprint(i, k), Key: "k" + strconv.Itoa(k), Payload: []byte(strconv.Itoa(i))}
				if err := d.Deliver(context.Background(), m, a); err != nil {
					t.Fatal(err)
				}
			}
		}
		if err := d.Stop(context.Background()); err != nil {
			t.Fatal(err)
		}
		if a.acks.Load() != 300 {
			t.Errorf("acks %d, want 300", a.acks.Load())
		}
		if p := peak.Load(); p > conc || p < 2 {
			t.Errorf("peak concurrency %d, want 2..%d", p, conc)
		}
	})
}

type countAcker struct{ acks, nacks atomic.Int32 }

func (a *countAcker) Ack(context.Context) error { a.acks.Add(1); return nil }
func (a *countAcker) Nack(context.Context, time.Duration) error {
	a.nacks.Add(1)
	return nil
}

// TestDispatcherMaxInFlightBlocks: Deliver blocks at the bound and returns
// the caller's ctx error, leaving the message untouched.
func TestDispatcherMaxInFlightBlocks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		d := transport.NewDispatcher(context.Background(), message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			<-release
			return nil
		}), transport.DispatchOptions{Subscribe: transport.SubscribeOptions{Concurrency: 2, MaxInFlight: 2}})
		a := &countAcker{}
		for i := range 2 {
			if err := d.Deliver(context.Background(), &message.Message{ID: strconv.Itoa(i)}, a); err != nil {
				t.Fatal(err)
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := d.Deliver(ctx, &message.Message{ID: "third"}, a); err != context.DeadlineExceeded {
			t.Fatalf("third Deliver = %v, want DeadlineExceeded", err)
		}
		close(release)
		d.Stop(context.Background())
		if a.acks.Load() != 2 {
			t.Errorf("acks %d", a.acks.Load())
		}
		if err := d.Deliver(context.Background(), &message.Message{ID: "late"}, a); !errors.Is(err, transport.ErrClosed) {
			t.Errorf("Deliver after Stop = %v", err)
		}
	})
}

// TestDispatcherStop: a graceful Stop waits for running handlers; when its
// ctx ends first it cancels them, still waits for their settlement and
// returns the ctx error.
func TestDispatcherStop(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		d := transport.NewDispatcher(context.Background(), message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			select {
			case <-time.After(2 * time.Second):
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}), transport.DispatchOptions{Subscribe: transport.SubscribeOptions{Concurrency: 2}})
		a := &countAcker{}
		d.Deliver(context.Background(), &message.Message{ID: "1"}, a)
		start := time.Now()
		if err := d.Stop(context.Background()); err != nil || time.Since(start) != 2*time.Second || a.acks.Load() != 1 {
			t.Fatalf("graceful Stop: err %v after %v, acks %d", err, time.Since(start), a.acks.Load())
		}

		d2 := transport.NewDispatcher(context.Background(), message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			<-ctx.Done()
			return ctx.Err()
		}), transport.DispatchOptions{Subscribe: transport.SubscribeOptions{Concurrency: 2}})
		a2 := &countAcker{}
		d2.Deliver(context.Background(), &message.Message{ID: "2"}, a2)
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		defer cancel()
		if err := d2.Stop(ctx); err != context.DeadlineExceeded || a2.nacks.Load() != 1 {
			t.Fatalf("Stop past deadline: err %v nacks %d", err, a2.nacks.Load())
		}
	})
}

// TestDispatcherParentCancel: cancelling the subscription's ctx cancels the
// handlers' ctx; acks still see a live ctx.
func TestDispatcherParentCancel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		parent, cancel := context.WithCancel(context.Background())
		d := transport.NewDispatcher(parent, message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			<-ctx.Done()
			return ctx.Err()
		}), transport.DispatchOptions{})
		a := newAcker()
		go d.Deliver(context.Background(), &message.Message{ID: "1"}, a)
		synctest.Wait()
		cancel()
		<-a.settled
		if len(a.nacks) != 1 {
			t.Errorf("nacks %v", a.nacks)
		}
		d.Stop(context.Background())
	})
}

// TestDispatcherConcurrencyOneAcrossCallers: with Concurrency 1, handlers
// never overlap even when Deliver is called from many goroutines.
// It runs on the real clock: goroutines waiting on the Dispatcher's mutex
// are not durably blocked, so synctest's clock would never advance.
func TestDispatcherConcurrencyOneAcrossCallers(t *testing.T) {
	func() {
		var cur, peak atomic.Int32
		d := transport.NewDispatcher(context.Background(), message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			if c := cur.Add(1); c > peak.Load() {
				peak.Store(c)
			}
			time.Sleep(100 * time.Microsecond)
			cur.Add(-1)
			return nil
		}), transport.DispatchOptions{Subscribe: transport.SubscribeOptions{MaxInFlight: 8}})
		a := &countAcker{}
		var wg sync.WaitGroup
		for g := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := range 10 {
					d.Deliver(context.Background(), &message.Message{ID: fmt.Sprint(g, i)}, a)
				}
			}()
		}
		wg.Wait()
		d.Stop(context.Background())
		if peak.Load() != 1 || a.acks.Load() != 80 {
			t.Fatalf("peak %d acks %d; want 1 and 80", peak.Load(), a.acks.Load())
		}
	}()
}

// TestDeliverBatch: a batch is handled in order and each message settled
// once, with Concurrency 1 (inline, tokens returned per run) and above;
// a batch larger than MaxInFlight goes in runs.
func TestDeliverBatch(t *testing.T) {
	for _, conc := range []int{1, 3} {
		t.Run(strconv.Itoa(conc), func(t *testing.T) {
			var mu sync.Mutex
			var order []string
			d := transport.NewDispatcher(context.Background(), message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
				mu.Lock()
				order = append(order, m.ID)
				mu.Unlock()
				if m.ID == "3" {
					return errors.New("nack me")
				}
				return nil
			}), transport.DispatchOptions{Subscribe: transport.SubscribeOptions{Concurrency: conc, MaxInFlight: 4}})
			a := &countAcker{}
			ms := make([]*message.Message, 10)
			for i := range ms {
				ms[i] = &message.Message{ID: strconv.Itoa(i)}
			}
			var calls []int
			n, err := d.DeliverBatch(context.Background(), len(ms), func(i int) (*message.Message, transport.Acker) {
				calls = append(calls, i)
				return ms[i], a
			})
			if n != 10 || err != nil {
				t.Fatalf("DeliverBatch = %d, %v", n, err)
			}
			if err := d.Stop(context.Background()); err != nil {
				t.Fatal(err)
			}
			if a.acks.Load() != 9 || a.nacks.Load() != 1 {
				t.Errorf("acks %d nacks %d, want 9 and 1", a.acks.Load(), a.nacks.Load())
			}
			for i, c := range calls {
				if c != i {
					t.Fatalf("at called with %v, want 0..9 in order", calls)
				}
			}
			if conc == 1 {
				for i, id := range order {
					if id != strconv.Itoa(i) {
						t.Fatalf("handled %v, want in order", order)
					}
				}
			}
			if n, err := d.DeliverBatch(context.Background(), 2, func(i int) (*message.Message, transport.Acker) {
				t.Error("at called after Stop")
				return ms[i], a
			}); n != 0 || !errors.Is(err, transport.ErrClosed) {
				t.Errorf("DeliverBatch after Stop = %d, %v; want 0, ErrClosed", n, err)
			}
		})
	}
}

// TestDeliverBatchBlocks: with every token held elsewhere a batch waits,
// and returns 0 and the ctx error when ctx ends, leaving its messages
// untouched; tokens returned by a finished batch serve the next.
func TestDeliverBatchBlocks(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		d := transport.NewDispatcher(context.Background(), message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			if m.ID == "slow" {
				<-release
			}
			return nil
		}), transport.DispatchOptions{Subscribe: transport.SubscribeOptions{MaxInFlight: 1}})
		a := &countAcker{}
		go d.Deliver(context.Background(), &message.Message{ID: "slow"}, a)
		synctest.Wait()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		n, err := d.DeliverBatch(ctx, 3, func(i int) (*message.Message, transport.Acker) {
			t.Error("at called without a token")
			return &message.Message{}, a
		})
		if n != 0 || err != context.DeadlineExceeded {
			t.Fatalf("DeliverBatch = %d, %v; want 0, DeadlineExceeded", n, err)
		}
		close(release)
		n, err = d.DeliverBatch(context.Background(), 3, func(i int) (*message.Message, transport.Acker) {
			return &message.Message{ID: strconv.Itoa(i)}, a
		})
		if n != 3 || err != nil {
			t.Fatalf("DeliverBatch = %d, %v", n, err)
		}
		d.Stop(context.Background())
		if a.acks.Load() != 4 {
			t.Errorf("acks %d, want 4", a.acks.Load())
		}
	})
}

type nopAcker struct{}

func (nopAcker) Ack(context.Context) error                 { return nil }
func (nopAcker) Nack(context.Context, time.Duration) error { return nil }

// BenchmarkDispatcher: the per-message cost of the delivery engine with
// Concurrency 1, one Deliver per message (without and with a
// SubscribeOptions.Settled hook) and DeliverBatch of 128.
//
//	go test -run '^$' -bench Dispatcher -count 5 ./transport/
func BenchmarkDispatcher(b *testing.B) {
	h := message.HandlerFunc(func(context.Context, *message.Message) error { return nil })
	m := &message.Message{ID: "x"}
	b.Run("Deliver", func(b *testing.B) {
		d := transport.NewDispatcher(context.Background(), h, transport.DispatchOptions{})
		b.ReportAllocs()
		for b.Loop() {
			d.Deliver(context.Background(), m, nopAcker{})
		}
		d.Stop(context.Background())
	})
	b.Run("DeliverSettledHook", func(b *testing.B) {
		var n int
		d := transport.NewDispatcher(context.Background(), h, transport.DispatchOptions{Subscribe: transport.SubscribeOptions{
			Settled: func(context.Context, *message.Message, transport.Settlement) { n++ },
		}})
		b.ReportAllocs()
		for b.Loop() {
			d.Deliver(context.Background(), m, nopAcker{})
		}
		d.Stop(context.Background())
	})
	b.Run("DeliverBatch128", func(b *testing.B) {
		d := transport.NewDispatcher(context.Background(), h, transport.DispatchOptions{Subscribe: transport.SubscribeOptions{MaxInFlight: 256}})
		at := func(int) (*message.Message, transport.Acker) { return m, nopAcker{} }
		b.ReportAllocs()
		for i := 0; i < b.N; i += 128 {
			d.DeliverBatch(context.Background(), min(128, b.N-i), at)
		}
		d.Stop(context.Background())
	})
}

// TestDispatcherManyWaiters: with every token taken, blocked Deliver calls
// queue; some give up (their ctx ends) and the rest still get through as
// tokens return, none lost.
func TestDispatcherManyWaiters(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		var handled atomic.Int32
		d := transport.NewDispatcher(context.Background(), message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			<-release
			handled.Add(1)
			return nil
		}), transport.DispatchOptions{Subscribe: transport.SubscribeOptions{Concurrency: 2, MaxInFlight: 2}})
		a := &countAcker{}
		for i := range 2 { // take both tokens
			if err := d.Deliver(context.Background(), &message.Message{ID: "first" + strconv.Itoa(i)}, a); err != nil {
				t.Fatal(err)
			}
		}
		var wg sync.WaitGroup
		var gaveUp atomic.Int32
		for i := range 20 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				ctx := context.Background()
				if i%4 == 3 {
					var cancel context.CancelFunc
					ctx, cancel = context.WithTimeout(ctx, time.Second)
					defer cancel()
				}
				if err := d.Deliver(ctx, &message.Message{ID: strconv.Itoa(i)}, a); err != nil {
					gaveUp.Add(1)
				}
			}()
		}
		time.Sleep(2 * time.Second) // the timed waiters give up
		synctest.Wait()
		if gaveUp.Load() != 5 {
			t.Fatalf("%d Deliver calls gave up, want the 5 with a deadline", gaveUp.Load())
		}
		close(release)
		wg.Wait()
		if err := d.Stop(context.Background()); err != nil {
			t.Fatal(err)
		}
		if handled.Load() != 17 || a.acks.Load() != 17 {
			t.Errorf("handled %d, acked %d; want 17", handled.Load(), a.acks.Load())
		}
	})
}
