package middleware_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"testing"
	"testing/synctest"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/middleware"
	"github.com/courierkit/courier/router"
)

func TestDeadLetterAfterMaxAttempts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		pub := &recorder{}
		h := middleware.DeadLetter(middleware.DeadLetterOptions{MaxAttempts: 3, Publisher: pub, Group: "billing"})(
			message.HandlerFunc(func(context.Context, *message.Message) error { return errBoom }))
		start := time.Now()
		for attempt := 1; attempt <= 3; attempt++ {
			m := msg("m1")
			m.Attempt = attempt
			m.Headers = message.Header{"x": "y"}
			err := h.Handle(t.Context(), m)
			if attempt < 3 && !errors.Is(err, errBoom) {
				t.Fatalf("attempt %d: %v, want the error passed through", attempt, err)
			}
			if attempt == 3 && err != nil {
				t.Fatalf("attempt 3: %v, want nil (acked after dead-lettering)", err)
			}
			time.Sleep(time.Minute)
		}
		got := pub.all()
		if len(got) != 1 {
			t.Fatalf("%d dead letters, want 1", len(got))
		}
		d := got[0]
		if d.topic != "orders.dlq" || d.m.ID != "m1" || string(d.m.Payload) != "x" || d.m.Headers["x"] != "y" {
			t.Fatalf("dead letter %q %+v", d.topic, d.m)
		}
		h2 := d.m.Headers
		want := map[string]string{
			message.HeaderDeadLetterReason:          "boom",
			message.HeaderDeadLetterTopic:           "orders",
			message.HeaderDeadLetterGroup:           "billing",
			message.HeaderDeadLetterAttempts:        "3",
			middleware.HeaderDeadLetterFirstFailure: start.UTC().Format(time.RFC3339Nano),
			middleware.HeaderDeadLetterLastFailure:  start.Add(2 * time.Minute).UTC().Format(time.RFC3339Nano),
		}
		for k, v := range want {
			if h2[k] != v {
				t.Errorf("header %s = %q, want %q", k, h2[k], v)
			}
		}
	})
}

func TestDeadLetterPermanentAtOnce(t *testing.T) {
	pub := &recorder{}
	calls := 0
	h := middleware.DeadLetter(middleware.DeadLetterOptions{Publisher: pub, Topic: "poison"})(
		message.HandlerFunc(func(_ context.Context, m *message.Message) error {
			calls++
			_, err := message.Decode[struct{ N int }](m)
			return err
		}))
	m := msg("bad")
	m.Payload = []byte("{not json")
	if err := h.Handle(t.Context(), m); err != nil {
		t.Fatal(err)
	}
	got := pub.all()
	if len(got) != 1 || got[0].topic != "poison" || calls != 1 {
		t.Fatalf("dead letters %v, calls %d", got, calls)
	}
	if r := got[0].m.Headers[message.HeaderDeadLetterReason]; !strings.Contains(r, "decode") {
		t.Fatalf("reason %q, want the decode error", r)
	}
}

func TestDeadLetterPublishFailureNacks(t *testing.T) {
	pub := &recorder{fail: errors.New("broker down")}
	h := middleware.DeadLetter(middleware.DeadLetterOptions{Publisher: pub})(
		message.HandlerFunc(func(context.Context, *message.Message) error { return message.Permanent(errBoom) }))
	err := h.Handle(t.Context(), msg("a"))
	var dle *middleware.DeadLetterError
	if !errors.As(err, &dle) || message.IsPermanent(err) {
		t.Fatalf("err %v: want a retryable *DeadLetterError so the message is nacked, not dropped", err)
	}
}

func TestDeadLetterDuringShutdown(t *testing.T) {
	pub := &recorder{}
	ctx, cancel := context.WithCancel(t.Context())
	h := middleware.DeadLetter(middleware.DeadLetterOptions{Publisher: pub})(
		message.HandlerFunc(func(ctx context.Context, _ *message.Message) error {
			cancel() // shutdown while the handler fails
			return message.Permanent(errBoom)
		}))
	if err := h.Handle(ctx, msg("a")); err != nil {
		t.Fatal(err)
	}
	got := pub.all()
	if len(got) != 1 || got[0].ctxErr != nil {
		t.Fatalf("dead letter not published with a live context: %v", got)
	}
}

func TestDeadLetterCountsWithoutTransportAttempts(t *testing.T) {
	pub := &recorder{}
	h := middleware.DeadLetter(middleware.DeadLetterOptions{MaxAttempts: 2, Publisher: pub})(
		message.HandlerFunc(func(context.Context, *message.Message) error { return errBoom }))
	for i := range 2 {
		m := msg("a")
		m.Attempt = 0
		err := h.Handle(t.Context(), m)
		if (i == 0) != (err != nil) {
			t.Fatalf("delivery %d: %v", i, err)
		}
	}
	if got := pub.all(); len(got) != 1 || got[0].m.Headers[message.HeaderDeadLetterAttempts] != "2" {
		t.Fatalf("dead letters %v", got)
	}
}

func TestDeadLetterLeavesDeferredAlone(t *testing.T) {
	pub := &recorder{}
	h := middleware.DeadLetter(middleware.DeadLetterOptions{MaxAttempts: 1, Publisher: pub})(
		message.HandlerFunc(func(context.Context, *message.Message) error {
			return message.RetryAfter(&middleware.BreakerOpenError{Name: "b"}, time.Second)
		}))
	m := msg("a")
	m.Attempt = 9
	if err := h.Handle(t.Context(), m); !errors.Is(err, middleware.ErrBreakerOpen) || len(pub.all()) != 0 {
		t.Fatalf("err %v, dead letters %d", err, len(pub.all()))
	}
}

func TestDeadLetterUsesRouterPublisherAndGroup(t *testing.T) {
	pub := &recorder{}
	h := middleware.DeadLetter(middleware.DeadLetterOptions{})(
		message.HandlerFunc(func(context.Context, *message.Message) error { return message.Permanent(errBoom) }))
	m := msg("a")
	ctx := router.NewContext(t.Context(), m, "orders", "shipping", pub)
	if err := h.Handle(ctx, m); err != nil {
		t.Fatal(err)
	}
	got := pub.all()
	if len(got) != 1 || got[0].m.Headers[message.HeaderDeadLetterGroup] != "shipping" {
		t.Fatalf("%v", got)
	}
	// No publisher anywhere: nacked, not lost.
	err := h.Handle(t.Context(), msg("b"))
	if !errors.Is(err, middleware.ErrNoPublisher) || message.IsPermanent(err) {
		t.Fatalf("no publisher: %v", err)
	}
	_ = strconv.Itoa
}
