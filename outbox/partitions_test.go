package outbox_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/outbox"
	"github.com/courierkit/courier/transport"
)

// partOf is the partition of key among n: FNV-1a, 31 bits, mod n (the
// table format).
func partOf(key string, n uint32) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(key); i++ {
		h ^= uint32(key[i])
		h *= 16777619
	}
	return (h & 0x7fffffff) % n
}

func (e *env) partitions(t testing.TB) int {
	t.Helper()
	var n int
	if err := e.conn.QueryRow(context.Background(), "SELECT count(*) FROM "+e.tables.Schema+".courier_outbox_partitions").Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// CreateSchema never changes the partition count of existing tables: the
// same count (or 0, "whatever it is") succeeds, another one is refused.
func TestCreateSchemaKeepsPartitionCount(t *testing.T) {
	e := newEnv(t, 4)
	ctx := context.Background()
	for _, p := range []int{4, 0} {
		if err := outbox.CreateSchema(ctx, outbox.Pgx(e.conn), outbox.SchemaOptions{Tables: e.tables, Partitions: p}); err != nil {
			t.Fatalf("CreateSchema(Partitions: %d) on a 4-partition schema: %v", p, err)
		}
	}
	for _, p := range []int{8, 2} {
		err := outbox.CreateSchema(ctx, outbox.SQL(e.db), outbox.SchemaOptions{Tables: e.tables, Partitions: p})
		if !errors.Is(err, outbox.ErrPartitionCount) {
			t.Errorf("CreateSchema(Partitions: %d) on a 4-partition schema: %v, want ErrPartitionCount", p, err)
		}
	}
	if n := e.partitions(t); n != 4 {
		t.Errorf("%d partitions after CreateSchema with other counts, want 4", n)
	}
	// The SQL for migration tools never adds rows to a filled table either.
	s, err := outbox.SchemaSQL(outbox.SchemaOptions{Tables: e.tables, Partitions: 8})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.conn.Exec(ctx, s); err != nil {
		t.Fatal(err)
	}
	if n := e.partitions(t); n != 4 {
		t.Errorf("%d partitions after running SchemaSQL(8), want 4", n)
	}
}

// armed passes publishes through until armed, then holds each until
// released.
type armed struct {
	transport.Publisher
	on      atomic.Bool
	entered chan struct{}
	release chan struct{}
}

func (a *armed) Publish(ctx context.Context, topic string, msgs ...*message.Message) error {
	if a.on.Load() {
		select {
		case a.entered <- struct{}{}:
		default:
		}
		select {
		case <-a.release:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return a.Publisher.Publish(ctx, topic, msgs...)
}

// A running relay notices that the partition table changed (as an older
// CreateSchema or an operator could do) at its next batch, and claims by
// the new count: otherwise it and a relay started later would hold
// different partitions for one key and both publish it.
func TestRelayNoticesPartitionCountChange(t *testing.T) {
	e := newEnv(t, 4)
	ctx := context.Background()
	w := e.outbox(t, outbox.Options{})
	tr, s := memSink(t, "t")
	a := &armed{Publisher: tr, entered: make(chan struct{}, 1), release: make(chan struct{})}
	e.startRelay(t, a, outbox.RelayOptions{PollInterval: 20 * time.Millisecond})
	if err := w.Publish(ctx, outbox.SQL(e.db), "t", &message.Message{ID: "warm", Key: "warm"}); err != nil {
		t.Fatal(err)
	}
	s.waitN(t, 1, 10*time.Second) // the relay has read the count, 4

	if _, err := e.conn.Exec(ctx, "INSERT INTO "+e.tables.Schema+".courier_outbox_partitions SELECT generate_series(4, 7)"); err != nil {
		t.Fatal(err)
	}
	key := ""
	for i := 0; key == ""; i++ {
		if k := fmt.Sprintf("k%d", i); partOf(k, 8) >= 4 {
			key = k
		}
	}
	a.on.Store(true)
	if err := w.Publish(ctx, outbox.SQL(e.db), "t", &message.Message{ID: "row", Key: key}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-a.entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the relay did not publish the row")
	}
	// The relay is publishing the row: it must hold the row's partition
	// under the new count.
	tx, err := e.conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = tx.Exec(ctx, fmt.Sprintf("SELECT part FROM %s.courier_outbox_partitions WHERE part = %d FOR UPDATE NOWAIT", e.tables.Schema, partOf(key, 8)))
	tx.Rollback(ctx)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "55P03" {
		t.Errorf("partition %d of 8 is not held by the relay publishing its row (lock: %v)", partOf(key, 8), err)
	}
	close(a.release)
	s.waitN(t, 2, 10*time.Second)
}

// CreateSchema on existing tables takes no lock that waits for, or holds
// up, the application's writes: CREATE INDEX IF NOT EXISTS alone takes a
// SHARE lock on its table even when the index exists, which would queue
// every outbox write of every instance behind the longest transaction
// writing to the outbox while one instance starts.
func TestCreateSchemaDoesNotLockExistingTables(t *testing.T) {
	e := newEnv(t, 4)
	ctx := context.Background()
	tx, err := e.conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	if err := outbox.CreateSchema(ctx, outbox.Pgx(tx), outbox.SchemaOptions{Tables: e.tables, Partitions: 4}); err != nil {
		t.Fatal(err)
	}
	rows, err := tx.Query(ctx, `SELECT c.relname, l.mode FROM pg_locks l JOIN pg_class c ON c.oid = l.relation
WHERE l.pid = pg_backend_pid() AND c.relnamespace = $1::regnamespace
  AND l.mode NOT IN ('AccessShareLock', 'RowShareLock')`, e.tables.Schema)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var rel, mode string
		if err := rows.Scan(&rel, &mode); err != nil {
			t.Fatal(err)
		}
		if !strings.HasSuffix(rel, "_partitions") && !strings.HasSuffix(rel, "_partitions_pkey") {
			t.Errorf("CreateSchema on existing tables holds %s on %s", mode, rel)
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
}
