package transport_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
	"unicode/utf8"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// logAcker appends "<name>:ack" or "<name>:nack" to a shared log.
type logAcker struct {
	name string
	mu   *sync.Mutex
	log  *[]string
}

func (a logAcker) Ack(context.Context) error { a.add("ack"); return nil }
func (a logAcker) Nack(context.Context, time.Duration) error {
	a.add("nack")
	return nil
}
func (a logAcker) add(what string) {
	a.mu.Lock()
	*a.log = append(*a.log, a.name+":"+what)
	a.mu.Unlock()
}

// A hard stop while every worker is busy settles the message that was
// waiting for a worker and the messages of its key queued behind it: each
// is nacked once, and Stop returns.
func TestDispatcherCancelSettlesQueuedKey(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		d := transport.NewDispatcher(context.Background(), message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			if m.Key == "A" || m.Key == "B" {
				<-release // busy, ignoring ctx
			}
			return nil
		}), transport.DispatchOptions{Subscribe: transport.SubscribeOptions{Concurrency: 2, MaxInFlight: 8, OrderedByKey: true}})
		var mu sync.Mutex
		var log []string
		deliver := func(id, key string) error {
			return d.Deliver(context.Background(), &message.Message{ID: id, Key: key}, logAcker{id, &mu, &log})
		}
		for _, k := range []string{"A", "B"} {
			if err := deliver(k, k); err != nil {
				t.Fatal(err)
			}
		}
		synctest.Wait() // both workers busy
		first := make(chan error, 1)
		go func() { first <- deliver("K1", "K") }() // waits for a worker
		synctest.Wait()
		if err := deliver("K2", "K"); err != nil { // queued behind K1
			t.Fatal(err)
		}
		if err := deliver("K3", "K"); err != nil {
			t.Fatal(err)
		}
		d.Cancel()
		if err := <-first; err != nil {
			t.Fatalf("Deliver of K1: %v (it was taken)", err)
		}
		close(release)
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := d.Stop(ctx); err != nil {
			t.Fatalf("Stop: %v: a queued message was never settled", err)
		}
		mu.Lock()
		defer mu.Unlock()
		got := map[string]int{}
		for _, s := range log {
			got[s]++
		}
		for _, want := range []string{"K1:nack", "K2:nack", "K3:nack", "A:ack", "B:ack"} {
			if got[want] != 1 {
				t.Errorf("%s settled %d times; log %v", want, got[want], log)
			}
		}
		if len(log) != 5 {
			t.Errorf("settlements %v, want 5", log)
		}
	})
}

// A hard stop never dead-letters or drops a message for running out of
// attempts: not one that was never started, nor one whose handler returned
// the stop's ctx.Err(). A Permanent error during a stop still is
// dead-lettered. And once the handlers' context ended, Deliver refuses a
// message (ErrClosed, Acker untouched) instead of taking it only to nack
// it: the broker keeps it without counting an attempt.
func TestDispatcherHardStopKeepsLastAttempt(t *testing.T) {
	for _, conc := range []int{1, 2} {
		d := transport.NewDispatcher(context.Background(), message.HandlerFunc(func(context.Context, *message.Message) error {
			t.Error("a handler ran after Cancel")
			return nil
		}), transport.DispatchOptions{Subscribe: transport.SubscribeOptions{Concurrency: conc, MaxAttempts: 3}})
		d.Cancel()
		a := &countAcker{}
		if err := d.Deliver(context.Background(), &message.Message{ID: "x", Attempt: 3}, a); !errors.Is(err, transport.ErrClosed) {
			t.Errorf("conc %d: Deliver after Cancel = %v, want ErrClosed", conc, err)
		}
		n, err := d.DeliverBatch(context.Background(), 2, func(int) (*message.Message, transport.Acker) {
			t.Error("DeliverBatch took a message after Cancel")
			return &message.Message{ID: "y"}, a
		})
		if n != 0 || !errors.Is(err, transport.ErrClosed) {
			t.Errorf("conc %d: DeliverBatch after Cancel = %d, %v; want 0, ErrClosed", conc, n, err)
		}
		if a.acks.Load()+a.nacks.Load() != 0 {
			t.Errorf("conc %d: a refused message was settled", conc)
		}
		_ = d.Stop(context.Background())
	}

	// Taken but never started: a message waiting for a busy worker when
	// the hard stop comes, on its last attempt, with a dead-letter topic.
	synctest.Test(t, func(t *testing.T) {
		release := make(chan struct{})
		var dead atomic.Int32
		var mu sync.Mutex
		var outcomes []transport.Outcome
		d := transport.NewDispatcher(context.Background(), message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			if m.ID == "busy" {
				<-release
				return nil
			}
			t.Errorf("%s ran after the hard stop", m.ID)
			return nil
		}), transport.DispatchOptions{
			Subscribe: transport.SubscribeOptions{Concurrency: 2, MaxAttempts: 3, DeadLetterTopic: "jobs.dlq",
				Settled: func(_ context.Context, m *message.Message, s transport.Settlement) {
					mu.Lock()
					outcomes = append(outcomes, s.Outcome)
					mu.Unlock()
				}},
			DeadLetter: func(context.Context, string, *message.Message) error { dead.Add(1); return nil },
		})
		for range 2 {
			if err := d.Deliver(context.Background(), &message.Message{ID: "busy"}, &countAcker{}); err != nil {
				t.Fatal(err)
			}
		}
		synctest.Wait()
		a := &countAcker{}
		taken := make(chan error, 1)
		go func() { taken <- d.Deliver(context.Background(), &message.Message{ID: "last", Attempt: 3}, a) }()
		synctest.Wait() // waiting for a worker
		d.Cancel()
		if err := <-taken; err != nil {
			t.Fatalf("Deliver: %v (it was taken before the stop)", err)
		}
		close(release)
		_ = d.Stop(context.Background())
		if a.nacks.Load() != 1 || a.acks.Load() != 0 || dead.Load() != 0 {
			t.Errorf("never-started last attempt: %d acks, %d nacks, %d dead letters; want one nack", a.acks.Load(), a.nacks.Load(), dead.Load())
		}
	})

	// The handler returns the stop's ctx.Err() on the last attempt: nacked.
	// A Permanent error in the same situation: dead-lettered.
	for _, perm := range []bool{false, true} {
		var dead atomic.Int32
		started := make(chan struct{})
		d := transport.NewDispatcher(context.Background(), message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			close(started)
			<-ctx.Done()
			if perm {
				return message.Permanent(errors.New("poison"))
			}
			return ctx.Err()
		}), transport.DispatchOptions{
			Subscribe:  transport.SubscribeOptions{MaxAttempts: 3, DeadLetterTopic: "jobs.dlq"},
			DeadLetter: func(context.Context, string, *message.Message) error { dead.Add(1); return nil },
		})
		a := &countAcker{}
		done := make(chan error, 1)
		go func() { done <- d.Deliver(context.Background(), &message.Message{ID: "y", Attempt: 3}, a) }()
		<-started
		d.Cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		_ = d.Stop(context.Background())
		if perm && (dead.Load() != 1 || a.acks.Load() != 1) {
			t.Errorf("Permanent during a stop: %d dead letters, %d acks; want it dead-lettered", dead.Load(), a.acks.Load())
		}
		if !perm && (dead.Load() != 0 || a.nacks.Load() != 1) {
			t.Errorf("ctx.Err() during a stop on the last attempt: %d dead letters, %d nacks; want a nack", dead.Load(), a.nacks.Load())
		}
	}
}

// panicAcker panics on its first Ack.
type panicAcker struct{ n atomic.Int32 }

func (a *panicAcker) Ack(context.Context) error {
	if a.n.Add(1) == 1 {
		panic("ack failed badly")
	}
	return nil
}
func (a *panicAcker) Nack(context.Context, time.Duration) error { return nil }

// An Acker that panics while settling (Concurrency 1, in the caller's
// goroutine) does not leave the Dispatcher's turn held: the next Deliver
// runs.
func TestDispatcherInlineTurnAfterSettlePanic(t *testing.T) {
	// Real time, not synctest: a goroutine blocked on a mutex is not
	// durably blocked, so a bubble would hang instead of failing.
	d := transport.NewDispatcher(context.Background(), message.HandlerFunc(func(context.Context, *message.Message) error { return nil }),
		transport.DispatchOptions{})
	a := &panicAcker{}
	func() {
		defer func() {
			if recover() == nil {
				t.Error("the Acker's panic did not reach the caller")
			}
		}()
		_ = d.Deliver(context.Background(), &message.Message{ID: "1"}, a)
	}()
	done := make(chan error, 1)
	go func() { done <- d.Deliver(context.Background(), &message.Message{ID: "2"}, a) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the next Deliver is still blocked after 10s: the turn is held")
	}
	if err := d.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// The dead-letter reason is valid UTF-8, cut on a character boundary.
func TestDeadLetterReasonUTF8(t *testing.T) {
	for _, cause := range []string{
		strings.Repeat("a", 1023) + "é and more",
		strings.Repeat("€", 400),
		"bad \xff\xfe bytes",
	} {
		dm := transport.DeadLetterMessage(&message.Message{ID: "1"}, "t", "g", errors.New(cause))
		r := dm.Headers[message.HeaderDeadLetterReason]
		if !utf8.ValidString(r) || len(r) > 1024 || r == "" {
			t.Errorf("reason of %d bytes: %d bytes, valid UTF-8 %v", len(cause), len(r), utf8.ValidString(r))
		}
		if utf8.ValidString(cause) && len(cause) <= 1024 && r != cause {
			t.Errorf("short valid reason changed: %q", r)
		}
	}
}

// With Concurrency 1, a batch whose ctx ends mid-run (a revoked Kafka
// partition) starts no further handler: DeliverBatch returns how many it
// took and ctx's error, and the rest are untouched for the caller.
func TestDeliverBatchStopsWhenCtxEnds(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var ran []string
	d := transport.NewDispatcher(context.Background(), message.HandlerFunc(func(_ context.Context, m *message.Message) error {
		ran = append(ran, m.ID)
		if m.ID == "2" {
			cancel() // revoked while the third message runs
		}
		return nil
	}), transport.DispatchOptions{Subscribe: transport.SubscribeOptions{MaxInFlight: 16}})
	a := &countAcker{}
	n, err := d.DeliverBatch(ctx, 8, func(i int) (*message.Message, transport.Acker) {
		return &message.Message{ID: strconv.Itoa(i)}, a
	})
	if n != 3 || !errors.Is(err, context.Canceled) {
		t.Fatalf("DeliverBatch = %d, %v; want 3 taken and context.Canceled", n, err)
	}
	if len(ran) != 3 || a.acks.Load() != 3 || a.nacks.Load() != 0 {
		t.Fatalf("ran %v, %d acks, %d nacks; want 3 run and acked", ran, a.acks.Load(), a.nacks.Load())
	}
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	if err := d.Stop(sctx); err != nil {
		t.Fatalf("Stop: %v (jobs of the untaken messages leaked)", err)
	}
}
