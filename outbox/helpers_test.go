package outbox_test

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	_ "github.com/jackc/pgx/v5/stdlib"
	"go.uber.org/goleak"

	"github.com/courierkit/courier/internal/testenv"
	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/outbox"
	"github.com/courierkit/courier/transport"
	memtransport "github.com/courierkit/courier/transport/mem"
)

func TestMain(m *testing.M) {
	if os.Getenv(helperEnv) != "" {
		os.Exit(helperMain())
	}
	goleak.VerifyTestMain(m)
}

// pgURL returns the PostgreSQL URL for tests.
func pgURL(t testing.TB) string {
	t.Helper()
	return testenv.Postgres(t)
}

func randName(prefix string) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return prefix + hex.EncodeToString(b[:])
}

// env is one test's database: a private schema with the outbox tables.
type env struct {
	url    string
	tables outbox.Tables
	conn   *pgx.Conn // for assertions and pgx writes
	db     *sql.DB   // database/sql through the pgx stdlib driver
}

func newEnv(t testing.TB, partitions int) *env {
	t.Helper()
	url := pgURL(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		testenv.Unavailable(t, fmt.Sprintf("PostgreSQL: %v", err))
	}
	db, err := sql.Open("pgx", url)
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(16)
	e := &env{url: url, conn: conn, db: db, tables: outbox.Tables{Schema: randName("courier_t_")}}
	if err := outbox.CreateSchema(ctx, outbox.Pgx(conn), outbox.SchemaOptions{Tables: e.tables, Partitions: partitions}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := conn.Exec(ctx, "DROP SCHEMA IF EXISTS "+e.tables.Schema+" CASCADE"); err != nil {
			t.Errorf("drop schema: %v", err)
		}
		conn.Close(ctx)
		db.Close()
	})
	return e
}

func (e *env) outbox(t testing.TB, o outbox.Options) *outbox.Outbox {
	t.Helper()
	o.Tables = e.tables
	w, err := outbox.New(o)
	if err != nil {
		t.Fatal(err)
	}
	return w
}

// count runs a count(*) query.
func (e *env) count(t testing.TB, where string) int {
	t.Helper()
	var n int
	q := fmt.Sprintf("SELECT count(*) FROM %s.courier_outbox WHERE %s", e.tables.Schema, where)
	if err := e.conn.QueryRow(context.Background(), q).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// writeRows writes n messages over keys (key-<i%keys>, empty when keys is
// 0) into the outbox, per transactions of perTx rows, through pgx. The
// payload holds the message's position within its key.
func (e *env) writeRows(t testing.TB, w *outbox.Outbox, topic string, n, keys, perTx int) {
	t.Helper()
	ctx := context.Background()
	perKey := map[string]int{}
	for i := 0; i < n; i += perTx {
		tx, err := e.conn.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		var msgs []*message.Message
		for j := i; j < min(n, i+perTx); j++ {
			key := ""
			if keys > 0 {
				key = fmt.Sprintf("key-%d", j%keys)
			}
			msgs = append(msgs, &message.Message{Key: key, Payload: []byte(fmt.Sprintf("%d", perKey[key]))})
			perKey[key]++
		}
		if err := w.Publish(ctx, outbox.Pgx(tx), topic, msgs...); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			t.Fatal(err)
		}
	}
}

// sink subscribes to a topic of a mem transport and records what arrives.
type sink struct {
	mu   sync.Mutex
	msgs []*message.Message
	ids  map[string]int
	more chan struct{}
}

func (s *sink) Handle(_ context.Context, m *message.Message) error {
	s.mu.Lock()
	s.msgs = append(s.msgs, m.Copy())
	s.ids[m.ID]++
	s.mu.Unlock()
	select {
	case s.more <- struct{}{}:
	default:
	}
	return nil
}

func (s *sink) len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.msgs)
}

func (s *sink) snapshot() []*message.Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*message.Message(nil), s.msgs...)
}

// waitN waits until at least n messages arrived.
func (s *sink) waitN(t testing.TB, n int, d time.Duration) {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for s.len() < n {
		select {
		case <-s.more:
		case <-deadline.C:
			t.Fatalf("sink: %d of %d messages after %s", s.len(), n, d)
		}
	}
}

// stable waits until no message arrived for quiet, then returns the count.
func (s *sink) stable(quiet time.Duration) int {
	for {
		select {
		case <-s.more:
		case <-time.After(quiet):
			return s.len()
		}
	}
}

// memSink returns a mem transport with a group "g" on topic, consumed
// one message at a time (arrival order) into a sink.
func memSink(t testing.TB, topic string) (*memtransport.Transport, *sink) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	tr, err := memtransport.New(ctx, memtransport.Options{MaxBacklog: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	s := &sink{ids: map[string]int{}, more: make(chan struct{}, 1)}
	subOpts := transport.SubscribeOptions{Group: "g", Concurrency: 1, MaxInFlight: 1024}
	if err := tr.Declare(ctx, topic, subOpts); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = tr.Subscribe(ctx, topic, s, subOpts)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		tr.Close()
	})
	return tr, s
}

// startRelay runs a relay until the test ends.
func (e *env) startRelay(t testing.TB, pub transport.Publisher, o outbox.RelayOptions) *outbox.Relay {
	t.Helper()
	o.Tables = e.tables
	r, err := outbox.NewRelay(e.url, pub, o)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background()) }()
	t.Cleanup(func() {
		r.Close()
		if err := <-done; err != outbox.ErrRelayClosed {
			t.Errorf("relay Run returned %v, want ErrRelayClosed", err)
		}
	})
	return r
}

// waitFor polls cond every 10ms until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// withApp returns url with an application_name, to find the relay's
// backends in pg_stat_activity.
func withApp(url, app string) string {
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	return url + sep + "application_name=" + app
}

// waitAsleep waits until the relay connected as app listens and its work
// connection is idle after an empty batch (rolled back): the relay is in
// its poll sleep.
func (e *env) waitAsleep(t testing.TB, app string) {
	t.Helper()
	waitFor(t, 10*time.Second, "relay asleep", func() bool {
		var listening, idle int
		err := e.conn.QueryRow(context.Background(), `SELECT
  count(*) FILTER (WHERE query ILIKE 'listen%' AND state = 'idle'),
  count(*) FILTER (WHERE query ILIKE 'rollback%' AND state = 'idle')
FROM pg_stat_activity WHERE application_name = $1`, app).Scan(&listening, &idle)
		if err != nil {
			t.Fatal(err)
		}
		return listening == 1 && idle == 1
	})
}
