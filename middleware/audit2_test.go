package middleware_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"golang.org/x/time/rate"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/middleware"
	"github.com/courierkit/courier/router"
	"github.com/courierkit/courier/transport"
	memtransport "github.com/courierkit/courier/transport/mem"
)

// A delivery context that passes its deadline (a router-level Timeout
// outside the stack, a transport's per-message lease) is not a stop: the
// slow handler's failures count, and the message is dead-lettered after
// MaxAttempts instead of coming back for ever.
func TestOuterDeadlineFailuresCount(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var runs atomic.Int32
		h := message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			runs.Add(1)
			time.Sleep(2 * time.Second) // a slow downstream, then a failure
			return errBoom
		})
		mw := append([]message.Middleware{middleware.Timeout(middleware.TimeoutOptions{Timeout: time.Second})},
			middleware.Recommended(middleware.StackOptions{
				DeadLetter: middleware.DeadLetterOptions{MaxAttempts: 3},
				Retry:      middleware.RetryOptions{MaxAttempts: 1},
				Redelivery: middleware.RedeliveryOptions{InitialDelay: time.Second, MaxDelay: 10 * time.Second},
			})...)
		e := newEnvWith(t, nil, mw, h, transport.SubscribeOptions{})
		e.publish(message.New([]byte("x")))
		<-e.dlq
		e.settled()
		e.stop()
		if runs.Load() != 3 {
			t.Fatalf("%d runs before the dead letter, want 3", runs.Load())
		}
	})
}

// A hard-stopped delivery on a counting transport does not use up an
// attempt: fail, stop, fail, fail is dead-lettered at the third real
// failure (MaxAttempts 3), with attempts 3.
func TestHardStopDoesNotUseAnAttempt(t *testing.T) {
	rec := &recorder{}
	h := middleware.DeadLetter(middleware.DeadLetterOptions{MaxAttempts: 3, Publisher: rec})(
		message.HandlerFunc(func(context.Context, *message.Message) error { return errBoom }))
	call := func(attempt int, stop bool) error {
		m := msg("x")
		m.Attempt = attempt
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		if stop {
			cancel()
		}
		return h.Handle(router.NewContext(ctx, m, "orders", "g", nil), m)
	}
	for i, stop := range []bool{false, true, false} {
		if err := call(i+1, stop); err == nil {
			t.Fatalf("delivery %d was dead-lettered", i+1)
		}
	}
	if err := call(4, false); err != nil {
		t.Fatalf("third real failure: %v, want nil (dead-lettered)", err)
	}
	if got := rec.all(); len(got) != 1 || got[0].m.Headers[message.HeaderDeadLetterAttempts] != "3" {
		t.Fatalf("dead letters %v, want one with attempts 3", got)
	}
}

// A rate-limit token that cannot come before the deadline is a refusal:
// not retried in process, and it does not trip the breaker.
func TestRateLimitDeadlineIsARefusal(t *testing.T) {
	b := middleware.NewBreaker(middleware.BreakerOptions{ConsecutiveFailures: 2})
	var runs atomic.Int32
	h := message.Chain(message.HandlerFunc(func(context.Context, *message.Message) error { runs.Add(1); return nil }),
		b.Middleware(),
		middleware.Retry(middleware.RetryOptions{MaxAttempts: 3, InitialInterval: time.Millisecond}),
		middleware.RateLimit(middleware.RateLimitOptions{Limit: rate.Every(time.Hour), Burst: 1}))
	for i := range 4 {
		m := msg("x")
		ctx, cancel := context.WithTimeout(router.NewContext(context.Background(), m, "orders", "g", nil), time.Minute)
		err := h.Handle(ctx, m)
		cancel()
		if i > 0 && !errors.Is(err, middleware.ErrRateLimited) {
			t.Fatalf("call %d: %v, want ErrRateLimited", i, err)
		}
	}
	if runs.Load() != 1 || b.State().String() != "closed" {
		t.Fatalf("%d runs, breaker %v; want 1 run and the breaker closed", runs.Load(), b.State())
	}
}

// A RetryAfter longer than MaxInterval is not waited out in process: the
// error goes back at once with its delay (the delivery is not held past
// its lease or its idempotency claim).
func TestRetryHandsBackLongRetryAfter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var runs atomic.Int32
		h := middleware.Retry(middleware.RetryOptions{MaxAttempts: 3})(message.HandlerFunc(func(context.Context, *message.Message) error {
			runs.Add(1)
			return message.RetryAfter(errBoom, 10*time.Minute)
		}))
		start := time.Now()
		err := h.Handle(t.Context(), msg("x"))
		if d, ok := message.RetryDelay(err); !ok || d != 10*time.Minute || !errors.Is(err, errBoom) {
			t.Fatalf("err %v (delay %v), want the error with its 10m delay", err, d)
		}
		if took := time.Since(start); took != 0 || runs.Load() != 1 {
			t.Fatalf("held %v and ran %d times, want at once and once", took, runs.Load())
		}
	})
}

// A route without a group is a private subscription: every process (here,
// two routers) receives every message, and a shared idempotency store must
// not make one skip the other's copy.
func TestIdempotencyPrivateSubscriptionsDoNotShare(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mem, err := memtransport.New(t.Context(), memtransport.Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer mem.Close()
		store := middleware.NewMemoryStore(middleware.MemoryStoreOptions{}) // stands for a shared Redis store
		var runs [2]atomic.Int32
		var rs []*router.Router
		var dones []chan error
		for i := range 2 {
			r := router.New(mem, router.Options{Middleware: []message.Middleware{middleware.Idempotency(store, middleware.IdempotencyOptions{})}})
			if err := r.Handle("cache", "", message.HandlerFunc(func(context.Context, *message.Message) error { runs[i].Add(1); return nil })); err != nil {
				t.Fatal(err)
			}
			d := make(chan error, 1)
			go func() { d <- r.Run(context.Background()) }()
			rs, dones = append(rs, r), append(dones, d)
		}
		synctest.Wait()
		m := message.New([]byte("invalidate"))
		for range 2 { // the second copy of one ID is a duplicate for each subscriber
			if err := mem.Publish(context.Background(), "cache", m.Copy()); err != nil {
				t.Fatal(err)
			}
		}
		synctest.Wait()
		for i, r := range rs {
			_ = r.Shutdown(context.Background())
			<-dones[i]
		}
		if runs[0].Load() != 1 || runs[1].Load() != 1 {
			t.Fatalf("runs %d and %d, want each subscriber to run the message once", runs[0].Load(), runs[1].Load())
		}
	})
}
