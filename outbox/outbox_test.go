package outbox_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	mathrand "math/rand/v2"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/outbox"
	"github.com/courierkit/courier/transport"
	memtransport "github.com/courierkit/courier/transport/mem"
)

// A rolled-back transaction publishes nothing; a committed one publishes
// each message exactly once, byte-exact, through database/sql and pgx.
func TestRollbackPublishesNothingCommitPublishesOnce(t *testing.T) {
	for _, driver := range []string{"database/sql", "pgx"} {
		t.Run(driver, func(t *testing.T) {
			e := newEnv(t, 0)
			ctx := context.Background()
			w := e.outbox(t, outbox.Options{})
			tr, s := memSink(t, "orders")
			e.startRelay(t, tr, outbox.RelayOptions{PollInterval: 50 * time.Millisecond})
			if _, err := e.conn.Exec(ctx, "CREATE TABLE "+e.tables.Schema+".orders (id text PRIMARY KEY)"); err != nil {
				t.Fatal(err)
			}

			write := func(id string, commit bool, msgs ...*message.Message) {
				t.Helper()
				switch driver {
				case "database/sql":
					tx, err := e.db.BeginTx(ctx, nil)
					if err != nil {
						t.Fatal(err)
					}
					if _, err := tx.ExecContext(ctx, "INSERT INTO "+e.tables.Schema+".orders (id) VALUES ($1)", id); err != nil {
						t.Fatal(err)
					}
					if err := w.Publisher(outbox.SQL(tx)).Publish(ctx, "orders", msgs...); err != nil {
						t.Fatal(err)
					}
					if commit {
						err = tx.Commit()
					} else {
						err = tx.Rollback()
					}
					if err != nil {
						t.Fatal(err)
					}
				case "pgx":
					tx, err := e.conn.Begin(ctx)
					if err != nil {
						t.Fatal(err)
					}
					if _, err := tx.Exec(ctx, "INSERT INTO "+e.tables.Schema+".orders (id) VALUES ($1)", id); err != nil {
						t.Fatal(err)
					}
					if err := w.Publish(ctx, outbox.Pgx(tx), "orders", msgs...); err != nil {
						t.Fatal(err)
					}
					if commit {
						err = tx.Commit(ctx)
					} else {
						err = tx.Rollback(ctx)
					}
					if err != nil {
						t.Fatal(err)
					}
				}
			}

			rolled := &message.Message{Key: "o-1", Payload: []byte("rolled back")}
			write("o-1", false, rolled)
			if rolled.ID == "" {
				t.Fatal("Publish did not fill in the ID")
			}
			binary := make([]byte, 256)
			for i := range binary {
				binary[i] = byte(i)
			}
			committed := []*message.Message{
				{ID: "id-1", Key: "o-2", Headers: message.Header{"ce-type": "order.created", "x-ünï": "välue \"quoted\" \\ \t"}, Payload: binary},
				{ID: "id-2", Key: "o-2", Payload: nil},
				{ID: "id-3", Payload: []byte(`{"json":true}`)},
			}
			write("o-2", true, committed...)

			s.waitN(t, 3, 10*time.Second)
			// The relay has drained everything committed; wait for the
			// table to be empty so a late publish of the rolled-back row
			// would have shown.
			waitFor(t, 5*time.Second, "outbox to drain", func() bool { return e.count(t, "true") == 0 })
			if n := s.stable(200 * time.Millisecond); n != 3 {
				t.Fatalf("got %d messages, want 3", n)
			}
			got := s.snapshot()
			for i, want := range committed {
				g := got[i]
				if g.ID != want.ID || g.Key != want.Key || !bytes.Equal(g.Payload, want.Payload) || len(g.Headers) != len(want.Headers) {
					t.Errorf("message %d: got id=%q key=%q payload=%q headers=%v, want id=%q key=%q payload=%q headers=%v",
						i, g.ID, g.Key, g.Payload, g.Headers, want.ID, want.Key, want.Payload, want.Headers)
				}
				for k, v := range want.Headers {
					if g.Headers[k] != v {
						t.Errorf("message %d header %q = %q, want %q", i, k, g.Headers[k], v)
					}
				}
				if g.Topic != "orders" {
					t.Errorf("message %d topic %q", i, g.Topic)
				}
			}
			for id, n := range s.ids {
				if id == rolled.ID {
					t.Errorf("rolled-back message %s was published", id)
				}
				if n != 1 {
					t.Errorf("message %s published %d times", id, n)
				}
			}
		})
	}
}

// Publish rejects what PostgreSQL text or the transport cannot carry,
// before writing anything.
func TestPublishValidates(t *testing.T) {
	e := newEnv(t, 0)
	ctx := context.Background()
	w := e.outbox(t, outbox.Options{Limits: transport.Limits{MaxPayload: 10}})
	cases := []struct {
		name  string
		topic string
		m     *message.Message
		is    error
	}{
		{"bad topic", "no spaces", &message.Message{}, transport.ErrInvalidName},
		{"nil message", "t", nil, transport.ErrInvalidMessage},
		{"NUL in key", "t", &message.Message{Key: "a\x00b"}, transport.ErrInvalidMessage},
		{"invalid UTF-8 header value", "t", &message.Message{Headers: message.Header{"h": "\xff"}}, transport.ErrInvalidMessage},
		{"over the payload limit", "t", &message.Message{Payload: make([]byte, 11)}, transport.ErrLimit},
	}
	for _, c := range cases {
		tx, err := e.conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		err = w.Publish(ctx, outbox.Pgx(tx), c.topic, c.m)
		if !errors.Is(err, c.is) {
			t.Errorf("%s: got %v, want %v", c.name, err, c.is)
		}
		tx.Rollback(ctx)
	}
	if err := w.Publish(ctx, outbox.DB{}, "t", &message.Message{}); err == nil {
		t.Error("empty DB accepted")
	}
	p := w.Publisher(outbox.Pgx(e.conn))
	p.Close()
	if err := p.Publish(ctx, "t", &message.Message{}); !errors.Is(err, transport.ErrClosed) {
		t.Errorf("Publish after Close: %v, want transport.ErrClosed", err)
	}
	if _, err := outbox.New(outbox.Options{Tables: outbox.Tables{Outbox: "x; DROP TABLE y"}}); !errors.Is(err, outbox.ErrInvalidTableName) {
		t.Errorf("bad table name: %v", err)
	}
	if n := e.count(t, "true"); n != 0 {
		t.Errorf("%d rows written by failed calls", n)
	}
}

// CreateSchema is idempotent, through either driver, and SchemaSQL holds
// the statements it runs.
func TestSchema(t *testing.T) {
	e := newEnv(t, 8)
	ctx := context.Background()
	for _, db := range []outbox.DB{outbox.SQL(e.db), outbox.Pgx(e.conn)} {
		if err := outbox.CreateSchema(ctx, db, outbox.SchemaOptions{Tables: e.tables, Partitions: 8}); err != nil {
			t.Fatal(err)
		}
	}
	var parts int
	if err := e.conn.QueryRow(ctx, "SELECT count(*) FROM "+e.tables.Schema+".courier_outbox_partitions").Scan(&parts); err != nil {
		t.Fatal(err)
	}
	if parts != 8 {
		t.Errorf("%d partitions, want 8", parts)
	}
	s, err := outbox.SchemaSQL(outbox.SchemaOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`CREATE TABLE IF NOT EXISTS "courier_outbox"`, `"courier_outbox_partitions"`, `"courier_inbox"`, "generate_series(0, 64 - 1)"} {
		if !strings.Contains(s, want) {
			t.Errorf("SchemaSQL lacks %q", want)
		}
	}
	// DropSchema removes everything it made.
	other := outbox.Tables{Schema: randName("courier_d_")}
	if err := outbox.CreateSchema(ctx, outbox.SQL(e.db), outbox.SchemaOptions{Tables: other}); err != nil {
		t.Fatal(err)
	}
	if err := outbox.DropSchema(ctx, outbox.SQL(e.db), other); err != nil {
		t.Fatal(err)
	}
	var exists bool
	if err := e.conn.QueryRow(ctx, "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", other.Schema).Scan(&exists); err != nil || exists {
		t.Errorf("schema still exists (%v)", err)
	}
}

// A commit wakes the relay through LISTEN/NOTIFY long before its poll
// interval; with NoNotify, polling finds the rows.
func TestNotifyAndPolling(t *testing.T) {
	e := newEnv(t, 0)
	tr, s := memSink(t, "t")
	app := randName("relay_")
	r, err := outbox.NewRelay(withApp(e.url, app), tr, outbox.RelayOptions{Tables: e.tables, PollInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background()) }()
	defer func() { r.Close(); <-done }()
	e.waitAsleep(t, app) // only a notification can wake it now
	start := time.Now()
	e.writeRows(t, e.outbox(t, outbox.Options{}), "t", 1, 0, 1)
	s.waitN(t, 1, 10*time.Second)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("notified publish took %s", d)
	}

	e2 := newEnv(t, 0)
	tr2, s2 := memSink(t, "t")
	e2.startRelay(t, tr2, outbox.RelayOptions{PollInterval: 100 * time.Millisecond})
	e2.writeRows(t, e2.outbox(t, outbox.Options{NoNotify: true}), "t", 5, 0, 5)
	s2.waitN(t, 5, 10*time.Second)
}

// checkOrder verifies that every key's payloads (positions within the
// key) arrive as 0, 1, 2, ... and that each ID arrives once.
func checkOrder(t *testing.T, msgs []*message.Message, wantTotal int) {
	t.Helper()
	next := map[string]int{}
	seen := map[string]bool{}
	for _, m := range msgs {
		if seen[m.ID] {
			t.Fatalf("message %s delivered twice", m.ID)
		}
		seen[m.ID] = true
		pos, err := strconv.Atoi(string(m.Payload))
		if err != nil {
			t.Fatalf("payload %q", m.Payload)
		}
		if pos != next[m.Key] {
			t.Fatalf("key %s: got position %d, want %d (out of order)", m.Key, pos, next[m.Key])
		}
		next[m.Key]++
	}
	if len(seen) != wantTotal {
		t.Fatalf("%d distinct messages, want %d", len(seen), wantTotal)
	}
}

// Three relays over 10,000 rows with 100 keys: every row published once,
// each key in order.
func TestThreeRelaysKeepPerKeyOrder(t *testing.T) {
	n := 10000
	if testing.Short() {
		n = 3000
	}
	e := newEnv(t, 0)
	w := e.outbox(t, outbox.Options{})
	// Write first, so the relays race over a full table; then write more
	// while they run.
	e.writeRows(t, w, "t", n/2, 100, 50)
	tr, s := memSink(t, "t")
	var batches [3]atomic.Int64
	for i := range 3 {
		e.startRelay(t, tr, outbox.RelayOptions{BatchSize: 200, MaxPartitions: 4, PollInterval: 50 * time.Millisecond,
			Hooks: outbox.Hooks{OnBatch: func(b outbox.BatchStats) { batches[i].Add(int64(b.Published)) }}})
	}
	// The second half continues each key's positions.
	ctx := context.Background()
	perKey := map[string]int{}
	for i := 0; i < n/2; i++ {
		perKey[fmt.Sprintf("key-%d", i%100)]++
	}
	for i := n / 2; i < n; i += 50 {
		tx, err := e.conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var msgs []*message.Message
		for j := i; j < i+50; j++ {
			key := fmt.Sprintf("key-%d", j%100)
			msgs = append(msgs, &message.Message{Key: key, Payload: []byte(strconv.Itoa(perKey[key]))})
			perKey[key]++
		}
		if err := w.Publish(ctx, outbox.Pgx(tx), "t", msgs...); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	s.waitN(t, n, 60*time.Second)
	waitFor(t, 10*time.Second, "outbox to drain", func() bool { return e.count(t, "true") == 0 })
	if got := s.stable(200 * time.Millisecond); got != n {
		t.Fatalf("got %d messages, want %d", got, n)
	}
	checkOrder(t, s.snapshot(), n)
	t.Logf("rows published per relay: %d %d %d", batches[0].Load(), batches[1].Load(), batches[2].Load())
	for i := range batches {
		if batches[i].Load() == 0 {
			t.Logf("relay %d published nothing (the others took every partition)", i)
		}
	}
}

// Concurrent transactions writing one key are published in sequence order
// (the per-key lock makes commit order match it).
func TestConcurrentWritersOneKey(t *testing.T) {
	e := newEnv(t, 0)
	w := e.outbox(t, outbox.Options{})
	tr, s := memSink(t, "t")
	e.startRelay(t, tr, outbox.RelayOptions{PollInterval: 20 * time.Millisecond})
	ctx := context.Background()
	const writers, each = 8, 50
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for i := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range each {
				tx, err := e.db.BeginTx(ctx, nil)
				if err != nil {
					errs <- err
					return
				}
				m := &message.Message{Key: "hot", Payload: []byte(fmt.Sprintf("%d-%d", i, j))}
				if err := w.Publish(ctx, outbox.SQL(tx), "t", m); err != nil {
					errs <- err
					tx.Rollback()
					return
				}
				if err := tx.Commit(); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	s.waitN(t, writers*each, 30*time.Second)
	// Each writer's own messages must arrive in its order, and the
	// published order must be the sequence order (IDs are UUIDv7 from
	// several goroutines, so check per writer).
	last := map[string]int{}
	for _, m := range s.snapshot() {
		var wi, j int
		fmt.Sscanf(string(m.Payload), "%d-%d", &wi, &j)
		k := strconv.Itoa(wi)
		if prev, ok := last[k]; ok && j != prev+1 {
			t.Fatalf("writer %d: message %d after %d", wi, j, prev)
		}
		last[k] = j
	}
}

// faulty is a transport.Publisher decorator that makes publishes of some
// keys fail while a switch is on, in front of a real transport.
type faulty struct {
	transport.Publisher
	mu    sync.Mutex
	fail  map[string]bool // key → fail
	down  bool            // fail everything
	tries atomic.Int64
}

var errInjected = errors.New("injected failure")

func (f *faulty) Publish(ctx context.Context, topic string, msgs ...*message.Message) error {
	f.tries.Add(1)
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.down {
		return errInjected
	}
	for _, m := range msgs {
		if f.fail[m.Key] {
			return fmt.Errorf("key %s: %w", m.Key, errInjected)
		}
	}
	return f.Publisher.Publish(ctx, topic, msgs...)
}

func (f *faulty) set(fn func()) { f.mu.Lock(); fn(); f.mu.Unlock() }

// A key whose publishes fail is retried with backoff, its later rows wait
// behind it, and other keys are published meanwhile.
func TestFailingKeyDoesNotBlockOthers(t *testing.T) {
	e := newEnv(t, 0)
	w := e.outbox(t, outbox.Options{})
	tr, s := memSink(t, "t")
	f := &faulty{Publisher: tr, fail: map[string]bool{"key-3": true}}
	var failures atomic.Int64
	r := e.startRelay(t, f, outbox.RelayOptions{PollInterval: 20 * time.Millisecond, RetryMin: 20 * time.Millisecond, RetryMax: 100 * time.Millisecond,
		Hooks: outbox.Hooks{OnFailure: func(topic string, n int, dead bool, err error) {
			if !errors.Is(err, errInjected) || dead {
				t.Errorf("OnFailure(%s, %d, %v, %v)", topic, n, dead, err)
			}
			failures.Add(int64(n))
		}}})
	e.writeRows(t, w, "t", 100, 10, 10) // 10 keys × 10 rows
	s.waitN(t, 90, 20*time.Second)
	waitFor(t, 10*time.Second, "retries", func() bool { return failures.Load() >= 3 })
	for _, m := range s.snapshot() {
		if m.Key == "key-3" {
			t.Fatal("a row of the failing key was published")
		}
	}
	var attempts int
	if err := e.conn.QueryRow(context.Background(), "SELECT max(attempts) FROM "+e.tables.Schema+".courier_outbox WHERE msg_key = 'key-3'").Scan(&attempts); err != nil {
		t.Fatal(err)
	}
	if attempts < 2 {
		t.Errorf("failing row tried %d times", attempts)
	}
	if e.count(t, "msg_key = 'key-3'") != 10 {
		t.Errorf("failing key's rows are not all waiting")
	}
	f.set(func() { f.fail = nil })
	s.waitN(t, 100, 20*time.Second)
	checkOrder(t, s.snapshot(), 100)
	// The counters move when the batch commits, just after the publish.
	waitFor(t, 5*time.Second, "counters", func() bool { c := r.Counters(); return c.Failed > 0 && c.Published == 100 })
}

// A row the transport can never carry becomes dead at once; its key moves
// on and the backlog reports it.
func TestUndeliverableRowBecomesDead(t *testing.T) {
	e := newEnv(t, 0)
	w := e.outbox(t, outbox.Options{})
	ctx := context.Background()
	tr, err := memtransport.New(ctx, memtransport.Options{MaxPayload: 100})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	if err := tr.Declare(ctx, "t", transport.SubscribeOptions{Group: "g"}); err != nil {
		t.Fatal(err)
	}
	var deadN atomic.Int64
	r := e.startRelay(t, tr, outbox.RelayOptions{PollInterval: 20 * time.Millisecond,
		Hooks: outbox.Hooks{OnFailure: func(_ string, n int, dead bool, err error) {
			if dead && errors.Is(err, transport.ErrLimit) {
				deadN.Add(int64(n))
			}
		}}})
	tx, _ := e.conn.Begin(ctx)
	if err := w.Publish(ctx, outbox.Pgx(tx), "t",
		&message.Message{Key: "k", Payload: []byte("0")},
		&message.Message{Key: "k", Payload: make([]byte, 101)},
		&message.Message{Key: "k", Payload: []byte("2")}); err != nil {
		t.Fatal(err)
	}
	tx.Commit(ctx)
	waitFor(t, 10*time.Second, "rows to settle", func() bool { return e.count(t, "dead_at IS NULL") == 0 })
	waitFor(t, 5*time.Second, "dead row reported", func() bool { return deadN.Load() == 1 })
	b, err := r.Backlog(ctx, outbox.Pgx(e.conn))
	if err != nil {
		t.Fatal(err)
	}
	if b.Dead != 1 || b.Pending != 0 {
		t.Errorf("backlog %+v", b)
	}
	var lastErr string
	if err := e.conn.QueryRow(ctx, "SELECT last_error FROM "+e.tables.Schema+".courier_outbox WHERE dead_at IS NOT NULL").Scan(&lastErr); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(lastErr, "payload") {
		t.Errorf("last_error %q", lastErr)
	}
	// An operator requeues it: still too big for this transport, it dies
	// again.
	if n, err := outbox.RequeueDead(ctx, outbox.Pgx(e.conn), e.tables); err != nil || n != 1 {
		t.Fatalf("RequeueDead: %d %v", n, err)
	}
	waitFor(t, 10*time.Second, "requeued row to die again", func() bool { return deadN.Load() == 2 })
}

// MaxAttempts makes a row dead after that many failures.
func TestMaxAttempts(t *testing.T) {
	e := newEnv(t, 0)
	w := e.outbox(t, outbox.Options{})
	tr, s := memSink(t, "t")
	f := &faulty{Publisher: tr, fail: map[string]bool{"bad": true}}
	e.startRelay(t, f, outbox.RelayOptions{PollInterval: 10 * time.Millisecond, RetryMin: 5 * time.Millisecond, RetryMax: 10 * time.Millisecond, MaxAttempts: 3})
	ctx := context.Background()
	tx, _ := e.conn.Begin(ctx)
	w.Publish(ctx, outbox.Pgx(tx), "t", &message.Message{Key: "bad", Payload: []byte("x")}, &message.Message{Key: "bad", Payload: []byte("y")})
	tx.Commit(ctx)
	waitFor(t, 10*time.Second, "first row dead", func() bool { return e.count(t, "dead_at IS NOT NULL AND attempts = 3") >= 1 })
	f.set(func() { f.fail = nil })
	s.waitN(t, 1, 10*time.Second)
	if got := s.snapshot()[0]; string(got.Payload) != "y" {
		t.Errorf("got %q", got.Payload)
	}
}

// With Retention, published rows are kept (published_at set) and deleted
// once older than it.
func TestRetention(t *testing.T) {
	e := newEnv(t, 0)
	w := e.outbox(t, outbox.Options{})
	tr, s := memSink(t, "t")
	e.startRelay(t, tr, outbox.RelayOptions{PollInterval: 20 * time.Millisecond, Retention: 500 * time.Millisecond, CleanupInterval: 50 * time.Millisecond})
	e.writeRows(t, w, "t", 20, 0, 20)
	s.waitN(t, 20, 10*time.Second)
	waitFor(t, 5*time.Second, "rows marked", func() bool { return e.count(t, "published_at IS NOT NULL") == 20 })
	waitFor(t, 10*time.Second, "rows cleaned up", func() bool { return e.count(t, "true") == 0 })
}

// Shutdown lets the batch in flight finish and mark its rows; Run returns
// ErrRelayClosed; Close and Shutdown are idempotent.
func TestShutdownDrains(t *testing.T) {
	e := newEnv(t, 0)
	w := e.outbox(t, outbox.Options{})
	tr, s := memSink(t, "t")
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	slow := &gate{Publisher: tr, entered: entered, release: release}
	r, err := outbox.NewRelay(e.url, slow, outbox.RelayOptions{Tables: e.tables, PollInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background()) }()
	e.writeRows(t, w, "t", 10, 0, 10)
	<-entered // a batch is publishing
	shut := make(chan error, 1)
	go func() { shut <- r.Shutdown(context.Background()) }()
	select {
	case err := <-shut:
		t.Fatalf("Shutdown returned %v with a batch in flight", err)
	case <-time.After(100 * time.Millisecond):
	}
	close(release)
	if err := <-shut; err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != outbox.ErrRelayClosed {
		t.Fatalf("Run: %v", err)
	}
	s.waitN(t, 10, 5*time.Second)
	if n := e.count(t, "true"); n != 0 {
		t.Errorf("%d rows left after a draining shutdown", n)
	}
	if err := r.Shutdown(context.Background()); err != nil {
		t.Error(err)
	}
	if err := r.Close(); err != nil {
		t.Error(err)
	}
	if err := r.Run(context.Background()); err != outbox.ErrRelayClosed {
		t.Errorf("Run after Shutdown: %v", err)
	}
}

// Shutdown with an expiring ctx abandons the batch: its rows stay.
func TestShutdownTimeoutLeavesRows(t *testing.T) {
	e := newEnv(t, 0)
	w := e.outbox(t, outbox.Options{})
	tr, _ := memSink(t, "t")
	entered := make(chan struct{}, 1)
	slow := &gate{Publisher: tr, entered: entered, release: make(chan struct{})}
	r, err := outbox.NewRelay(e.url, slow, outbox.RelayOptions{Tables: e.tables, PollInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background()) }()
	e.writeRows(t, w, "t", 10, 0, 10)
	<-entered
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := r.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-done; err != outbox.ErrRelayClosed {
		t.Fatalf("Run: %v", err)
	}
	if n := e.count(t, "published_at IS NULL"); n != 10 {
		t.Errorf("%d rows pending, want 10", n)
	}
}

// gate blocks Publish until release is closed, telling entered.
type gate struct {
	transport.Publisher
	entered chan struct{}
	release chan struct{}
}

func (g *gate) Publish(ctx context.Context, topic string, msgs ...*message.Message) error {
	select {
	case g.entered <- struct{}{}:
	default:
	}
	select {
	case <-g.release:
	case <-ctx.Done():
		return ctx.Err()
	}
	return g.Publisher.Publish(ctx, topic, msgs...)
}

// Run returns ctx.Err() when its ctx ends.
func TestRunReturnsCtxErr(t *testing.T) {
	e := newEnv(t, 0)
	tr, _ := memSink(t, "t")
	r, err := outbox.NewRelay(e.url, tr, outbox.RelayOptions{Tables: e.tables})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	time.Sleep(50 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("Run: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Run did not return after cancel")
	}
	if _, err := outbox.NewRelay("postgres://u:s3cret@127.0.0.1:1/x?bogus_param=%zz", tr, outbox.RelayOptions{}); err == nil || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("bad connection string: %v", err)
	}
}

// The relay survives its database connections being killed.
func TestRelaySurvivesDatabaseDisconnect(t *testing.T) {
	e := newEnv(t, 0)
	w := e.outbox(t, outbox.Options{})
	tr, s := memSink(t, "t")
	app := randName("relay_")
	var errs atomic.Int64
	r, err := outbox.NewRelay(withApp(e.url, app), tr, outbox.RelayOptions{Tables: e.tables, PollInterval: 50 * time.Millisecond,
		Hooks: outbox.Hooks{OnError: func(error) { errs.Add(1) }}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background()) }()
	defer func() { r.Close(); <-done }()
	e.writeRows(t, w, "t", 10, 0, 10)
	s.waitN(t, 10, 10*time.Second)
	var killed int
	if err := e.conn.QueryRow(context.Background(), "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1", app).Scan(&killed); err != nil {
		t.Fatal(err)
	}
	if killed == 0 {
		t.Fatal("no relay backends found")
	}
	e.writeRows(t, w, "t", 10, 0, 10)
	s.waitN(t, 20, 20*time.Second)
	t.Logf("killed %d backends; relay reported %d errors", killed, errs.Load())
}

// Broker down while the relay runs: rows stay in the outbox and are
// published after the transport recovers. The mem broker keeps its state
// while the relay's connection to it is closed and reopened, as a network
// broker does across a connection loss.
func TestBrokerDownThenRecovers(t *testing.T) {
	e := newEnv(t, 0)
	w := e.outbox(t, outbox.Options{})
	ctx := context.Background()
	broker := memtransport.NewBroker()
	consumer, err := memtransport.New(ctx, memtransport.Options{Broker: broker, MaxBacklog: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer consumer.Close()
	if err := consumer.Declare(ctx, "t", transport.SubscribeOptions{Group: "g"}); err != nil {
		t.Fatal(err)
	}
	sw := &switchable{}
	conn1, _ := memtransport.New(ctx, memtransport.Options{Broker: broker})
	sw.set(conn1)
	e.startRelay(t, sw, outbox.RelayOptions{PollInterval: 20 * time.Millisecond, RetryMin: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond})
	conn1.Close() // the broker connection is gone: Publish fails with ErrClosed
	e.writeRows(t, w, "t", 50, 5, 10)
	waitFor(t, 10*time.Second, "failed attempts", func() bool { return e.count(t, "attempts > 0") >= 5 })
	if n := e.count(t, "published_at IS NULL AND dead_at IS NULL"); n != 50 {
		t.Fatalf("%d rows pending while the broker is down, want 50", n)
	}
	conn2, _ := memtransport.New(ctx, memtransport.Options{Broker: broker})
	defer conn2.Close()
	sw.set(conn2)
	waitFor(t, 20*time.Second, "outbox to drain", func() bool { return e.count(t, "true") == 0 })

	s := &sink{ids: map[string]int{}, more: make(chan struct{}, 1)}
	sctx, cancel := context.WithCancel(ctx)
	subDone := make(chan struct{})
	go func() {
		defer close(subDone)
		consumer.Subscribe(sctx, "t", s, transport.SubscribeOptions{Group: "g"})
	}()
	s.waitN(t, 50, 10*time.Second)
	cancel()
	<-subDone
	checkOrder(t, s.snapshot(), 50)
}

type switchable struct {
	mu  sync.Mutex
	cur transport.Publisher
}

func (s *switchable) set(p transport.Publisher) { s.mu.Lock(); s.cur = p; s.mu.Unlock() }
func (s *switchable) Publish(ctx context.Context, topic string, msgs ...*message.Message) error {
	s.mu.Lock()
	p := s.cur
	s.mu.Unlock()
	return p.Publish(ctx, topic, msgs...)
}
func (s *switchable) Close() error { return nil }

// Hooks report batches and the backlog.
func TestHooks(t *testing.T) {
	e := newEnv(t, 0)
	w := e.outbox(t, outbox.Options{})
	e.writeRows(t, w, "t", 30, 3, 30)
	b, err := outbox.Stats(context.Background(), outbox.SQL(e.db), e.tables)
	if err != nil {
		t.Fatal(err)
	}
	if b.Pending != 30 || b.OldestAge <= 0 {
		t.Errorf("Stats before relaying: %+v", b)
	}
	tr, s := memSink(t, "t")
	var published atomic.Int64
	backlogs := make(chan outbox.Backlog, 100)
	e.startRelay(t, tr, outbox.RelayOptions{PollInterval: 20 * time.Millisecond, BacklogInterval: 30 * time.Millisecond,
		Hooks: outbox.Hooks{
			OnBatch: func(b outbox.BatchStats) {
				published.Add(int64(b.Published))
				if b.Duration <= 0 || b.MaxAge <= 0 {
					t.Errorf("batch stats %+v", b)
				}
			},
			OnBacklog: func(b outbox.Backlog) {
				select {
				case backlogs <- b:
				default:
				}
			},
		}})
	s.waitN(t, 30, 10*time.Second)
	waitFor(t, 5*time.Second, "OnBatch", func() bool { return published.Load() == 30 })
	// A later backlog report shows the empty outbox.
	deadline := time.After(10 * time.Second)
	for {
		select {
		case b := <-backlogs:
			if b.Pending == 0 && b.OldestAge == 0 {
				return
			}
		case <-deadline:
			t.Fatal("no empty backlog reported")
		}
	}
}

// The per-key lock: a transaction writing a key waits for an open one that
// wrote the same key, so the key's rows commit in sequence order and are
// published in the order the writes committed. Other keys do not wait;
// with NoKeyLock nothing waits.
func TestKeyLockOrdersWriters(t *testing.T) {
	e := newEnv(t, 0)
	ctx := context.Background()
	tr, s := memSink(t, "t")
	e.startRelay(t, tr, outbox.RelayOptions{PollInterval: 20 * time.Millisecond})
	for _, noLock := range []bool{false, true} {
		w := e.outbox(t, outbox.Options{NoKeyLock: noLock})
		key := fmt.Sprintf("k-%v", noLock)
		a, _ := e.db.BeginTx(ctx, nil)
		if err := w.Publish(ctx, outbox.SQL(a), "t", &message.Message{Key: key, Payload: []byte("0")}); err != nil {
			t.Fatal(err)
		}
		// Another key does not wait.
		c, _ := e.db.BeginTx(ctx, nil)
		if err := w.Publish(ctx, outbox.SQL(c), "t", &message.Message{Key: key + "-other", Payload: []byte("0")}); err != nil {
			t.Fatal(err)
		}
		c.Commit()
		done := make(chan error, 1)
		go func() {
			b, err := e.db.BeginTx(ctx, nil)
			if err != nil {
				done <- err
				return
			}
			if err := w.Publish(ctx, outbox.SQL(b), "t", &message.Message{Key: key, Payload: []byte("1")}); err != nil {
				b.Rollback()
				done <- err
				return
			}
			done <- b.Commit()
		}()
		select {
		case err := <-done:
			if !noLock {
				t.Fatalf("second writer of a locked key did not wait (%v)", err)
			}
		case <-time.After(200 * time.Millisecond):
			if noLock {
				t.Fatal("a writer waited with NoKeyLock")
			}
			a.Commit()
			if err := <-done; err != nil {
				t.Fatal(err)
			}
		}
		if noLock {
			a.Commit()
		}
	}
	s.waitN(t, 6, 10*time.Second)
	// With the lock, key k-false arrives 0 then 1.
	var got []string
	for _, m := range s.snapshot() {
		if m.Key == "k-false" {
			got = append(got, string(m.Payload))
		}
	}
	if fmt.Sprint(got) != "[0 1]" {
		t.Fatalf("k-false arrived as %v", got)
	}
}

// In the one-by-one fallback, undeliverable messages are made dead each on
// its own error and the good ones of the same call go through; a transport
// failing everything stops the fallback, and the rows it did not try are
// tried in the next batch, without an attempt counted for the first.
func TestFallbackClassifiesEachMessage(t *testing.T) {
	e := newEnv(t, 1) // one partition: all rows in one batch
	w := e.outbox(t, outbox.Options{})
	ctx := context.Background()
	tr, err := memtransport.New(ctx, memtransport.Options{MaxPayload: 100, MaxBacklog: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	s := &sink{ids: map[string]int{}, more: make(chan struct{}, 1)}
	sctx, cancel := context.WithCancel(ctx)
	subDone := make(chan struct{})
	tr.Declare(ctx, "t", transport.SubscribeOptions{Group: "g"})
	go func() { defer close(subDone); tr.Subscribe(sctx, "t", s, transport.SubscribeOptions{Group: "g"}) }()
	defer func() { cancel(); <-subDone }()
	f := &faulty{Publisher: tr}
	e.startRelay(t, f, outbox.RelayOptions{PollInterval: 20 * time.Millisecond, RetryMin: time.Hour})

	var msgs []*message.Message
	for i := range 4 {
		msgs = append(msgs, &message.Message{Key: fmt.Sprintf("big-%d", i), Payload: make([]byte, 101)})
	}
	msgs = append(msgs, &message.Message{Key: "ok-1", Payload: []byte("0")}, &message.Message{Key: "ok-2", Payload: []byte("0")})
	tx, _ := e.conn.Begin(ctx)
	if err := w.Publish(ctx, outbox.Pgx(tx), "t", msgs...); err != nil {
		t.Fatal(err)
	}
	tx.Commit(ctx)
	s.waitN(t, 2, 10*time.Second)
	waitFor(t, 5*time.Second, "dead rows", func() bool { return e.count(t, "dead_at IS NOT NULL") == 4 })

	// Now the transport fails everything: 6 rows of 6 keys in one call.
	f.set(func() { f.down = true })
	e.writeRows(t, w, "t", 6, 6, 6)
	waitFor(t, 10*time.Second, "failed attempts", func() bool { return e.count(t, "attempts = 1 AND dead_at IS NULL") == 6 })
	if n := e.count(t, "dead_at IS NOT NULL"); n != 4 {
		t.Fatalf("%d dead rows, want the 4 oversized ones", n)
	}
	// First call: 1 group call + 6 single tries; second: 1 group call + 3
	// single tries, then the fallback gives up; the next batch tries the
	// 3 rows left: 1 group call + 3 single tries.
	if got := f.tries.Load(); got != 1+6+1+3+1+3 {
		t.Errorf("%d publish calls, want 15", got)
	}
}

// Maximal schema and table names still make a valid NOTIFY channel.
func TestLongNames(t *testing.T) {
	e := newEnv(t, 0)
	ctx := context.Background()
	long := outbox.Tables{Schema: e.tables.Schema + strings.Repeat("s", 63-len(e.tables.Schema)), Outbox: strings.Repeat("o", 52), Inbox: strings.Repeat("i", 63)}
	if err := outbox.CreateSchema(ctx, outbox.Pgx(e.conn), outbox.SchemaOptions{Tables: long}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.conn.Exec(context.Background(), "DROP SCHEMA "+long.Schema+" CASCADE") })
	w, err := outbox.New(outbox.Options{Tables: long})
	if err != nil {
		t.Fatal(err)
	}
	tr, s := memSink(t, "t")
	app := randName("relay_")
	r, err := outbox.NewRelay(withApp(e.url, app), tr, outbox.RelayOptions{Tables: long, PollInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	defer func() { r.Close(); <-done }()
	e.waitAsleep(t, app) // listening, asleep for an hour
	tx, _ := e.conn.Begin(ctx)
	if err := w.Publish(ctx, outbox.Pgx(tx), "t", &message.Message{Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	s.waitN(t, 1, 10*time.Second) // woken by NOTIFY
}

// A transport error text that PostgreSQL text cannot hold (NUL, invalid
// UTF-8) is cleaned before it is stored in last_error.
func TestUnstorableErrorText(t *testing.T) {
	e := newEnv(t, 0)
	w := e.outbox(t, outbox.Options{})
	tr, _ := memSink(t, "t")
	f := &errPub{Publisher: tr, err: errors.New("bad \x00 bytes \xff\xfe here")}
	e.startRelay(t, f, outbox.RelayOptions{PollInterval: 20 * time.Millisecond, RetryMin: time.Hour})
	e.writeRows(t, w, "t", 1, 0, 1)
	waitFor(t, 10*time.Second, "failure recorded", func() bool { return e.count(t, "attempts = 1") == 1 })
	var last string
	if err := e.conn.QueryRow(context.Background(), "SELECT last_error FROM "+e.tables.Schema+".courier_outbox").Scan(&last); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(last, "bad  bytes") {
		t.Errorf("last_error %q", last)
	}
}

type errPub struct {
	transport.Publisher
	err error
}

func (p *errPub) Publish(context.Context, string, ...*message.Message) error { return p.err }

// A relay whose database is unreachable keeps retrying, reports the errors
// without the password, and stops on Close. NewRelayConfig takes a parsed
// configuration.
func TestRelayUnreachableDatabase(t *testing.T) {
	tr, _ := memSink(t, "t")
	cfg, err := pgx.ParseConfig("postgres://user:s3cretpw@127.0.0.1:1/db?connect_timeout=1")
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 100)
	r, err := outbox.NewRelayConfig(cfg, tr, outbox.RelayOptions{Hooks: outbox.Hooks{OnError: func(err error) {
		select {
		case errs <- err:
		default:
		}
	}}})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background()) }()
	for range 2 {
		select {
		case err := <-errs:
			if strings.Contains(err.Error(), "s3cretpw") {
				t.Fatalf("password in error: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Fatal("no error reported")
		}
	}
	r.Close()
	if err := <-done; err != outbox.ErrRelayClosed {
		t.Fatalf("Run: %v", err)
	}
}

// flaky fails a share of Publish calls before sending anything.
type flaky struct {
	transport.Publisher
	mu    sync.Mutex
	rng   *mathrand.Rand
	rate  float64
	fails atomic.Int64
	log   []*message.Message // every message the transport took, in order
}

func (f *flaky) Publish(ctx context.Context, topic string, msgs ...*message.Message) error {
	f.mu.Lock()
	fail := f.rng.Float64() < f.rate
	f.mu.Unlock()
	if fail {
		f.fails.Add(1)
		return errInjected
	}
	if err := f.Publisher.Publish(ctx, topic, msgs...); err != nil {
		return err
	}
	f.mu.Lock()
	f.log = append(f.log, msgs...)
	f.mu.Unlock()
	return nil
}

// Three relays, a transport failing a fifth of its calls, keys moving
// between two topics: every row is published once and each key stays in
// order across retries, relays and topics.
func TestThreeRelaysWithFailuresKeepOrder(t *testing.T) {
	n := 3000
	if testing.Short() {
		n = 1000
	}
	e := newEnv(t, 16)
	w := e.outbox(t, outbox.Options{})
	ctx := context.Background()
	broker := memtransport.NewBroker()
	tr, err := memtransport.New(ctx, memtransport.Options{Broker: broker, MaxBacklog: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	// One subscriber per topic; each must see its share of every key in
	// order.
	sinks := map[string]*sink{}
	for _, topic := range []string{"a", "b"} {
		s := &sink{ids: map[string]int{}, more: make(chan struct{}, 1)}
		sinks[topic] = s
		opts := transport.SubscribeOptions{Group: "g", MaxInFlight: 1024}
		if err := tr.Declare(ctx, topic, opts); err != nil {
			t.Fatal(err)
		}
		sctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); tr.Subscribe(sctx, topic, s, opts) }()
		defer func() { cancel(); <-done }()
	}
	f := &flaky{Publisher: tr, rng: mathrand.New(mathrand.NewPCG(1, 2)), rate: 0.2}
	for range 3 {
		e.startRelay(t, f, outbox.RelayOptions{BatchSize: 100, MaxPartitions: 4, PollInterval: 10 * time.Millisecond,
			RetryMin: 5 * time.Millisecond, RetryMax: 20 * time.Millisecond})
	}
	// Rows alternate topics within a key: key-k gets positions 0, 1, 2...
	// on topics a, b, a, b...
	pos := map[string]int{}
	for i := 0; i < n; i += 30 {
		tx, _ := e.conn.Begin(ctx)
		for j := i; j < min(n, i+30); j++ {
			k := fmt.Sprintf("key-%d", j%30)
			topic := "a"
			if pos[k]%2 == 1 {
				topic = "b"
			}
			if err := w.Publish(ctx, outbox.Pgx(tx), topic, &message.Message{Key: k, Payload: []byte(strconv.Itoa(pos[k]))}); err != nil {
				t.Fatal(err)
			}
			pos[k]++
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 60*time.Second, "all rows published", func() bool { return sinks["a"].len()+sinks["b"].len() >= n })
	waitFor(t, 10*time.Second, "outbox to drain", func() bool { return e.count(t, "true") == 0 })
	if f.fails.Load() == 0 {
		t.Fatal("no failure was injected")
	}
	// Per topic, each key's positions ascend (a: 0, 2, 4...; b: 1, 3, 5...)
	// with no gaps and no repeats.
	for topic, s := range sinks {
		next := map[string]int{}
		for _, m := range s.snapshot() {
			p, _ := strconv.Atoi(string(m.Payload))
			want, ok := next[m.Key]
			if !ok {
				want = 0
				if topic == "b" {
					want = 1
				}
			}
			if p != want {
				t.Fatalf("topic %s key %s: position %d, want %d", topic, m.Key, p, want)
			}
			next[m.Key] = p + 2
		}
	}
	if got := sinks["a"].len() + sinks["b"].len(); got != n {
		t.Fatalf("%d messages delivered, want %d", got, n)
	}
	// Across both topics, the transport took each key's messages in
	// order: 0, 1, 2... alternating a and b.
	f.mu.Lock()
	checkOrder(t, f.log, n)
	f.mu.Unlock()
	t.Logf("%d publish calls failed and were retried", f.fails.Load())
}

// A Publish that times out is not retried message by message in the same
// batch (that would hold the partitions for PublishTimeout per message):
// the rows are retried later.
func TestPublishTimeoutFailsTheGroup(t *testing.T) {
	e := newEnv(t, 1)
	w := e.outbox(t, outbox.Options{})
	tr, _ := memSink(t, "t")
	g := &gate{Publisher: tr, entered: make(chan struct{}, 1), release: make(chan struct{})} // never released
	var calls atomic.Int64
	counting := &countingPub{Publisher: g, n: &calls}
	e.startRelay(t, counting, outbox.RelayOptions{PollInterval: 20 * time.Millisecond, PublishTimeout: 100 * time.Millisecond, RetryMin: time.Hour})
	e.writeRows(t, w, "t", 10, 10, 10)
	waitFor(t, 10*time.Second, "rows retried later", func() bool { return e.count(t, "attempts = 1") == 10 })
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d publish calls, want 1", n)
	}
}

type countingPub struct {
	transport.Publisher
	n *atomic.Int64
}

func (c *countingPub) Publish(ctx context.Context, topic string, msgs ...*message.Message) error {
	c.n.Add(1)
	return c.Publisher.Publish(ctx, topic, msgs...)
}
