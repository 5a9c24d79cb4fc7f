package middleware_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sony/gobreaker/v2"
	"golang.org/x/time/rate"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/middleware"
	"github.com/courierkit/courier/router"
	"github.com/courierkit/courier/transport"
	memtransport "github.com/courierkit/courier/transport/mem"
)

// twoRoutes runs a router with mw as router-level middleware over two
// routes on the mem transport: "a" always fails, "b" always succeeds.
// It publishes n messages to each, waits until both groups are idle (fake
// time) and reports how many runs each handler saw.
func twoRoutes(t *testing.T, mw []message.Middleware, n int) (runsA, runsB int32) {
	t.Helper()
	mem, err := memtransport.New(t.Context(), memtransport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer mem.Close()
	var a, b atomic.Int32
	r := router.New(mem, router.Options{Middleware: mw})
	for _, rt := range []struct {
		topic string
		h     message.HandlerFunc
	}{
		{"a", func(context.Context, *message.Message) error { a.Add(1); return errBoom }},
		{"b", func(context.Context, *message.Message) error { b.Add(1); return nil }},
	} {
		if err := mem.Declare(t.Context(), rt.topic, transport.SubscribeOptions{Group: "g"}); err != nil {
			t.Fatal(err)
		}
		if err := r.Handle(rt.topic, "g", rt.h); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background()) }()
	for i := range n {
		for _, topic := range []string{"a", "b"} {
			if err := mem.Publish(context.Background(), topic, message.New([]byte{byte(i)})); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(time.Second)
		synctest.Wait()
	}
	if err := r.Shutdown(context.Background()); err != nil {
		t.Fatal(err)
	}
	<-done
	return a.Load(), b.Load()
}

// CircuitBreaker as router-level middleware gives each route its own
// breaker: route a's failures open a's breaker only. A shared Breaker
// (NewBreaker) stops both.
func TestCircuitBreakerPerRoute(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		opts := middleware.BreakerOptions{ConsecutiveFailures: 2, Timeout: time.Hour}
		_, b := twoRoutes(t, []message.Middleware{middleware.CircuitBreaker(opts)}, 5)
		if b != 5 {
			t.Fatalf("route b ran %d of 5 messages with a per-route breaker", b)
		}
	})
	synctest.Test(t, func(t *testing.T) {
		shared := middleware.NewBreaker(middleware.BreakerOptions{ConsecutiveFailures: 2, Timeout: time.Hour})
		_, b := twoRoutes(t, []message.Middleware{shared.Middleware()}, 5)
		if shared.State() != gobreaker.StateOpen || b >= 5 {
			t.Fatalf("shared breaker %v, route b ran %d of 5: want open and b refused", shared.State(), b)
		}
	})
	synctest.Test(t, func(t *testing.T) {
		// The recommended stack at router level: per-route breakers too.
		mw := middleware.Recommended(middleware.StackOptions{
			Retry:          middleware.RetryOptions{MaxAttempts: 1},
			BreakerOptions: middleware.BreakerOptions{ConsecutiveFailures: 1, Timeout: time.Hour},
		})
		_, b := twoRoutes(t, mw, 5)
		if b != 5 {
			t.Fatalf("route b ran %d of 5 messages under a router-level Recommended stack", b)
		}
	})
}

// An error IsFailure does not count is neutral: it does not reset the
// consecutive-failure count.
func TestBreakerIsFailureNeutral(t *testing.T) {
	errBusinessRule := errors.New("rejected by a business rule")
	b := middleware.NewBreaker(middleware.BreakerOptions{
		ConsecutiveFailures: 2,
		IsFailure:           func(err error) bool { return !errors.Is(err, errBusinessRule) },
	})
	h := b.Middleware()
	for _, e := range []error{errBoom, errBusinessRule, errBoom} {
		_ = h(message.HandlerFunc(func(context.Context, *message.Message) error { return e })).Handle(t.Context(), msg("x"))
	}
	if b.State() != gobreaker.StateOpen {
		t.Fatalf("breaker %v after failure, neutral error, failure: want open", b.State())
	}
}

// A message waiting for a rate-limit token stops waiting when the router
// drains: it is nacked with ErrDraining (its token given back) and the
// shutdown does not wait for the limiter.
func TestRateLimitStopsOnDrain(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mem, err := memtransport.New(t.Context(), memtransport.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer mem.Close()
		if err := mem.Declare(t.Context(), "jobs", transport.SubscribeOptions{Group: "g"}); err != nil {
			t.Fatal(err)
		}
		var runs atomic.Int32
		var mu sync.Mutex
		var errs []error
		record := func(next message.Handler) message.Handler {
			return message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
				err := next.Handle(ctx, m)
				if err != nil {
					mu.Lock()
					errs = append(errs, err)
					mu.Unlock()
				}
				return err
			})
		}
		lim := middleware.RateLimit(middleware.RateLimitOptions{Limit: rate.Every(time.Hour), Burst: 1})
		r := router.New(mem, router.Options{})
		if err := r.Add(router.Route{Topic: "jobs", Subscribe: transport.SubscribeOptions{Group: "g", Concurrency: 2},
			Middleware: []message.Middleware{record, lim},
			Handler:    message.HandlerFunc(func(context.Context, *message.Message) error { runs.Add(1); return nil })}); err != nil {
			t.Fatal(err)
		}
		done := make(chan error, 1)
		go func() { done <- r.Run(context.Background()) }()
		for range 2 {
			if err := mem.Publish(context.Background(), "jobs", message.New(nil)); err != nil {
				t.Fatal(err)
			}
		}
		synctest.Wait() // one ran, the other waits for a token an hour away
		start := time.Now()
		if err := r.Shutdown(context.Background()); err != nil {
			t.Fatal(err)
		}
		<-done
		if took := time.Since(start); took > time.Second {
			t.Fatalf("shutdown took %v: it waited for the limiter", took)
		}
		mu.Lock()
		defer mu.Unlock()
		if runs.Load() != 1 || len(errs) != 1 || !errors.Is(errs[0], middleware.ErrDraining) {
			t.Fatalf("runs %d, errors %v: want 1 run and one ErrDraining", runs.Load(), errs)
		}
		if l, _ := mem.Lag(context.Background(), "jobs", "g"); l.Pending != 1 {
			t.Fatalf("lag %+v: the refused message must stay in the broker", l)
		}
	})
}

// Done and Release on a store that hangs give up after StoreTimeout; the
// message's outcome stands (acked after success) and the failure is
// logged.
func TestIdempotencyStoreTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var logs bytes.Buffer
		st := &hangingStore{}
		h := middleware.Idempotency(st, middleware.IdempotencyOptions{StoreTimeout: 3 * time.Second,
			Logger: slog.New(slog.NewTextHandler(&logs, nil))})(
			message.HandlerFunc(func(context.Context, *message.Message) error { return nil }))
		start := time.Now()
		if err := h.Handle(t.Context(), msg("a")); err != nil {
			t.Fatalf("handled message: %v, want nil (acked; Done's failure is logged)", err)
		}
		if took := time.Since(start); took != 3*time.Second {
			t.Fatalf("Done gave up after %v, want 3s", took)
		}
		if !strings.Contains(logs.String(), "idempotency done failed") {
			t.Fatalf("log %q", logs.String())
		}
	})
}

// hangingStore claims every key and then never answers Done or Release
// until their context ends.
type hangingStore struct{}

func (*hangingStore) Claim(context.Context, string, string, time.Duration) (middleware.ClaimState, error) {
	return middleware.Claimed, nil
}
func (*hangingStore) Done(ctx context.Context, _, _ string, _ time.Duration) error {
	<-ctx.Done()
	return ctx.Err()
}
func (*hangingStore) Release(ctx context.Context, _, _ string) error {
	<-ctx.Done()
	return ctx.Err()
}
