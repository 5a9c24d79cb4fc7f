package middleware_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"golang.org/x/time/rate"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/middleware"
	"github.com/courierkit/courier/router"
)

func TestTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		slow := message.HandlerFunc(func(ctx context.Context, _ *message.Message) error { <-ctx.Done(); return ctx.Err() })
		h := middleware.Timeout(middleware.TimeoutOptions{Timeout: 2 * time.Second})(slow)
		start := time.Now()
		err := h.Handle(t.Context(), msg("a"))
		var te *middleware.TimeoutError
		if !errors.As(err, &te) || !errors.Is(err, middleware.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) || message.IsPermanent(err) {
			t.Fatalf("err %v", err)
		}
		if time.Since(start) != 2*time.Second {
			t.Fatalf("timed out after %v", time.Since(start))
		}
		// The parent ending is not a timeout.
		ctx, cancel := context.WithCancel(t.Context())
		go func() { time.Sleep(time.Second); cancel() }()
		if err := h.Handle(ctx, msg("b")); !errors.Is(err, context.Canceled) || errors.Is(err, middleware.ErrTimeout) {
			t.Fatalf("parent cancelled: %v", err)
		}
		// Default: 30s.
		start = time.Now()
		_ = middleware.Timeout(middleware.TimeoutOptions{})(slow).Handle(t.Context(), msg("c"))
		if time.Since(start) != 30*time.Second {
			t.Fatalf("default timeout %v", time.Since(start))
		}
	})
}

func TestRecover(t *testing.T) {
	var buf bytes.Buffer
	h := middleware.Recover(middleware.RecoverOptions{Logger: slog.New(slog.NewTextHandler(&buf, nil))})(
		message.HandlerFunc(func(context.Context, *message.Message) error { panicky(); return nil }))
	err := h.Handle(t.Context(), msg("a"))
	var pe *middleware.PanicError
	if !errors.As(err, &pe) || pe.Value != "kaboom" || message.IsPermanent(err) {
		t.Fatalf("err %v", err)
	}
	if !strings.Contains(string(pe.Stack), "panicky") || !strings.Contains(buf.String(), "panicky") {
		t.Fatalf("stack does not name the panicking function:\n%s", pe.Stack)
	}
	perm := middleware.Recover(middleware.RecoverOptions{Permanent: true})(
		message.HandlerFunc(func(context.Context, *message.Message) error { panic(errBoom) }))
	err = perm.Handle(t.Context(), msg("a"))
	if !message.IsPermanent(err) || !errors.Is(err, errBoom) {
		t.Fatalf("permanent panic: %v", err)
	}
}

func panicky() { panic("kaboom") }

func TestRateLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := middleware.RateLimit(middleware.RateLimitOptions{Limit: 10, Burst: 1})(&counter{})
		start := time.Now()
		for range 11 {
			if err := h.Handle(t.Context(), msg("a")); err != nil {
				t.Fatal(err)
			}
		}
		if el := time.Since(start); el < time.Second-time.Millisecond || el > time.Second+time.Millisecond {
			t.Fatalf("11 runs at 10/s burst 1 took %v, want 1s", el)
		}
		// Shared limiter across two routes' middleware.
		lim := rate.NewLimiter(5, 1)
		a := middleware.RateLimit(middleware.RateLimitOptions{Limiter: lim})(&counter{})
		b := middleware.RateLimit(middleware.RateLimitOptions{Limiter: lim})(&counter{})
		start = time.Now()
		for range 5 {
			_ = a.Handle(t.Context(), msg("a"))
			_ = b.Handle(t.Context(), msg("b"))
		}
		if el := time.Since(start); el < 1800*time.Millisecond {
			t.Fatalf("10 runs on a shared 5/s limiter took %v, want ≥ 1.8s", el)
		}
		// A cancelled context returns at once.
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		if err := a.Handle(ctx, msg("x")); !errors.Is(err, context.Canceled) {
			t.Fatal(err)
		}
	})
}

// TestRateLimitEdges: the no-wait path keeps Wait's outcomes.
func TestRateLimitEdges(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		cancelled, cancel := context.WithCancel(t.Context())
		cancel()
		// rate.Inf, private: never waits, still refuses a dead context.
		c := &counter{}
		inf := middleware.RateLimit(middleware.RateLimitOptions{Limit: rate.Inf})(c)
		start := time.Now()
		for range 1000 {
			if err := inf.Handle(t.Context(), msg("a")); err != nil {
				t.Fatal(err)
			}
		}
		if time.Since(start) != 0 || c.count() != 1000 {
			t.Fatalf("rate.Inf: waited %v, %d runs", time.Since(start), c.count())
		}
		if err := inf.Handle(cancelled, msg("a")); !errors.Is(err, context.Canceled) || c.count() != 1000 {
			t.Fatalf("rate.Inf with a cancelled ctx: %v", err)
		}
		// A token available and a dead context: the context wins.
		fresh := middleware.RateLimit(middleware.RateLimitOptions{Limit: 1, Burst: 5})(c)
		if err := fresh.Handle(cancelled, msg("a")); !errors.Is(err, context.Canceled) || c.count() != 1000 {
			t.Fatalf("cancelled ctx with tokens left: %v", err)
		}
		// A shared limiter with burst 0 refuses at once (Wait's error).
		zero := middleware.RateLimit(middleware.RateLimitOptions{Limiter: rate.NewLimiter(10, 0)})(c)
		if err := zero.Handle(t.Context(), msg("a")); err == nil || c.count() != 1000 {
			t.Fatalf("burst 0: %v", err)
		}
		// A shared limiter switched to rate.Inf lets everything through.
		lim := rate.NewLimiter(1, 1)
		shared := middleware.RateLimit(middleware.RateLimitOptions{Limiter: lim})(c)
		lim.SetLimit(rate.Inf)
		start = time.Now()
		for range 10 {
			if err := shared.Handle(t.Context(), msg("a")); err != nil {
				t.Fatal(err)
			}
		}
		if time.Since(start) != 0 {
			t.Fatalf("shared rate.Inf limiter waited %v", time.Since(start))
		}
		// A wait that cannot end before the context's deadline fails at
		// once with the limiter's error.
		slow := middleware.RateLimit(middleware.RateLimitOptions{Limit: 1, Burst: 1})(c)
		_ = slow.Handle(t.Context(), msg("a")) // takes the only token
		dctx, dcancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
		defer dcancel()
		start = time.Now()
		if err := slow.Handle(dctx, msg("a")); err == nil || errors.Is(err, context.DeadlineExceeded) || time.Since(start) != 0 {
			t.Fatalf("wait past the deadline: %v after %v", err, time.Since(start))
		}
	})
}

func TestCorrelationID(t *testing.T) {
	var gotCtx string
	h := middleware.CorrelationID(middleware.CorrelationOptions{})(message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		gotCtx = middleware.CorrelationIDFrom(ctx)
		return nil
	}))
	m := msg("id-1")
	_ = h.Handle(t.Context(), m)
	if m.CorrelationID() != "id-1" || gotCtx != "id-1" {
		t.Fatalf("header %q ctx %q, want the message ID", m.CorrelationID(), gotCtx)
	}
	m2 := msg("id-2")
	m2.Headers = message.Header{message.HeaderCorrelationID: "c-9"}
	_ = h.Handle(t.Context(), m2)
	if m2.CorrelationID() != "c-9" || gotCtx != "c-9" {
		t.Fatalf("existing correlation replaced: %q %q", m2.CorrelationID(), gotCtx)
	}
	custom := middleware.CorrelationID(middleware.CorrelationOptions{New: func(*message.Message) string { return "new" }})(&counter{})
	m3 := msg("id-3")
	_ = custom.Handle(t.Context(), m3)
	if m3.CorrelationID() != "new" {
		t.Fatal(m3.CorrelationID())
	}
}

func TestPropagateCorrelation(t *testing.T) {
	rec := &recorder{}
	pub := middleware.ChainPublisher(rec, middleware.PropagateCorrelation())
	// Inside a delivery: correlation and causation from the consumed message.
	consumed := msg("in-1")
	consumed.Headers = message.Header{message.HeaderCorrelationID: "corr-1"}
	ctx := router.NewContext(t.Context(), consumed, "orders", "g", rec)
	out := message.New([]byte("o"))
	if err := pub.Publish(ctx, "next", out); err != nil {
		t.Fatal(err)
	}
	// From ContextWithCorrelationID.
	out2 := message.New(nil)
	_ = pub.Publish(middleware.ContextWithCorrelationID(t.Context(), "corr-2"), "next", out2)
	// Nothing: starts a chain with its own (generated) ID.
	out3 := &message.Message{}
	_ = pub.Publish(t.Context(), "next", out3)
	got := rec.all()
	if got[0].m.CorrelationID() != "corr-1" || got[0].m.CausationID() != "in-1" {
		t.Fatalf("follow-up: %v", got[0].m.Headers)
	}
	if got[1].m.CorrelationID() != "corr-2" {
		t.Fatalf("ctx correlation: %v", got[1].m.Headers)
	}
	if got[2].m.ID == "" || got[2].m.CorrelationID() != got[2].m.ID {
		t.Fatalf("chain start: id %q headers %v", got[2].m.ID, got[2].m.Headers)
	}
}

func TestValidatePublisher(t *testing.T) {
	rec := &recorder{}
	var order []string
	trace := func(name string) middleware.PublisherMiddleware {
		return func(next transportPublisher) transportPublisher {
			return middleware.DecoratePublisher(next, func(ctx context.Context, topic string, msgs ...*message.Message) error {
				order = append(order, name)
				return next.Publish(ctx, topic, msgs...)
			})
		}
	}
	pub := middleware.ChainPublisher(rec, trace("outer"), middleware.Validate(middleware.ValidJSON), trace("inner"))
	good := &message.Message{Headers: message.Header{message.HeaderContentType: "application/json"}, Payload: []byte(`{"a":1}`)}
	bad := &message.Message{ID: "bad", Headers: message.Header{message.HeaderContentType: "application/cloudevents+json; charset=utf-8"}, Payload: []byte(`{"a":`)}
	other := &message.Message{Headers: message.Header{message.HeaderContentType: "text/plain"}, Payload: []byte(`{"a":`)}
	err := pub.Publish(t.Context(), "t", good, bad)
	var ve *middleware.ValidationError
	if !errors.As(err, &ve) || !errors.Is(err, middleware.ErrInvalid) || ve.Index != 1 || ve.MessageID != "bad" {
		t.Fatalf("err %v", err)
	}
	if len(rec.all()) != 0 {
		t.Fatal("a rejected batch must send nothing")
	}
	if err := pub.Publish(t.Context(), "t", good, other); err != nil || len(rec.all()) != 2 {
		t.Fatalf("valid batch: %v", err)
	}
	if strings.Join(order, ",") != "outer,outer,inner" {
		t.Fatalf("decorator order %v", order)
	}
}

func TestLogging(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
	store := middleware.NewMemoryStore(middleware.MemoryStoreOptions{})
	rec := &recorder{}
	fail := map[string]error{"bad": message.Permanent(errBoom), "flaky": errBoom}
	h := message.Chain(message.HandlerFunc(func(_ context.Context, m *message.Message) error { return fail[m.ID] }),
		middleware.CorrelationID(middleware.CorrelationOptions{}),
		middleware.Logging(middleware.LoggingOptions{Logger: log}),
		middleware.DeadLetter(middleware.DeadLetterOptions{Publisher: rec}),
		middleware.Idempotency(store, middleware.IdempotencyOptions{}),
	)
	for _, id := range []string{"ok", "ok", "bad", "flaky"} {
		m := msg(id)
		_ = h.Handle(router.NewContext(t.Context(), m, "orders", "billing", rec), m)
	}
	var lines []map[string]any
	for _, l := range strings.Split(strings.TrimSpace(buf.String()), "\n") {
		var v map[string]any
		if err := json.Unmarshal([]byte(l), &v); err != nil {
			t.Fatal(err)
		}
		lines = append(lines, v)
	}
	want := []struct{ outcome, level string }{{"acked", "INFO"}, {"duplicate", "INFO"}, {"dead-lettered", "ERROR"}, {"nacked", "WARN"}}
	if len(lines) != len(want) {
		t.Fatalf("%d lines, want %d:\n%s", len(lines), len(want), buf.String())
	}
	for i, w := range want {
		l := lines[i]
		if l["outcome"] != w.outcome || l["level"] != w.level {
			t.Errorf("line %d: outcome %v level %v, want %s %s", i, l["outcome"], l["level"], w.outcome, w.level)
		}
		for _, k := range []string{"message_id", "correlation_id", "topic", "group", "attempt", "duration"} {
			if _, ok := l[k]; !ok {
				t.Errorf("line %d lacks %s: %v", i, k, l)
			}
		}
	}
	if lines[3]["error"] != "boom" || lines[2]["dead_letter_topic"] != "orders.dlq" || lines[0]["correlation_id"] != "ok" {
		t.Fatalf("fields: %v", lines)
	}
}
