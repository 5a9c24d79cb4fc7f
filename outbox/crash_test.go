package outbox_test

import (
	"bufio"
	"context"
	"database/sql"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/courierkit/courier/internal/testenv"
	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/outbox"
	"github.com/courierkit/courier/transport"
	amqptransport "github.com/courierkit/courier/transport/amqp"
)

// The crash test runs the relay in a second process: this test binary,
// re-executed with helperEnv set, which makes TestMain call helperMain
// instead of running tests.
const (
	helperEnv       = "COURIER_OUTBOX_HELPER" // "relay"
	helperURL       = "COURIER_OUTBOX_HELPER_URL"
	helperSchema    = "COURIER_OUTBOX_HELPER_SCHEMA"
	helperKillAfter = "COURIER_OUTBOX_HELPER_HANG_AFTER" // messages; 0 = never hang
	helperBatch     = "COURIER_OUTBOX_HELPER_BATCH"
	helperTransport = "COURIER_OUTBOX_HELPER_TRANSPORT" // a transport URL; empty = the pgSink
	hangLine        = "HANGING-MID-BATCH"
	drainedLine     = "DRAINED"
)

// pgSink is the crash test's broker: a table in PostgreSQL that outlives
// the relay process. Each Publish inserts its messages on its own
// connection, outside the relay's transaction, and commits at once —
// so messages a killed relay had sent stay sent, as on a real broker.
type pgSink struct {
	conn      *pgx.Conn
	table     string
	hangAfter int
	sent      int
	out       *os.File
}

func (p *pgSink) Publish(ctx context.Context, topic string, msgs ...*message.Message) error {
	for _, m := range msgs {
		if _, err := p.conn.Exec(ctx, "INSERT INTO "+p.table+" (msg_id, msg_key, payload) VALUES ($1, $2, $3)", m.ID, m.Key, string(m.Payload)); err != nil {
			return err
		}
		p.sent++
		if p.hangAfter > 0 && p.sent == p.hangAfter {
			// Mid-batch: this message is in the sink, the batch's rows are
			// not marked. Tell the parent and wait to be killed.
			fmt.Fprintln(p.out, hangLine)
			select {}
		}
	}
	return nil
}

func (p *pgSink) Close() error { return nil }

// hanging publishes through a real transport one message at a time, and
// hangs (mid-batch) after hangAfter messages were taken by the broker.
type hanging struct {
	transport.Publisher
	hangAfter int
	sent      int
	out       *os.File
}

func (h *hanging) Publish(ctx context.Context, topic string, msgs ...*message.Message) error {
	if h.hangAfter == 0 {
		return h.Publisher.Publish(ctx, topic, msgs...)
	}
	for _, m := range msgs {
		if err := h.Publisher.Publish(ctx, topic, m); err != nil {
			return err
		}
		h.sent++
		if h.sent == h.hangAfter {
			fmt.Fprintln(h.out, hangLine)
			select {}
		}
	}
	return nil
}

// helperMain is the relay process.
func helperMain() int {
	ctx := context.Background()
	url, schema := os.Getenv(helperURL), os.Getenv(helperSchema)
	hang, _ := strconv.Atoi(os.Getenv(helperKillAfter))
	batch, _ := strconv.Atoi(os.Getenv(helperBatch))
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	var sink transport.Publisher = &pgSink{conn: conn, table: schema + ".sink", hangAfter: hang, out: os.Stdout}
	if tu := os.Getenv(helperTransport); tu != "" {
		tc, err := transport.Open(ctx, tu)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		defer tc.Close()
		sink = &hanging{Publisher: tc, hangAfter: hang, out: os.Stdout}
	}
	tables := outbox.Tables{Schema: schema}
	r, err := outbox.NewRelay(url, sink, outbox.RelayOptions{Tables: tables, BatchSize: batch, PollInterval: 50 * time.Millisecond})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	// Without a hang, run until the outbox is empty, then shut down.
	check, err := pgx.Connect(ctx, url)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	for {
		var n int
		if err := check.QueryRow(ctx, "SELECT count(*) FROM "+schema+".courier_outbox").Scan(&n); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		if n == 0 {
			break
		}
		select {
		case err := <-done:
			fmt.Fprintln(os.Stderr, "relay stopped:", err)
			return 2
		case <-time.After(20 * time.Millisecond):
		}
	}
	if err := r.Shutdown(ctx); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	<-done
	fmt.Println(drainedLine)
	return 0
}

func startHelper(t *testing.T, e *env, hangAfter, batch int, transportURL ...string) (*exec.Cmd, *bufio.Scanner) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(),
		helperEnv+"=relay", helperURL+"="+e.url, helperSchema+"="+e.tables.Schema,
		helperKillAfter+"="+strconv.Itoa(hangAfter), helperBatch+"="+strconv.Itoa(batch))
	if len(transportURL) > 0 {
		cmd.Env = append(cmd.Env, helperTransport+"="+transportURL[0])
	}
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	return cmd, bufio.NewScanner(out)
}

// waitLine reads the helper's stdout until want, failing after d.
func waitLine(t *testing.T, sc *bufio.Scanner, want string, d time.Duration) {
	t.Helper()
	got := make(chan bool, 1)
	go func() {
		for sc.Scan() {
			if strings.TrimSpace(sc.Text()) == want {
				got <- true
				return
			}
		}
		got <- false
	}()
	select {
	case ok := <-got:
		if !ok {
			t.Fatalf("helper exited without printing %s", want)
		}
	case <-time.After(d):
		t.Fatalf("helper did not print %s within %s", want, d)
	}
}

// Crash safety: a relay process SIGKILLed in the middle of a batch, then a
// new relay process: every committed message is published, none lost;
// the duplicates are only messages of the batch in flight; a consumer
// protected by the inbox applies each message exactly once.
func TestCrashMidBatch(t *testing.T) {
	e := newEnv(t, 0)
	ctx := context.Background()
	w := e.outbox(t, outbox.Options{})
	if _, err := e.conn.Exec(ctx, fmt.Sprintf(`CREATE TABLE %[1]s.sink (n bigserial PRIMARY KEY, msg_id text NOT NULL, msg_key text NOT NULL, payload text NOT NULL);
CREATE TABLE %[1]s.effects (msg_id text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())`, e.tables.Schema)); err != nil {
		t.Fatal(err)
	}
	const total, keys, batch = 2000, 20, 200
	e.writeRows(t, w, "t", total, keys, 100)
	// A rolled-back transaction's messages must never show up.
	tx, _ := e.conn.Begin(ctx)
	w.Publish(ctx, outbox.Pgx(tx), "t", &message.Message{ID: "rolled-back", Key: "key-1", Payload: []byte("x")})
	tx.Rollback(ctx)

	// First relay process: killed after 750 messages, i.e. in the middle
	// of its fourth batch.
	const hangAfter = 3*batch + batch/2 + 50
	cmd, out := startHelper(t, e, hangAfter, batch)
	waitLine(t, out, hangLine, 60*time.Second)
	pendingBefore := e.count(t, "true")
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	err := cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatalf("helper did not die of SIGKILL: %v", err)
	}
	var sentBefore int
	e.conn.QueryRow(ctx, "SELECT count(*) FROM "+e.tables.Schema+".sink").Scan(&sentBefore)
	t.Logf("relay process killed after %d messages sent; %d rows still in the outbox", sentBefore, pendingBefore)
	if sentBefore != hangAfter {
		t.Fatalf("sink holds %d messages, want %d", sentBefore, hangAfter)
	}
	if want := total - 3*batch; pendingBefore != want {
		// Three batches committed; the fourth was in flight and rolled back.
		t.Fatalf("%d rows pending after the kill, want %d", pendingBefore, want)
	}

	// Second relay process: runs until the outbox is empty.
	cmd2, out2 := startHelper(t, e, 0, batch)
	waitLine(t, out2, drainedLine, 60*time.Second)
	if err := cmd2.Wait(); err != nil {
		t.Fatalf("second relay: %v", err)
	}

	// Every committed message is in the sink; duplicates only from the
	// batch in flight; per-key order holds within each relay's run.
	rows, err := e.conn.Query(ctx, "SELECT msg_id, msg_key, payload FROM "+e.tables.Schema+".sink ORDER BY n")
	if err != nil {
		t.Fatal(err)
	}
	type got struct{ id, key, payload string }
	var sent []got
	for rows.Next() {
		var g got
		if err := rows.Scan(&g.id, &g.key, &g.payload); err != nil {
			t.Fatal(err)
		}
		sent = append(sent, g)
	}
	if rows.Err() != nil {
		t.Fatal(rows.Err())
	}
	counts := map[string]int{}
	for _, g := range sent {
		counts[g.id]++
	}
	if counts["rolled-back"] != 0 {
		t.Fatal("a rolled-back message was published")
	}
	if len(counts) != total {
		t.Fatalf("%d distinct messages published, want %d: messages were lost", len(counts), total)
	}
	dups := len(sent) - total
	t.Logf("published %d messages for %d rows: %d duplicates (the in-flight batch had sent %d)", len(sent), total, dups, hangAfter-3*batch)
	if dups != hangAfter-3*batch {
		t.Fatalf("%d duplicates, want exactly the %d messages the killed batch had sent", dups, hangAfter-3*batch)
	}
	// Per key, the second run republishes from the first unmarked row, so
	// each key's sequence in the sink is ascending except for one restart.
	for _, run := range [][]got{sent[:sentBefore], sent[sentBefore:]} {
		next := map[string]int{}
		for _, g := range run {
			pos, _ := strconv.Atoi(g.payload)
			if p, ok := next[g.key]; ok && pos != p {
				t.Fatalf("key %s: position %d after %d", g.key, pos, p-1)
			}
			next[g.key] = pos + 1
		}
	}

	// The inbox-protected consumer: deliver everything in the sink,
	// duplicates included, from four concurrent workers.
	in, err := outbox.NewInbox(outbox.SQL(e.db), outbox.InboxOptions{Tables: e.tables})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	h := in.Handler("billing", func(ctx context.Context, tx outbox.DB, m *message.Message) error {
		_, err := tx.SQLExecutor().ExecContext(ctx, "INSERT INTO "+e.tables.Schema+".effects (msg_id) VALUES ($1)", m.ID)
		return err
	})
	work := make(chan got)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for g := range work {
				if err := h.Handle(ctx, &message.Message{ID: g.id, Key: g.key, Payload: []byte(g.payload)}); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for _, g := range sent {
		work <- g
	}
	close(work)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var applied, distinct int
	if err := e.conn.QueryRow(ctx, "SELECT count(*), count(DISTINCT msg_id) FROM "+e.tables.Schema+".effects").Scan(&applied, &distinct); err != nil {
		t.Fatal(err)
	}
	if applied != total || distinct != total {
		t.Fatalf("consumer applied %d effects for %d distinct messages, want %d each", applied, distinct, total)
	}
	t.Logf("inbox consumer: %d deliveries, %d effects applied, each exactly once", len(sent), applied)
}

// The crash test again with RabbitMQ between the relay processes and the
// consumer: the killed relay had 150 messages of its batch confirmed by the
// broker; the restarted relay publishes them again; a consumer subscribed
// through amqptransport with the inbox applies every message once.
func TestCrashMidBatchRabbitMQ(t *testing.T) {
	url := testenv.FindRabbitMQ(t)
	e := newEnv(t, 0)
	ctx := context.Background()
	w := e.outbox(t, outbox.Options{})
	topic := randName("outboxcrash")
	consumer, err := transport.Open(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	subOpts := transport.SubscribeOptions{Group: "billing", Concurrency: 4, MaxInFlight: 64}
	if err := consumer.Declare(ctx, topic, subOpts); err != nil {
		t.Fatal(err)
	}
	defer func() { // on a connection of its own: the adapter's may be gone
		ac, err := amqp.Dial(url)
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		defer ac.Close()
		ch, err := ac.Channel()
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		q := amqptransport.QueueName(topic, subOpts.Group)
		if _, err := ch.QueueDelete(q, false, false, false); err != nil {
			t.Errorf("cleanup queue %s: %v", q, err)
		}
		if err := ch.ExchangeDelete(topic, false, false); err != nil {
			t.Errorf("cleanup exchange %s: %v", topic, err)
		}
	}()
	defer consumer.Close()
	if _, err := e.conn.Exec(ctx, "CREATE TABLE "+e.tables.Schema+".effects (msg_id text NOT NULL)"); err != nil {
		t.Fatal(err)
	}

	const total, keys, batch = 2000, 20, 200
	const hangAfter = 3*batch + batch/2 + 50
	e.writeRows(t, w, topic, total, keys, 100)
	cmd, out := startHelper(t, e, hangAfter, batch, url)
	waitLine(t, out, hangLine, 60*time.Second)
	if err := cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	cmd.Wait()
	if ws, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || !ws.Signaled() || ws.Signal() != syscall.SIGKILL {
		t.Fatal("helper did not die of SIGKILL")
	}
	if got, want := e.count(t, "true"), total-3*batch; got != want {
		t.Fatalf("%d rows pending after the kill, want %d", got, want)
	}
	cmd2, out2 := startHelper(t, e, 0, batch, url)
	waitLine(t, out2, drainedLine, 60*time.Second)
	if err := cmd2.Wait(); err != nil {
		t.Fatalf("second relay: %v", err)
	}

	db, err := sql.Open("pgx", e.url)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	in, err := outbox.NewInbox(outbox.SQL(db), outbox.InboxOptions{Tables: e.tables})
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	var deliveries atomic.Int64
	h := in.Handler("billing", func(ctx context.Context, tx outbox.DB, m *message.Message) error {
		_, err := tx.SQLExecutor().ExecContext(ctx, "INSERT INTO "+e.tables.Schema+".effects (msg_id) VALUES ($1)", m.ID)
		return err
	})
	var failed atomic.Int64
	counted := message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		err := h.Handle(ctx, m)
		if err != nil {
			// Nacked: it comes back, and is counted when it succeeds.
			failed.Add(1)
			t.Logf("delivery of %s failed (will be redelivered): %v", m.ID, err)
			return err
		}
		deliveries.Add(1)
		return nil
	})
	sctx, cancel := context.WithCancel(ctx)
	subDone := make(chan error, 1)
	go func() { subDone <- consumer.Subscribe(sctx, topic, counted, subOpts) }()
	wantDeliveries := int64(total + hangAfter - 3*batch)
	waitFor(t, 60*time.Second, "every delivery", func() bool { return deliveries.Load() >= wantDeliveries })
	cancel()
	<-subDone
	var applied, distinct int
	if err := e.conn.QueryRow(ctx, "SELECT count(*), count(DISTINCT msg_id) FROM "+e.tables.Schema+".effects").Scan(&applied, &distinct); err != nil {
		t.Fatal(err)
	}
	t.Logf("RabbitMQ: %d acked deliveries (%d duplicates from the killed batch), %d failed and redelivered, %d effects applied", deliveries.Load(), deliveries.Load()-total, failed.Load(), applied)
	if applied != total || distinct != total {
		t.Fatalf("applied %d effects for %d distinct messages, want %d each", applied, distinct, total)
	}
	if deliveries.Load() != wantDeliveries {
		t.Fatalf("%d deliveries, want %d", deliveries.Load(), wantDeliveries)
	}
}
