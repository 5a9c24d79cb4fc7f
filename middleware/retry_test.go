package middleware_test

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/middleware"
)

func TestRetryRecoversTransientFailure(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := &counter{n: 2, err: errBoom}
		var waits []time.Duration
		r := middleware.Retry(middleware.RetryOptions{
			OnRetry: func(_ context.Context, _ *message.Message, attempt int, err error, wait time.Duration) {
				if !errors.Is(err, errBoom) {
					t.Errorf("OnRetry err = %v", err)
				}
				waits = append(waits, wait)
			},
		})(h)
		start := time.Now()
		if err := r.Handle(t.Context(), msg("a")); err != nil {
			t.Fatalf("Handle = %v, want nil after retries", err)
		}
		if h.count() != 3 {
			t.Fatalf("handler ran %d times, want 3", h.count())
		}
		if len(waits) != 2 {
			t.Fatalf("waits = %v, want 2", waits)
		}
		// Full jitter: each wait within [0, cap], caps 100ms then 200ms.
		for i, cp := range []time.Duration{100 * time.Millisecond, 200 * time.Millisecond} {
			if waits[i] < 0 || waits[i] > cp {
				t.Fatalf("wait %d = %v, want within [0, %v]", i, waits[i], cp)
			}
		}
		if el := time.Since(start); el != waits[0]+waits[1] {
			t.Fatalf("elapsed %v, want the waits' sum %v", el, waits[0]+waits[1])
		}
	})
}

func TestRetryFullJitterSpreads(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		seen := map[time.Duration]bool{}
		var lo, hi int
		r := middleware.Retry(middleware.RetryOptions{
			MaxAttempts: 2, InitialInterval: time.Second,
			OnRetry: func(_ context.Context, _ *message.Message, _ int, _ error, w time.Duration) {
				seen[w] = true
				if w < 500*time.Millisecond {
					lo++
				} else {
					hi++
				}
				if w > time.Second {
					t.Errorf("wait %v above the 1s cap", w)
				}
			},
		})(message.HandlerFunc(func(context.Context, *message.Message) error { return errBoom }))
		for range 200 {
			_ = r.Handle(t.Context(), msg("a"))
		}
		if len(seen) < 150 || lo < 50 || hi < 50 {
			t.Fatalf("waits not spread over [0,1s]: %d distinct, %d below 500ms, %d above", len(seen), lo, hi)
		}
	})
}

func TestRetryExhausted(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := &counter{n: 100, err: errBoom}
		err := middleware.Retry(middleware.RetryOptions{MaxAttempts: 4})(h).Handle(t.Context(), msg("a"))
		if !errors.Is(err, errBoom) || h.count() != 4 {
			t.Fatalf("err %v after %d runs, want boom after 4", err, h.count())
		}
	})
}

func TestRetryNeverRetriesPermanent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := &counter{n: 100, err: message.Permanent(errBoom)}
		err := middleware.Retry(middleware.RetryOptions{MaxAttempts: 5})(h).Handle(t.Context(), msg("a"))
		if !message.IsPermanent(err) || h.count() != 1 {
			t.Fatalf("err %v after %d runs, want the permanent error after 1", err, h.count())
		}
	})
}

func TestRetryDoesNotRetryDeferred(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		for _, e := range []error{&middleware.BreakerOpenError{Name: "x"}, &middleware.InProgressError{Key: "k"}} {
			h := &counter{n: 100, err: message.RetryAfter(e, time.Second)}
			_ = middleware.Retry(middleware.RetryOptions{MaxAttempts: 5})(h).Handle(t.Context(), msg("a"))
			if h.count() != 1 {
				t.Fatalf("%v retried %d times", e, h.count())
			}
		}
	})
}

func TestRetryStopsWhenContextEnds(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		h := &counter{n: 100, err: errBoom}
		done := make(chan error)
		go func() {
			done <- middleware.Retry(middleware.RetryOptions{MaxAttempts: 10, InitialInterval: time.Hour, MaxInterval: time.Hour,
				BackOff: nil})(h).Handle(ctx, msg("a"))
		}()
		synctest.Wait()
		cancel()
		err := <-done
		if !errors.Is(err, errBoom) || h.count() != 1 {
			t.Fatalf("err %v after %d runs; want the last handler error after 1 run", err, h.count())
		}
	})
}

func TestRetryMaxElapsedTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := &counter{n: 100, err: errBoom}
		start := time.Now()
		err := middleware.Retry(middleware.RetryOptions{
			MaxAttempts: 100, InitialInterval: time.Second, MaxInterval: time.Second, MaxElapsedTime: 10 * time.Second,
			BackOff: backoffConst(time.Second).policy,
		})(h).Handle(t.Context(), msg("a"))
		if !errors.Is(err, errBoom) {
			t.Fatal(err)
		}
		if el := time.Since(start); el > 10*time.Second {
			t.Fatalf("retried for %v, past MaxElapsedTime 10s", el)
		}
		if h.count() != 11 { // t=0..10s, one per second
			t.Fatalf("ran %d times, want 11", h.count())
		}
	})
}

func TestRetryHonoursRetryAfter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := &counter{n: 1, err: message.RetryAfter(errBoom, 3*time.Second)}
		start := time.Now()
		if err := middleware.Retry(middleware.RetryOptions{})(h).Handle(t.Context(), msg("a")); err != nil {
			t.Fatal(err)
		}
		if el := time.Since(start); el != 3*time.Second {
			t.Fatalf("waited %v, want the 3s the handler asked for", el)
		}
	})
}

// The Timeout-inside-Retry case of ThreeDotsLabs/watermill#467: the first
// attempt times out; the second must get a fresh deadline and succeed.
func TestRetryFreshContextPerAttempt(t *testing.T) {
	for _, name := range []string{"TimeoutInside", "AttemptTimeout"} {
		t.Run(name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				calls := 0
				h := message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
					calls++
					if ctx.Err() != nil {
						t.Errorf("attempt %d started with a done context: %v", calls, ctx.Err())
					}
					dl, ok := ctx.Deadline()
					if !ok || time.Until(dl) != time.Second {
						t.Errorf("attempt %d deadline in %v, want a fresh 1s", calls, time.Until(dl))
					}
					if calls == 1 {
						<-ctx.Done() // overruns its deadline
						return ctx.Err()
					}
					return nil
				})
				var chain message.Handler
				if name == "TimeoutInside" {
					chain = message.Chain(h, middleware.Retry(middleware.RetryOptions{}), middleware.Timeout(middleware.TimeoutOptions{Timeout: time.Second}))
				} else {
					chain = message.Chain(h, middleware.Retry(middleware.RetryOptions{AttemptTimeout: time.Second}))
				}
				if err := chain.Handle(t.Context(), msg("a")); err != nil {
					t.Fatalf("Handle = %v, want success on the second attempt", err)
				}
				if calls != 2 {
					t.Fatalf("calls = %d", calls)
				}
			})
		})
	}
}

// A Timeout outside Retry bounds all attempts together.
func TestTimeoutOutsideRetryBoundsAll(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := &counter{n: 100, err: errBoom}
		chain := message.Chain(h, middleware.Timeout(middleware.TimeoutOptions{Timeout: 5 * time.Second}),
			middleware.Retry(middleware.RetryOptions{MaxAttempts: 100, InitialInterval: time.Second, MaxInterval: time.Second}))
		start := time.Now()
		err := chain.Handle(t.Context(), msg("a"))
		if !errors.Is(err, errBoom) || time.Since(start) > 5*time.Second {
			t.Fatalf("err %v after %v", err, time.Since(start))
		}
	})
}

// Each attempt's context ends when the attempt returns, and the next
// attempt gets a new, live one.
func TestRetryAttemptContextEndsWithAttempt(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var ctxs []context.Context
		h := middleware.Retry(middleware.RetryOptions{})(message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			if ctx.Err() != nil {
				t.Errorf("attempt %d started with a done context", len(ctxs)+1)
			}
			ctxs = append(ctxs, ctx)
			if len(ctxs) < 3 {
				return errBoom
			}
			return nil
		}))
		if err := h.Handle(t.Context(), msg("a")); err != nil {
			t.Fatal(err)
		}
		for i, c := range ctxs {
			select {
			case <-c.Done():
			default:
				t.Fatalf("attempt %d's context still live after it returned", i+1)
			}
			if !errors.Is(c.Err(), context.Canceled) {
				t.Fatalf("attempt %d: %v", i+1, c.Err())
			}
		}
		if t.Context().Err() != nil {
			t.Fatal("the delivery context must not end")
		}
	})
}
