package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/outbox"
	"github.com/courierkit/courier/transport"
)

// BeforeWrite sees the write's ctx, the topic and a copy of each message in
// order; what it leaves in the copy's headers is stored and relayed, the
// caller's messages keep their own headers (and get their IDs); an error
// from it, a changed ID or headers over Limits write nothing.
func TestBeforeWrite(t *testing.T) {
	e := newEnv(t, 4)
	ctx := context.Background()
	type reqKey struct{}
	var seen []string
	hook := func(ctx context.Context, topic string, m *message.Message) error {
		req, _ := ctx.Value(reqKey{}).(string)
		seen = append(seen, topic+"/"+string(m.Payload))
		if m.ID == "" {
			return errors.New("no ID yet")
		}
		m.Headers["x-request"] = req
		return nil
	}
	w := e.outbox(t, outbox.Options{BeforeWrite: hook, Limits: transport.Limits{MaxHeaders: 2}})

	a, b := message.New([]byte("a")), &message.Message{Payload: []byte("b"), Headers: message.Header{"mine": "1"}}
	rctx := context.WithValue(ctx, reqKey{}, "req-7")
	tx, err := e.conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Publish(rctx, outbox.Pgx(tx), "orders", a, b); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(seen) != "[orders/a orders/b]" {
		t.Errorf("hook calls %v", seen)
	}
	if b.ID == "" {
		t.Error("the caller's message did not get its ID")
	}
	if _, ok := a.Headers["x-request"]; ok || len(b.Headers) != 1 {
		t.Errorf("caller's headers changed: %v, %v", a.Headers, b.Headers)
	}

	// Failures write nothing (checked before a relay runs).
	before := e.count(t, "true")
	boom := errors.New("boom")
	for name, tc := range map[string]struct {
		hook func(context.Context, string, *message.Message) error
		want error
	}{
		"hook error": {func(context.Context, string, *message.Message) error { return boom }, boom},
		"ID changed": {func(_ context.Context, _ string, m *message.Message) error { m.ID = "other"; return nil }, transport.ErrInvalidMessage},
		"over limits": {func(_ context.Context, _ string, m *message.Message) error {
			m.Headers["x1"], m.Headers["x2"] = "1", "2"
			return nil
		}, transport.ErrLimit},
	} {
		w := e.outbox(t, outbox.Options{BeforeWrite: tc.hook, Limits: transport.Limits{MaxHeaders: 2}})
		tx, err := e.conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		m := message.New([]byte("x"))
		m.Headers = message.Header{"h": "v"}
		err = w.Publish(ctx, outbox.Pgx(tx), "orders", message.New([]byte("ok")), m)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: Publish = %v, want %v", name, err, tc.want)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
		if len(m.Headers) != 1 {
			t.Errorf("%s: caller's headers changed: %v", name, m.Headers)
		}
	}
	if n := e.count(t, "true"); n != before {
		t.Errorf("failed writes stored %d rows", n-before)
	}

	// Stored and relayed with the hook's header and the caller's.
	tr, s := memSink(t, "orders")
	e.startRelay(t, tr, outbox.RelayOptions{PollInterval: 50 * time.Millisecond})
	s.waitN(t, 2, 10*time.Second)
	for _, m := range s.snapshot() {
		if m.Headers["x-request"] != "req-7" {
			t.Errorf("message %s relayed without the hook's header: %v", m.ID, m.Headers)
		}
		if m.ID == b.ID && m.Headers["mine"] != "1" {
			t.Errorf("caller's header lost: %v", m.Headers)
		}
	}
}
