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

func TestRedeliveryGrowingDelay(t *testing.T) {
	h := middleware.Redelivery(middleware.RedeliveryOptions{Mode: middleware.RedeliveryNack, InitialDelay: time.Second, MaxDelay: 10 * time.Second})(
		message.HandlerFunc(func(context.Context, *message.Message) error { return errBoom }))
	for attempt, cp := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 4: 8 * time.Second, 5: 10 * time.Second, 9: 10 * time.Second} {
		for range 20 {
			m := msg("a")
			m.Attempt = attempt
			err := h.Handle(t.Context(), m)
			d, ok := message.RetryDelay(err)
			if !ok || !errors.Is(err, errBoom) || d < cp/2 || d > cp {
				t.Fatalf("attempt %d: err %v delay %v, want boom with a delay in [%v, %v]", attempt, err, d, cp/2, cp)
			}
		}
	}
}

func TestRedeliveryPassesPermanentAndSuccess(t *testing.T) {
	for _, want := range []error{nil, message.Permanent(errBoom)} {
		h := middleware.Redelivery(middleware.RedeliveryOptions{Mode: middleware.RedeliveryNack})(
			message.HandlerFunc(func(context.Context, *message.Message) error { return want }))
		err := h.Handle(t.Context(), msg("a"))
		if _, delayed := message.RetryDelay(err); err != want || delayed {
			t.Fatalf("got %v, want %v unchanged", err, want)
		}
	}
}

func TestRedeliveryKeepsAskedDelay(t *testing.T) {
	h := middleware.Redelivery(middleware.RedeliveryOptions{Mode: middleware.RedeliveryNack})(
		message.HandlerFunc(func(context.Context, *message.Message) error { return message.RetryAfter(errBoom, 42*time.Second) }))
	if d, _ := message.RetryDelay(h.Handle(t.Context(), msg("a"))); d != 42*time.Second {
		t.Fatalf("delay %v, want the handler's 42s", d)
	}
}

func TestRedeliveryCountsAttemptsItself(t *testing.T) {
	var seen []int
	fail := true
	h := middleware.Redelivery(middleware.RedeliveryOptions{Mode: middleware.RedeliveryNack})(
		message.HandlerFunc(func(_ context.Context, m *message.Message) error {
			seen = append(seen, m.Attempt)
			if fail {
				return errBoom
			}
			return nil
		}))
	deliver := func() error { m := msg("a"); m.Attempt = 0; return h.Handle(t.Context(), m) }
	for range 3 {
		_ = deliver()
	}
	fail = false
	_ = deliver()
	_ = deliver() // after a success the count starts over
	want := []int{1, 2, 3, 4, 1}
	for i := range want {
		if seen[i] != want[i] {
			t.Fatalf("attempts seen %v, want %v", seen, want)
		}
	}
}

func TestRedeliveryHoldFallback(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := middleware.Redelivery(middleware.RedeliveryOptions{InitialDelay: 4 * time.Second})( // Auto outside a Router: hold
			message.HandlerFunc(func(context.Context, *message.Message) error { return errBoom }))
		start := time.Now()
		err := h.Handle(t.Context(), msg("a"))
		if _, delayed := message.RetryDelay(err); delayed || !errors.Is(err, errBoom) {
			t.Fatalf("hold mode returned %v; want the bare error after waiting", err)
		}
		if el := time.Since(start); el < 2*time.Second || el > 4*time.Second {
			t.Fatalf("held %v, want within [2s, 4s]", el)
		}
		// A cancelled context cuts the hold short.
		ctx, cancel := context.WithCancel(t.Context())
		done := make(chan error)
		go func() { done <- h.Handle(ctx, msg("b")) }()
		synctest.Wait()
		start = time.Now()
		cancel()
		if err := <-done; !errors.Is(err, errBoom) || time.Since(start) != 0 {
			t.Fatalf("after cancel: %v after %v", err, time.Since(start))
		}
	})
}
