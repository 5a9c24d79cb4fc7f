package middleware_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/middleware"
)

type transitions struct {
	mu  sync.Mutex
	got []string
}

func (tr *transitions) hook(name string, from, to gobreaker.State) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	tr.got = append(tr.got, from.String()+"->"+to.String())
}

func (tr *transitions) list() []string {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	return append([]string(nil), tr.got...)
}

func TestBreakerOpensHalfOpensCloses(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var tr transitions
		b := middleware.NewBreaker(middleware.BreakerOptions{Name: "pay", ConsecutiveFailures: 3, Timeout: 10 * time.Second, MaxRequests: 2, OnStateChange: tr.hook})
		failing := true
		calls := 0
		h := b.Middleware()(message.HandlerFunc(func(context.Context, *message.Message) error {
			calls++
			if failing {
				return errBoom
			}
			return nil
		}))
		ctx := t.Context()
		for i := range 3 {
			if err := h.Handle(ctx, msg("a")); !errors.Is(err, errBoom) {
				t.Fatalf("call %d: %v", i, err)
			}
		}
		if b.State() != gobreaker.StateOpen {
			t.Fatalf("state %v after 3 failures, want open", b.State())
		}
		if err := b.Check(ctx); err == nil {
			t.Fatal("Check passes while open")
		}
		// Open: not run, refused with a delay.
		err := h.Handle(ctx, msg("b"))
		if !errors.Is(err, middleware.ErrBreakerOpen) || calls != 3 {
			t.Fatalf("open breaker: err %v, calls %d", err, calls)
		}
		if d, ok := message.RetryDelay(err); !ok || d != 10*time.Second {
			t.Fatalf("open breaker delay %v %v, want 10s", d, ok)
		}
		// Half-open after Timeout; a failing probe reopens it.
		time.Sleep(10*time.Second + time.Millisecond)
		if b.State() != gobreaker.StateHalfOpen {
			t.Fatalf("state %v after timeout, want half-open", b.State())
		}
		if err := h.Handle(ctx, msg("c")); !errors.Is(err, errBoom) {
			t.Fatal(err)
		}
		if b.State() != gobreaker.StateOpen {
			t.Fatalf("failed probe: state %v, want open", b.State())
		}
		// Half-open again; two successful probes close it.
		time.Sleep(10*time.Second + time.Millisecond)
		failing = false
		for range 2 {
			if err := h.Handle(ctx, msg("d")); err != nil {
				t.Fatal(err)
			}
		}
		if b.State() != gobreaker.StateClosed || b.Check(ctx) != nil {
			t.Fatalf("state %v after 2 good probes, want closed", b.State())
		}
		want := []string{"closed->open", "open->half-open", "half-open->open", "open->half-open", "half-open->closed"}
		if got := tr.list(); len(got) != len(want) {
			t.Fatalf("transitions %v, want %v", got, want)
		} else {
			for i := range want {
				if got[i] != want[i] {
					t.Fatalf("transitions %v, want %v", got, want)
				}
			}
		}
	})
}

func TestBreakerHalfOpenLimitsProbes(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := middleware.NewBreaker(middleware.BreakerOptions{ConsecutiveFailures: 1, Timeout: time.Second})
		release := make(chan struct{})
		h := b.Middleware()(message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			if m.ID == "fail" {
				return errBoom
			}
			<-release
			return nil
		}))
		_ = h.Handle(t.Context(), msg("fail"))
		time.Sleep(2 * time.Second)
		probe := make(chan error)
		go func() { probe <- h.Handle(t.Context(), msg("probe")) }()
		synctest.Wait()
		err := h.Handle(t.Context(), msg("other"))
		var boe *middleware.BreakerOpenError
		if !errors.As(err, &boe) || boe.State != gobreaker.StateHalfOpen {
			t.Fatalf("second message while probing: %v, want refused as half-open", err)
		}
		close(release)
		if err := <-probe; err != nil {
			t.Fatal(err)
		}
		if b.State() != gobreaker.StateClosed {
			t.Fatalf("state %v", b.State())
		}
	})
}

func TestBreakerIgnoresCancellationAndPermanent(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := middleware.NewBreaker(middleware.BreakerOptions{ConsecutiveFailures: 2})
		ctx, cancel := context.WithCancel(t.Context())
		h := b.Middleware()(message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			switch m.ID {
			case "perm":
				return message.Permanent(errBoom)
			case "inprog":
				return &middleware.InProgressError{Key: "k"}
			}
			<-ctx.Done()
			return ctx.Err()
		}))
		for range 5 {
			_ = h.Handle(t.Context(), msg("perm"))
			_ = h.Handle(t.Context(), msg("inprog"))
		}
		cancel()
		for range 5 {
			_ = h.Handle(ctx, msg("cancelled"))
		}
		if b.State() != gobreaker.StateClosed || b.Counts().TotalFailures != 0 {
			t.Fatalf("state %v, counts %+v: cancellations and permanent errors must not count", b.State(), b.Counts())
		}
	})
}

func TestBreakerCountsTimeouts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := middleware.NewBreaker(middleware.BreakerOptions{ConsecutiveFailures: 2})
		h := message.Chain(message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			<-ctx.Done()
			return ctx.Err()
		}), b.Middleware(), middleware.Timeout(middleware.TimeoutOptions{Timeout: time.Second}))
		for range 2 {
			if err := h.Handle(t.Context(), msg("slow")); !errors.Is(err, middleware.ErrTimeout) {
				t.Fatal(err)
			}
		}
		if b.State() != gobreaker.StateOpen {
			t.Fatalf("state %v after 2 timeouts, want open", b.State())
		}
	})
}
