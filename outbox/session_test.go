package outbox_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/outbox"
)

// recorder records the topic of each Publish call and holds the first one
// until released.
type recorder struct {
	mu      sync.Mutex
	topics  []string
	entered chan struct{}
	release chan struct{}
}

func (p *recorder) Publish(ctx context.Context, topic string, msgs ...*message.Message) error {
	p.mu.Lock()
	p.topics = append(p.topics, topic)
	first := len(p.topics) == 1
	p.mu.Unlock()
	if first {
		close(p.entered)
		select {
		case <-p.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func (p *recorder) Close() error { return nil }

// A relay whose database session ended while it published part of a
// batch does not go on publishing the rest: between two Publish calls of
// a batch it checks the session is alive, and starts the batch again on
// a new one.
func TestRelayStopsABatchWhoseSessionEnded(t *testing.T) {
	e := newEnv(t, 1) // one partition: both rows in one batch
	w := e.outbox(t, outbox.Options{})
	ctx := context.Background()
	app := randName("relay_")
	p := &recorder{entered: make(chan struct{}), release: make(chan struct{})}
	r, err := outbox.NewRelay(withApp(e.url, app), p, outbox.RelayOptions{Tables: e.tables, PollInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { r.Close(); <-done }()
	tx, err := e.conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Publish(ctx, outbox.Pgx(tx), "t1", &message.Message{Key: "a"}); err != nil {
		t.Fatal(err)
	}
	if err := w.Publish(ctx, outbox.Pgx(tx), "t2", &message.Message{Key: "b"}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the relay did not publish")
	}
	var killed int
	if err := e.conn.QueryRow(ctx, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1 AND state = 'idle in transaction'", app).Scan(&killed); err != nil {
		t.Fatal(err)
	}
	if killed != 1 {
		t.Fatalf("killed %d relay backends in a transaction, want 1", killed)
	}
	close(p.release)
	waitFor(t, 15*time.Second, "the batch to commit", func() bool { return e.count(t, "true") == 0 })
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.topics) < 3 || p.topics[1] != "t1" {
		t.Errorf("Publish calls %v: want t1 (session lost), then t1, t2 on a new session", p.topics)
	}
}
