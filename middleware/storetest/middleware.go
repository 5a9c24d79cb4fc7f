package storetest

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/middleware"
)

// middlewareCases are the cases that run the store under the Idempotency
// middleware: what a handler sees, not only what the store answers.
func (s *suite) middlewareCases() []suiteCase {
	return []suiteCase{
		{"MiddlewareConcurrentDeliveries", "concurrent deliveries of one message through Idempotency run the handler once; the others get ErrInProgress with a delay, and once the first is done a redelivery is skipped", s.mwConcurrent},
		{"MiddlewareFailureReleases", "a handler failure (error or panic) releases the claim, so a redelivery runs the handler again; after success a redelivery is skipped", s.mwFailureReleases},
	}
}

type suiteCase struct {
	name, what string
	f          func(*testing.T)
}

// opaque hides the store's concrete type, so Idempotency takes the path
// of an arbitrary IdempotencyStore (it has a fast path for exactly
// *middleware.MemoryStore).
type opaque struct{ middleware.IdempotencyStore }

// forStores runs f on the store under test as the middleware may see it:
// as is, then, when that changes the middleware's path, on another store
// behind an interface wrapper. Not subtests: Harness.Run may run the case
// in a synctest bubble, where t.Run is not allowed.
func (s *suite) forStores(t *testing.T, f func(t *testing.T, st middleware.IdempotencyStore)) {
	st := s.h.New(t)
	f(t, st)
	if _, ok := st.(*middleware.MemoryStore); ok && !t.Failed() {
		t.Log("again through an interface wrapper (the middleware's path for any other store)")
		f(t, opaque{s.h.New(t)})
	}
}

const inProgressDelay = 7 * time.Second

func idem(st middleware.IdempotencyStore) message.Middleware {
	return middleware.Idempotency(st, middleware.IdempotencyOptions{
		Scope:           "storetest",
		ClaimTTL:        long,
		Retention:       long,
		InProgressDelay: inProgressDelay,
	})
}

func delivery(id string, attempt int) *message.Message {
	return &message.Message{ID: id, Topic: "storetest", Attempt: attempt, Payload: []byte("p")}
}

func (s *suite) mwConcurrent(t *testing.T) { s.forStores(t, mwConcurrent) }

// mwConcurrent delivers one message from several goroutines at once. The
// handler that runs holds its claim until every other delivery returned,
// so each of those must have been refused as in progress (none can be
// Processed yet). A second handler run (a store that let two claims win)
// does not wait, so the case fails rather than hangs.
func mwConcurrent(t *testing.T, st middleware.IdempotencyStore) {
	const racers = 6
	var runs atomic.Int32
	othersDone := make(chan struct{})
	var returned atomic.Int32
	h := message.Chain(message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		if runs.Add(1) > 1 {
			return nil
		}
		select {
		case <-othersDone:
		case <-ctx.Done():
			return ctx.Err()
		}
		return nil
	}), idem(st))

	start := make(chan struct{})
	errs := make([]error, racers)
	var wg sync.WaitGroup
	for i := range racers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			errs[i] = h.Handle(t.Context(), delivery("m-concurrent", 1))
			// The racer that ran the handler cannot return before the
			// others; when racers-1 have returned, release it.
			if returned.Add(1) == racers-1 {
				close(othersDone)
			}
		}()
	}
	close(start)
	wg.Wait()

	if n := runs.Load(); n != 1 {
		t.Fatalf("handler ran %d times for %d concurrent deliveries of one message, want 1", n, racers)
	}
	var ok, inProgress int
	for i, err := range errs {
		switch {
		case err == nil:
			ok++
		case errors.Is(err, middleware.ErrInProgress):
			inProgress++
			if d, has := message.RetryDelay(err); !has || d != inProgressDelay {
				t.Errorf("delivery %d: in-progress error %v carries delay %v (set %v), want InProgressDelay %v", i, err, d, has, inProgressDelay)
			}
			var ipe *middleware.InProgressError
			if !errors.As(err, &ipe) || ipe.Key != "storetest/m-concurrent" {
				t.Errorf("delivery %d: error %v, want an *InProgressError for key storetest/m-concurrent", i, err)
			}
		default:
			t.Errorf("delivery %d: unexpected error %v", i, err)
		}
	}
	if ok != 1 || inProgress != racers-1 {
		t.Fatalf("%d deliveries succeeded and %d were refused as in progress, want 1 and %d", ok, inProgress, racers-1)
	}

	// The refused deliveries come back after the first one finished: each
	// is skipped as a duplicate.
	for i := range racers - 1 {
		if err := h.Handle(t.Context(), delivery("m-concurrent", 2)); err != nil {
			t.Fatalf("redelivery %d after the first delivery succeeded: %v, want nil (skipped)", i, err)
		}
	}
	if n := runs.Load(); n != 1 {
		t.Fatalf("handler ran %d times after redeliveries of a processed message, want 1", n)
	}
	// Another message is independent.
	if err := h.Handle(t.Context(), delivery("m-other", 1)); err != nil {
		t.Fatalf("another message: %v", err)
	}
	if n := runs.Load(); n != 2 {
		t.Fatalf("handler ran %d times in all, want 2 (one per message)", n)
	}
}

func (s *suite) mwFailureReleases(t *testing.T) { s.forStores(t, mwFailureReleases) }

var errHandler = errors.New("storetest: handler failure")

func mwFailureReleases(t *testing.T, st middleware.IdempotencyStore) {
	var runs atomic.Int32
	// Attempt 1 fails, attempt 2 panics, attempt 3 succeeds.
	h := message.Chain(message.HandlerFunc(func(_ context.Context, m *message.Message) error {
		runs.Add(1)
		switch m.Attempt {
		case 1:
			return errHandler
		case 2:
			panic("storetest: handler panic")
		}
		return nil
	}), idem(st))

	if err := h.Handle(t.Context(), delivery("m-fail", 1)); !errors.Is(err, errHandler) {
		t.Fatalf("failing delivery: %v, want the handler's error", err)
	}
	if n := runs.Load(); n != 1 {
		t.Fatalf("handler ran %d times, want 1", n)
	}

	// The failure released the claim: the redelivery runs the handler,
	// which panics; the panic goes on through Idempotency.
	panicked, err := handlePanics(t.Context(), h, delivery("m-fail", 2))
	if !panicked {
		t.Fatalf("redelivery after a failure returned %v; the handler's panic did not reach the caller (runs=%d)", err, runs.Load())
	}
	if n := runs.Load(); n != 2 {
		t.Fatalf("handler ran %d times, want 2: a failure must release the claim", n)
	}

	// The panic released the claim too.
	if err := h.Handle(t.Context(), delivery("m-fail", 3)); err != nil {
		t.Fatalf("redelivery after a panic: %v, want success", err)
	}
	if n := runs.Load(); n != 3 {
		t.Fatalf("handler ran %d times, want 3: a panic must release the claim", n)
	}

	// Processed: later deliveries are acked without running the handler.
	for attempt := 4; attempt < 6; attempt++ {
		if err := h.Handle(t.Context(), delivery("m-fail", attempt)); err != nil {
			t.Fatalf("redelivery %d after success: %v, want nil (skipped)", attempt, err)
		}
	}
	if n := runs.Load(); n != 3 {
		t.Fatalf("handler ran %d times after the message was processed, want 3", n)
	}
}

// handlePanics calls h and reports whether it panicked.
func handlePanics(ctx context.Context, h message.Handler, m *message.Message) (panicked bool, err error) {
	defer func() {
		if r := recover(); r != nil {
			panicked = true
		}
	}()
	return false, h.Handle(ctx, m)
}
