package outbox_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/outbox"
	"github.com/courierkit/courier/transport"
)

// slowPub takes d for each publish, then publishes.
type slowPub struct {
	transport.Publisher
	d time.Duration
}

func (s slowPub) Publish(ctx context.Context, topic string, msgs ...*message.Message) error {
	select {
	case <-time.After(s.d):
	case <-ctx.Done():
		return ctx.Err()
	}
	return s.Publisher.Publish(ctx, topic, msgs...)
}

// withParam adds a query parameter to a PostgreSQL URL.
func withParam(url, kv string) string {
	if strings.Contains(url, "?") {
		return url + "&" + kv
	}
	return url + "?" + kv
}

// A server-side idle_in_transaction_session_timeout shorter than one
// publish does not kill the relay's batch transaction, which is idle while
// it publishes: the row is published once and its batch commits, instead
// of being republished for ever.
func TestIdleInTransactionTimeoutDoesNotRepublish(t *testing.T) {
	e := newEnv(t, 1)
	w := e.outbox(t, outbox.Options{})
	tr, s := memSink(t, "t")
	url := withParam(e.url, "options=-c%20idle_in_transaction_session_timeout%3D300")
	r, err := outbox.NewRelay(url, slowPub{tr, time.Second}, outbox.RelayOptions{Tables: e.tables, PollInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background()) }()
	defer func() { r.Close(); <-done }()
	if err := w.Publish(context.Background(), outbox.SQL(e.db), "t",
		&message.Message{ID: "a", Key: "k"}, &message.Message{ID: "b", Key: "k"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 15*time.Second, "the batch to commit", func() bool { return e.count(t, "true") == 0 })
	s.waitN(t, 2, 5*time.Second)
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, id := range []string{"a", "b"} {
		if s.ids[id] != 1 {
			t.Errorf("message %s delivered %d times, want 1 (relay counters %+v)", id, s.ids[id], r.Counters())
		}
	}
}

// A short lock_timeout or statement_timeout (from the role or the DSN)
// does not fail the statements that record a published batch: when they
// have to wait for a row lock, they wait, instead of rolling back a batch
// whose messages went out and publishing it again.
func TestMarkingIgnoresStatementTimeouts(t *testing.T) {
	e := newEnv(t, 1)
	w := e.outbox(t, outbox.Options{})
	tr, s := memSink(t, "t")
	ctx := context.Background()
	url := withParam(e.url, "options=-c%20lock_timeout%3D200%20-c%20statement_timeout%3D300")
	r, err := outbox.NewRelay(url, tr, outbox.RelayOptions{Tables: e.tables, PollInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { r.Close(); <-done }()
	if err := w.Publish(ctx, outbox.SQL(e.db), "t", &message.Message{ID: "a", Key: "k"}); err != nil {
		t.Fatal(err)
	}
	// Hold the row's lock, as an operator's UPDATE could, while the relay
	// publishes it and then tries to delete it.
	tx, err := e.conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "SELECT 1 FROM "+e.tables.Schema+".courier_outbox FOR UPDATE"); err != nil {
		t.Fatal(err)
	}
	s.waitN(t, 1, 10*time.Second)
	time.Sleep(time.Second) // several lock_timeouts
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, "the batch to commit", func() bool { return e.count(t, "true") == 0 })
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ids["a"] != 1 {
		t.Errorf("message delivered %d times, want 1 (relay counters %+v)", s.ids["a"], r.Counters())
	}
}
