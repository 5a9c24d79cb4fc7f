package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/middleware"
	"github.com/courierkit/courier/middleware/storetest"
	"github.com/courierkit/courier/outbox"
)

// The inbox passes the shared IdempotencyStore suite, through
// database/sql and through a pgx pool.
func TestInboxStoreSuite(t *testing.T) {
	e := newEnv(t, 1)
	pool, err := pgxpool.New(context.Background(), e.url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var n atomic.Int64
	for name, db := range map[string]outbox.DB{"database-sql": outbox.SQL(e.db), "pgxpool": outbox.Pgx(pool)} {
		t.Run(name, func(t *testing.T) {
			storetest.Run(t, storetest.Harness{
				New: func(t *testing.T) middleware.IdempotencyStore {
					// A fresh inbox table per case.
					tables := e.tables
					tables.Inbox = fmt.Sprintf("inbox_%d", n.Add(1))
					if err := outbox.CreateSchema(context.Background(), db, outbox.SchemaOptions{Tables: tables, Partitions: 1}); err != nil {
						t.Fatal(err)
					}
					in, err := outbox.NewInbox(db, outbox.InboxOptions{Tables: tables})
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { in.Close() })
					return in
				},
			})
		})
	}
}

func newInbox(t *testing.T, e *env, db outbox.DB) *outbox.Inbox {
	t.Helper()
	in, err := outbox.NewInbox(db, outbox.InboxOptions{Tables: e.tables, CleanupInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { in.Close() })
	return in
}

// Mark inside a transaction: a rollback forgets it, a commit remembers it,
// and a concurrent Mark of the same key waits for the first transaction.
func TestInboxMarkIsTransactional(t *testing.T) {
	e := newEnv(t, 1)
	ctx := context.Background()
	in := newInbox(t, e, outbox.SQL(e.db))

	tx, _ := e.db.BeginTx(ctx, nil)
	first, err := in.Mark(ctx, outbox.SQL(tx), "k", "", 0)
	if err != nil || !first {
		t.Fatalf("Mark: %v %v", first, err)
	}
	tx.Rollback()

	tx1, _ := e.db.BeginTx(ctx, nil)
	if first, err := in.Mark(ctx, outbox.SQL(tx1), "k", "", 0); err != nil || !first {
		t.Fatalf("Mark after rollback: %v %v", first, err)
	}
	// A second transaction marking k waits for tx1.
	res := make(chan bool, 1)
	go func() {
		tx2, err := e.db.BeginTx(ctx, nil)
		if err != nil {
			t.Error(err)
			res <- true
			return
		}
		defer tx2.Rollback()
		first, err := in.Mark(ctx, outbox.SQL(tx2), "k", "", 0)
		if err != nil {
			t.Error(err)
		}
		res <- first
	}()
	select {
	case <-res:
		t.Fatal("a concurrent Mark did not wait for the first transaction")
	case <-time.After(200 * time.Millisecond):
	}
	if err := tx1.Commit(); err != nil {
		t.Fatal(err)
	}
	if first := <-res; first {
		t.Fatal("the second delivery was told to apply its effects too")
	}
	// A claim held through the middleware path makes Mark report it.
	if st, err := in.Claim(ctx, "c", "tok", time.Minute); err != nil || st != middleware.Claimed {
		t.Fatalf("Claim: %v %v", st, err)
	}
	if _, err := in.Mark(ctx, outbox.SQL(e.db), "c", "", 0); !errors.Is(err, outbox.ErrInProgress) {
		t.Fatalf("Mark of a claimed key: %v", err)
	}
	if first, err := in.Mark(ctx, outbox.SQL(e.db), "c", "tok", 0); err != nil || !first {
		t.Fatalf("Mark by the claim's holder: %v %v", first, err)
	}
	if st, _ := in.Claim(ctx, "c", "other", time.Minute); st != middleware.Processed {
		t.Fatalf("after Mark, Claim says %v", st)
	}
}

// DoneTx commits the processed record with the handler's transaction.
func TestInboxDoneTx(t *testing.T) {
	e := newEnv(t, 1)
	ctx := context.Background()
	in := newInbox(t, e, outbox.Pgx(e.conn))
	if st, err := in.Claim(ctx, "k", "t1", time.Minute); err != nil || st != middleware.Claimed {
		t.Fatalf("Claim: %v %v", st, err)
	}
	tx, _ := e.db.BeginTx(ctx, nil)
	if err := in.DoneTx(ctx, outbox.SQL(tx), "k", "t1", time.Hour); err != nil {
		t.Fatal(err)
	}
	tx.Rollback()
	if st, _ := in.Claim(ctx, "k", "t2", time.Minute); st != middleware.InProgress {
		t.Fatalf("after a rolled-back DoneTx: %v, want in-progress", st)
	}
	tx, _ = e.db.BeginTx(ctx, nil)
	in.DoneTx(ctx, outbox.SQL(tx), "k", "t1", time.Hour)
	tx.Commit()
	if st, _ := in.Claim(ctx, "k", "t2", time.Minute); st != middleware.Processed {
		t.Fatalf("after a committed DoneTx: %v, want processed", st)
	}
}

// Handler, on a pgx pool: duplicates delivered concurrently apply once; a
// failing handler rolls back its effects and its record.
func TestInboxHandlerPgx(t *testing.T) {
	e := newEnv(t, 1)
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, e.url)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	in := newInbox(t, e, outbox.Pgx(pool))
	if _, err := pool.Exec(ctx, "CREATE TABLE "+e.tables.Schema+".effects (msg_id text NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	var failOnce atomic.Bool
	failOnce.Store(true)
	h := in.Handler("g", func(ctx context.Context, tx outbox.DB, m *message.Message) error {
		if _, err := tx.PgxExecutor().Exec(ctx, "INSERT INTO "+e.tables.Schema+".effects VALUES ($1)", m.ID); err != nil {
			return err
		}
		if m.ID == "m-3" && failOnce.CompareAndSwap(true, false) {
			return errors.New("boom")
		}
		return nil
	})
	var wg sync.WaitGroup
	var failures atomic.Int64
	for i := range 40 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := h.Handle(ctx, &message.Message{ID: fmt.Sprintf("m-%d", i%10)}); err != nil {
				failures.Add(1)
			}
		}()
	}
	wg.Wait()
	if failures.Load() != 1 {
		t.Fatalf("%d deliveries failed, want 1", failures.Load())
	}
	var n, d int
	pool.QueryRow(ctx, "SELECT count(*), count(DISTINCT msg_id) FROM "+e.tables.Schema+".effects").Scan(&n, &d)
	if n != 10 || d != 10 {
		t.Fatalf("%d effects for %d messages, want 10 and 10", n, d)
	}
}

// Cleanup deletes expired records and keeps live ones.
func TestInboxCleanup(t *testing.T) {
	e := newEnv(t, 1)
	ctx := context.Background()
	in := newInbox(t, e, outbox.SQL(e.db))
	in.Done(ctx, "old", "t", time.Millisecond)
	in.Done(ctx, "new", "t", time.Hour)
	time.Sleep(5 * time.Millisecond)
	n, err := in.Cleanup(ctx)
	if err != nil || n != 1 {
		t.Fatalf("Cleanup: %d %v", n, err)
	}
	if st, _ := in.Claim(ctx, "new", "x", time.Minute); st != middleware.Processed {
		t.Fatalf("live record lost: %v", st)
	}
	in.Close()
	if _, err := in.Claim(ctx, "k", "t", time.Minute); !errors.Is(err, middleware.ErrStoreClosed) {
		t.Fatalf("Claim after Close: %v", err)
	}
}

// The inbox behind the middleware.Idempotency middleware.
func TestInboxWithIdempotencyMiddleware(t *testing.T) {
	e := newEnv(t, 1)
	ctx := context.Background()
	in := newInbox(t, e, outbox.SQL(e.db))
	var runs atomic.Int64
	h := message.Chain(message.HandlerFunc(func(context.Context, *message.Message) error {
		runs.Add(1)
		return nil
	}), middleware.Idempotency(in, middleware.IdempotencyOptions{Scope: "g"}))
	m := &message.Message{ID: "same"}
	for range 3 {
		if err := h.Handle(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	if runs.Load() != 1 {
		t.Fatalf("handler ran %d times", runs.Load())
	}
}

// Handler and the Idempotency middleware with the same scope share their
// records: a message processed by one is a duplicate for the other.
func TestInboxHandlerAndMiddlewareShareKeys(t *testing.T) {
	e := newEnv(t, 1)
	ctx := context.Background()
	in := newInbox(t, e, outbox.SQL(e.db))
	var runs atomic.Int64
	viaHandler := in.Handler("billing", func(context.Context, outbox.DB, *message.Message) error { runs.Add(1); return nil })
	viaMiddleware := message.Chain(message.HandlerFunc(func(context.Context, *message.Message) error { runs.Add(1); return nil }),
		middleware.Idempotency(in, middleware.IdempotencyOptions{Scope: "billing"}))
	if err := viaHandler.Handle(ctx, &message.Message{ID: "a"}); err != nil {
		t.Fatal(err)
	}
	if err := viaMiddleware.Handle(ctx, &message.Message{ID: "a"}); err != nil {
		t.Fatal(err)
	}
	if err := viaMiddleware.Handle(ctx, &message.Message{ID: "b"}); err != nil {
		t.Fatal(err)
	}
	if err := viaHandler.Handle(ctx, &message.Message{ID: "b"}); err != nil {
		t.Fatal(err)
	}
	if runs.Load() != 2 {
		t.Fatalf("%d runs for 2 messages", runs.Load())
	}
}
