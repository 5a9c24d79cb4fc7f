package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// RelayOptions configure a Relay. The zero value is the defaults.
type RelayOptions struct {
	// Tables names the tables; they must match the writer's. Default:
	// courier_outbox in the search_path.
	Tables
	// BatchSize is the most rows one batch claims, publishes and marks in
	// one transaction. Default: 500.
	BatchSize int
	// MaxPartitions is the most partitions one batch claims (with
	// SELECT ... FOR UPDATE SKIP LOCKED). Smaller values let several
	// relays share a backlog; larger ones make bigger batches when one
	// relay runs alone. Default: a quarter of the schema's partitions, at
	// least 1.
	MaxPartitions int
	// PollInterval is how often the relay looks for rows when no
	// notification came (LISTEN/NOTIFY is the fast path; polling covers
	// writers with NoNotify, a lost listen connection, and rows whose
	// retry delay has passed). Default: 1s.
	PollInterval time.Duration
	// PublishTimeout bounds one Publish call to the transport. Default:
	// 30s.
	PublishTimeout time.Duration
	// RetryMin and RetryMax bound the delay before a row whose publish
	// failed is tried again, counted from the end of its batch's
	// publishing: RetryMin doubled per attempt, up to RetryMax, with
	// jitter (a random 50–100% of it). Later rows of the same key wait
	// behind it; other keys do not. Defaults: 500ms and 1m.
	RetryMin, RetryMax time.Duration
	// MaxAttempts moves a row that failed this many publishes to the
	// dead state (dead_at set, last_error kept) so its key moves on.
	// Errors that cannot succeed on retry (transport.ErrLimit,
	// transport.ErrInvalidName, transport.ErrInvalidMessage,
	// message.Permanent) make a row dead at once. Default: 0, retry
	// for ever.
	MaxAttempts int
	// Retention keeps published rows, marked with published_at, for this
	// long before the relay deletes them (for audit or re-publishing by
	// hand). Default: 0, rows are deleted in the transaction that
	// publishes them.
	Retention time.Duration
	// CleanupInterval is how often the relay deletes published rows older
	// than Retention, 10,000 at a time. Unused when Retention is 0.
	// Default: 1m.
	CleanupInterval time.Duration
	// BacklogInterval is how often Hooks.OnBacklog is called. Unused when
	// it is nil. Default: 15s.
	BacklogInterval time.Duration
	// Logger receives errors (Warn, Error) and lifecycle events (Info,
	// Debug). Default: nil, discard.
	Logger *slog.Logger
	// Hooks receive metrics events.
	Hooks Hooks
}

// Hooks are called by a relay for metrics. Each may be nil. They are called
// from the relay's goroutines (OnError also from the one that listens), so
// they must be safe for concurrent use and return quickly.
type Hooks struct {
	// OnBatch is called after each batch committed.
	OnBatch func(BatchStats)
	// OnFailure is called when publishing n rows to topic failed; the rows
	// will be retried (or were made dead, when dead is true).
	OnFailure func(topic string, n int, dead bool, err error)
	// OnError is called when the relay's own database work failed (the
	// batch was rolled back and will be tried again).
	OnError func(err error)
	// OnBacklog is called every BacklogInterval with the table's backlog.
	OnBacklog func(Backlog)
}

// BatchStats describe one committed batch.
type BatchStats struct {
	Published int           // rows published and marked (or deleted)
	Failed    int           // rows whose publish failed and will be retried
	Dead      int           // rows made dead
	Duration  time.Duration // claim to commit
	// MaxAge is the longest time between a published row's commit in the
	// outbox (its created_at) and its publication: the end-to-end lag.
	MaxAge time.Duration
}

// Backlog describes the rows waiting in the outbox.
type Backlog struct {
	Pending   int64         // rows not yet published (and not dead)
	Dead      int64         // rows made dead, waiting for an operator
	OldestAge time.Duration // age of the oldest pending row; 0 when none
}

// Counters are a relay's running totals since it was made.
type Counters struct {
	Published, Failed, Dead, Batches, Errors int64
}

// Relay moves committed outbox rows to a transport. Several relays,
// in one process or many, may run over the same table: each batch claims
// whole partitions with FOR UPDATE SKIP LOCKED, so no two relays publish
// the same row and each key is published in order by one relay at a time.
type Relay struct {
	cfg        *pgx.ConnConfig // copied for each connection
	secretStrs []string        // never shown in errors and logs
	pub        transport.Publisher
	opts       RelayOptions
	n          names
	log        *slog.Logger

	mu       sync.Mutex
	running  bool
	closed   bool
	stopping chan struct{} // closed by Shutdown/Close: take no new batch
	hardStop context.CancelFunc
	done     chan struct{} // closed when Run returns

	published, failed, dead, batches, errs atomic.Int64

	// pause is set by a batch that left rows untried because the
	// transport failed everything: the loop waits before the next batch.
	// Used by the loop's goroutine only.
	pause bool
}

// NewRelay returns a relay that reads the outbox through connString (a
// PostgreSQL URL or DSN, as pgx.ParseConfig takes) and publishes to pub.
// It connects when Run starts. The relay does not close pub. On its
// connections it turns off idle_in_transaction_session_timeout,
// idle_session_timeout and transaction_timeout (those the server has),
// whatever connString says: see the package documentation.
func NewRelay(connString string, pub transport.Publisher, opts RelayOptions) (*Relay, error) {
	cfg, err := pgx.ParseConfig(connString)
	if err != nil {
		return nil, fmt.Errorf("outbox: relay connection string: %s", transport.RedactSecrets(err.Error(), connString))
	}
	r, err := NewRelayConfig(cfg, pub, opts)
	if err != nil {
		return nil, err
	}
	r.secretStrs = append(r.secretStrs, connString)
	return r, nil
}

// NewRelayConfig is NewRelay with a parsed pgx configuration (for TLS
// settings, a password from a secret store, connection hooks). The relay
// copies it for each connection it opens and does not change it.
func NewRelayConfig(cfg *pgx.ConnConfig, pub transport.Publisher, opts RelayOptions) (*Relay, error) {
	n, err := opts.Tables.resolve()
	if err != nil {
		return nil, err
	}
	if pub == nil {
		return nil, errors.New("outbox: relay needs a publisher")
	}
	if cfg == nil {
		return nil, errors.New("outbox: relay needs a connection configuration")
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = 500
	}
	if opts.PollInterval <= 0 {
		opts.PollInterval = time.Second
	}
	if opts.PublishTimeout <= 0 {
		opts.PublishTimeout = 30 * time.Second
	}
	if opts.RetryMin <= 0 {
		opts.RetryMin = 500 * time.Millisecond
	}
	if opts.RetryMax <= 0 {
		opts.RetryMax = time.Minute
	}
	if opts.RetryMax < opts.RetryMin {
		opts.RetryMax = opts.RetryMin
	}
	if opts.CleanupInterval <= 0 {
		opts.CleanupInterval = time.Minute
	}
	if opts.BacklogInterval <= 0 {
		opts.BacklogInterval = 15 * time.Second
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	return &Relay{
		cfg: cfg.Copy(), pub: pub, opts: opts, n: n,
		log:      log.With("component", "outbox.relay", "table", n.channel),
		stopping: make(chan struct{}),
		done:     make(chan struct{}),
	}, nil
}

// Counters returns the relay's running totals.
func (r *Relay) Counters() Counters {
	return Counters{Published: r.published.Load(), Failed: r.failed.Load(), Dead: r.dead.Load(),
		Batches: r.batches.Load(), Errors: r.errs.Load()}
}

// Run relays rows until ctx ends (it returns ctx.Err()) or Shutdown or
// Close is called (it returns ErrRelayClosed). It survives database and
// transport outages: failed work is rolled back and retried with backoff,
// and rows stay in the outbox until they are published. Run may be
// called once.
func (r *Relay) Run(ctx context.Context) error {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return ErrRelayClosed
	}
	if r.running {
		r.mu.Unlock()
		return errors.New("outbox: relay is already running")
	}
	r.running = true
	hard, cancel := context.WithCancel(ctx)
	r.hardStop = cancel
	r.mu.Unlock()
	defer close(r.done)
	defer cancel()

	wake := make(chan struct{}, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); r.listen(hard, wake) }()
	err := r.loop(hard, wake)
	cancel()
	wg.Wait()
	switch {
	case r.isStopping():
		return ErrRelayClosed
	case ctx.Err() != nil:
		return ctx.Err()
	}
	return err
}

func (r *Relay) isStopping() bool {
	select {
	case <-r.stopping:
		return true
	default:
		return false
	}
}

// Shutdown stops the relay taking new batches, lets the batch in flight
// publish and commit, and returns once Run has returned. When ctx ends
// first, the batch in flight is abandoned as Close does and ctx.Err() is
// returned. Calling it when Run never ran just closes the relay.
func (r *Relay) Shutdown(ctx context.Context) error {
	r.mu.Lock()
	running := r.running
	if !r.closed {
		r.closed = true
		close(r.stopping)
	}
	r.mu.Unlock()
	if !running {
		return nil
	}
	select {
	case <-r.done:
		return nil
	case <-ctx.Done():
		r.mu.Lock()
		r.hardStop()
		r.mu.Unlock()
		<-r.done
		return ctx.Err()
	}
}

// Close stops the relay now: the batch in flight is rolled back, so its
// rows stay in the outbox and are published again later (the messages it
// had already sent are then duplicates). It waits for Run to return.
func (r *Relay) Close() error {
	r.mu.Lock()
	running := r.running
	if !r.closed {
		r.closed = true
		close(r.stopping)
	}
	if r.hardStop != nil {
		r.hardStop()
	}
	r.mu.Unlock()
	if running {
		<-r.done
	}
	return nil
}

// connect opens one connection, retrying with backoff until ctx ends or the
// relay stops.
func (r *Relay) connect(ctx context.Context, what string) (*pgx.Conn, error) {
	delay := 100 * time.Millisecond
	for {
		c, err := pgx.ConnectConfig(ctx, r.cfg.Copy())
		if err == nil {
			if _, err = c.Exec(ctx, sessionSettings(c.PgConn().ParameterStatus("server_version"))); err == nil {
				return c, nil
			}
			_ = c.Close(context.Background())
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		r.reportErr(fmt.Errorf("outbox: relay %s connection: %s", what, transport.RedactSecrets(err.Error(), r.secrets()...)))
		if !r.sleep(ctx, delay, nil) {
			return nil, ErrRelayClosed
		}
		delay = min(delay*2, 5*time.Second)
	}
}

// sessionSettings returns the SET statements the relay runs on each of its
// connections, for a server whose server_version is version. A batch's
// transaction is idle while it publishes, for up to PublishTimeout per
// Publish call: a server or role default of
// idle_in_transaction_session_timeout (or, from PostgreSQL 17,
// transaction_timeout) shorter than that kills the session after the
// messages went out and before the commit, so the batch is published again,
// for ever. idle_session_timeout (PostgreSQL 14) would end the listening
// connection, which is idle by design. The relay's own publish timeout
// bounds the batch instead.
func sessionSettings(version string) string {
	major := 0
	for _, c := range version {
		if c < '0' || c > '9' {
			break
		}
		major = major*10 + int(c-'0')
	}
	q := "SET idle_in_transaction_session_timeout = 0"
	if major >= 14 {
		q += "; SET idle_session_timeout = 0"
	}
	if major >= 17 {
		q += "; SET transaction_timeout = 0"
	}
	return q
}

// secrets are the strings never to show in errors and logs.
func (r *Relay) secrets() []string {
	s := r.secretStrs
	if r.cfg.Password != "" {
		s = append(s[:len(s):len(s)], r.cfg.Password)
	}
	return s
}

func (r *Relay) reportErr(err error) {
	r.errs.Add(1)
	r.log.Warn("outbox relay", "err", err)
	if r.opts.Hooks.OnError != nil {
		r.opts.Hooks.OnError(err)
	}
}

// sleep waits d, a wake-up, or a stop; it reports false on a stop.
func (r *Relay) sleep(ctx context.Context, d time.Duration, wake <-chan struct{}) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-wake:
		return true
	case <-r.stopping:
		return false
	case <-ctx.Done():
		return false
	}
}

// listen keeps a LISTEN connection and signals wake on each notification.
func (r *Relay) listen(ctx context.Context, wake chan<- struct{}) {
	for ctx.Err() == nil {
		c, err := r.connect(ctx, "listen")
		if err != nil {
			return
		}
		_, err = c.Exec(ctx, "LISTEN "+pgx.Identifier{r.n.channel}.Sanitize())
		for err == nil {
			select { // rows may have come while not listening
			case wake <- struct{}{}:
			default:
			}
			_, err = c.WaitForNotification(ctx)
		}
		_ = c.Close(context.Background())
		if ctx.Err() != nil {
			return
		}
		r.reportErr(fmt.Errorf("outbox: relay listen: %w", err))
		if !r.sleep(ctx, time.Second, nil) {
			return
		}
	}
}

// loop runs batches until stopped.
func (r *Relay) loop(ctx context.Context, wake <-chan struct{}) error {
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			_ = conn.Close(context.Background())
		}
	}()
	parts := 0
	errDelay := 100 * time.Millisecond
	lastCleanup := time.Time{}
	lastBacklog := time.Now()
	for {
		if r.isStopping() {
			return ErrRelayClosed
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if conn == nil || conn.IsClosed() {
			var err error
			if conn, err = r.connect(ctx, "work"); err != nil {
				conn = nil
				if r.isStopping() {
					return ErrRelayClosed
				}
				return err
			}
			parts = 0
		}
		if parts == 0 {
			var p, lo, hi int64
			err := conn.QueryRow(ctx, "SELECT count(*), coalesce(min(part), 0), coalesce(max(part), -1) FROM "+r.n.parts).Scan(&p, &lo, &hi)
			if err != nil || p == 0 || lo != 0 || hi != p-1 {
				switch {
				case err != nil:
				case p == 0:
					err = fmt.Errorf("partition table %s is empty: run CreateSchema", r.n.parts)
				default:
					err = fmt.Errorf("partition table %s must hold the partitions 0 to n-1, it has %d rows from %d to %d", r.n.parts, p, lo, hi)
				}
				r.reportErr(fmt.Errorf("outbox: relay: %w", err))
				if !r.sleep(ctx, errDelay, nil) {
					continue
				}
				errDelay = min(errDelay*2, 5*time.Second)
				continue
			}
			parts = int(p)
		}
		// Housekeeping between batches.
		if r.opts.Retention > 0 && time.Since(lastCleanup) >= r.opts.CleanupInterval {
			lastCleanup = time.Now()
			if _, err := r.cleanup(ctx, conn); err != nil && ctx.Err() == nil {
				r.reportErr(fmt.Errorf("outbox: relay cleanup: %w", err))
			}
		}
		if r.opts.Hooks.OnBacklog != nil && time.Since(lastBacklog) >= r.opts.BacklogInterval {
			lastBacklog = time.Now()
			if b, err := backlog(ctx, conn, r.n); err == nil {
				r.opts.Hooks.OnBacklog(b)
			} else if ctx.Err() == nil {
				r.reportErr(fmt.Errorf("outbox: relay backlog: %w", err))
			}
		}

		n, busy, err := r.batch(ctx, conn, parts)
		if err != nil {
			if ctx.Err() != nil {
				if r.isStopping() {
					return ErrRelayClosed
				}
				return ctx.Err()
			}
			if errors.Is(err, errPartitionsChanged) {
				// Count them again before the next claim.
				r.reportErr(fmt.Errorf("outbox: relay: %w", err))
				parts = 0
				continue
			}
			r.reportErr(fmt.Errorf("outbox: relay batch: %w", err))
			if conn.IsClosed() {
				_ = conn.Close(context.Background())
				conn = nil
			}
			r.sleep(ctx, errDelay, nil)
			errDelay = min(errDelay*2, 5*time.Second)
			continue
		}
		errDelay = 100 * time.Millisecond
		switch {
		case r.pause:
			// The transport failed everything: the rows left untried are
			// due at once, so wait as a failed row would before trying
			// them (at most PollInterval).
			r.pause = false
			r.sleep(ctx, min(r.opts.RetryMin, r.opts.PollInterval), nil)
		case n > 0:
			continue // more may be waiting
		case busy:
			// Rows wait in partitions other relays hold: look again soon.
			r.sleep(ctx, 20*time.Millisecond, wake)
		default:
			r.sleep(ctx, r.opts.PollInterval, wake)
		}
	}
}

// errPartitionsChanged is batch's error when the partition table no
// longer has the count the relay claims by.
var errPartitionsChanged = errors.New("the partition table changed while the relay ran (its partition count is fixed: stop every relay to change it)")

type row struct {
	seq      int64
	topic    string
	key      string
	id       string
	headers  []byte
	payload  []byte
	created  time.Time
	attempts int
}

// outcome of one row.
const (
	pending = iota
	sent
	retry
	dead
)

// batch claims partitions, publishes their oldest rows, marks them and
// commits. It returns how many rows it handled, and busy when rows were
// waiting but every partition holding them was claimed by another relay.
func (r *Relay) batch(ctx context.Context, conn *pgx.Conn, parts int) (n int, busy bool, err error) {
	start := time.Now()
	r.pause = false
	tx, err := conn.Begin(ctx)
	if err != nil {
		return 0, false, err
	}
	defer tx.Rollback(context.WithoutCancel(ctx)) //nolint:errcheck // no-op after Commit

	maxParts := r.opts.MaxPartitions
	if maxParts <= 0 {
		maxParts = max(1, parts/4)
	}
	// Claim the partitions of the oldest pending rows that no other relay
	// holds. The claim is made only while the partition table still ends
	// at parts-1 (an index lookup): a relay using a stale count would
	// lock other partitions for a key than a relay using the new one, and
	// both would publish it.
	claimQ := fmt.Sprintf(`SELECT p.part FROM %[2]s p
JOIN (SELECT s.key_hash %% $1 AS part, min(s.seq) AS first
      FROM (SELECT key_hash, seq FROM %[1]s o
            WHERE published_at IS NULL AND dead_at IS NULL AND available_at <= now()
            AND (msg_key = '' OR NOT EXISTS (
        SELECT 1 FROM %[1]s b
        WHERE b.msg_key = o.msg_key AND b.seq < o.seq AND b.attempts > 0
          AND b.published_at IS NULL AND b.dead_at IS NULL AND b.available_at > now()))
            ORDER BY seq LIMIT $2) s
      GROUP BY 1) c ON c.part = p.part
WHERE (SELECT max(part) FROM %[2]s) = $1 - 1
ORDER BY c.first LIMIT $3
FOR UPDATE OF p SKIP LOCKED`, r.n.outbox, r.n.parts)
	rows, err := tx.Query(ctx, claimQ, parts, r.opts.BatchSize, maxParts)
	if err != nil {
		return 0, false, err
	}
	claimed, err := pgx.CollectRows(rows, pgx.RowTo[int32])
	if err != nil {
		return 0, false, err
	}
	if len(claimed) == 0 {
		var waiting bool
		var last *int32
		err := tx.QueryRow(ctx, fmt.Sprintf("SELECT EXISTS (SELECT 1 FROM %s WHERE published_at IS NULL AND dead_at IS NULL AND available_at <= now()), (SELECT max(part) FROM %s)",
			r.n.outbox, r.n.parts)).Scan(&waiting, &last)
		if err == nil && (last == nil || int(*last) != parts-1) {
			err = errPartitionsChanged
		}
		return 0, waiting, err
	}
	// A new statement, so a new snapshot: it sees every commit made by
	// the relay that held these partitions before us.
	rowsQ := fmt.Sprintf(`SELECT seq, topic, msg_key, msg_id, headers, payload, created_at, attempts
FROM %[1]s o
WHERE published_at IS NULL AND dead_at IS NULL AND available_at <= now()
  AND key_hash %% $1 = ANY($2)
  AND (msg_key = '' OR NOT EXISTS (
        SELECT 1 FROM %[1]s b
        WHERE b.msg_key = o.msg_key AND b.seq < o.seq AND b.attempts > 0
          AND b.published_at IS NULL AND b.dead_at IS NULL AND b.available_at > now()))
ORDER BY seq LIMIT $3`, r.n.outbox)
	rows, err = tx.Query(ctx, rowsQ, parts, claimed, r.opts.BatchSize)
	if err != nil {
		return 0, false, err
	}
	var batch []row
	for rows.Next() {
		var w row
		if err := rows.Scan(&w.seq, &w.topic, &w.key, &w.id, &w.headers, &w.payload, &w.created, &w.attempts); err != nil {
			rows.Close()
			return 0, false, err
		}
		batch = append(batch, w)
	}
	if err := rows.Err(); err != nil {
		return 0, false, err
	}
	if len(batch) == 0 {
		return 0, true, nil
	}

	// Before each Publish call but the first, check the session still
	// lives (one round trip): a relay whose session ended has lost its
	// partitions to another relay, which publishes the same rows from
	// their start; going on would interleave the two.
	calls := 0
	alive := func(ctx context.Context) error {
		if calls++; calls == 1 {
			return nil
		}
		pctx, cancel := context.WithTimeout(ctx, r.opts.PublishTimeout)
		defer cancel()
		if err := conn.PgConn().Ping(pctx); err != nil {
			return fmt.Errorf("database session lost while publishing a batch: %w", err)
		}
		return nil
	}
	state, errs, err := r.publish(ctx, batch, alive)
	if ctx.Err() != nil {
		return 0, false, ctx.Err()
	}
	if err != nil {
		return 0, false, err
	}

	// Mark the outcome.
	var sentSeqs []int64
	retries := map[string][]int64{}
	deads := map[string][]int64{}
	var stats BatchStats
	now := time.Now()
	for i, w := range batch {
		switch state[i] {
		case sent:
			sentSeqs = append(sentSeqs, w.seq)
			stats.Published++
			stats.MaxAge = max(stats.MaxAge, now.Sub(w.created))
		case retry:
			msg := errText(errs[i])
			retries[msg] = append(retries[msg], w.seq)
			stats.Failed++
		case dead:
			msg := errText(errs[i])
			deads[msg] = append(deads[msg], w.seq)
			stats.Dead++
		}
	}
	// The messages went out: a lock_timeout or statement_timeout failing
	// the statements that record it (waiting for a row lock, say) would
	// roll the batch back and publish it again, over and over while the
	// wait lasts. They run without either, set in the same round trip.
	b := &pgx.Batch{}
	b.Queue("SET LOCAL lock_timeout = 0")
	b.Queue("SET LOCAL statement_timeout = 0")
	if len(sentSeqs) > 0 {
		if r.opts.Retention > 0 {
			b.Queue(fmt.Sprintf("UPDATE %s SET published_at = now(), last_error = NULL WHERE seq = ANY($1)", r.n.outbox), sentSeqs)
		} else {
			b.Queue(fmt.Sprintf("DELETE FROM %s WHERE seq = ANY($1)", r.n.outbox), sentSeqs)
		}
	}
	// The retry delay counts from now, after the publishes, not from
	// the transaction's start (now()): a publish slower than the delay
	// would make the row due again at once.
	for msg, seqs := range retries {
		b.Queue(fmt.Sprintf(`UPDATE %s SET attempts = attempts + 1, last_error = $2,
  available_at = clock_timestamp() + make_interval(secs => least($4::float8, $3::float8 * power(2, least(attempts, 30))) * (0.5 + random() / 2))
WHERE seq = ANY($1)`, r.n.outbox), seqs, msg, r.opts.RetryMin.Seconds(), r.opts.RetryMax.Seconds())
	}
	for msg, seqs := range deads {
		b.Queue(fmt.Sprintf("UPDATE %s SET attempts = attempts + 1, last_error = $2, dead_at = now() WHERE seq = ANY($1)", r.n.outbox), seqs, msg)
	}
	if b.Len() > 2 {
		if err := tx.SendBatch(ctx, b).Close(); err != nil {
			return 0, false, err
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, false, err
	}
	stats.Duration = time.Since(start)
	r.batches.Add(1)
	r.published.Add(int64(stats.Published))
	r.failed.Add(int64(stats.Failed))
	r.dead.Add(int64(stats.Dead))
	if r.opts.Hooks.OnBatch != nil {
		r.opts.Hooks.OnBatch(stats)
	}
	return len(batch), false, nil
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	s := err.Error()
	if len(s) > 2000 {
		s = s[:2000]
	}
	// last_error is text: no NUL, valid UTF-8 (the cut may split a rune).
	return strings.ToValidUTF8(strings.ReplaceAll(s, "\x00", ""), "\uFFFD")
}

// permanentPublishErr reports errors that a retry cannot fix.
func permanentPublishErr(err error) bool {
	return errors.Is(err, transport.ErrLimit) || errors.Is(err, transport.ErrInvalidName) ||
		errors.Is(err, transport.ErrInvalidMessage) || message.IsPermanent(err)
}

// publish sends the batch's rows, keeping each key's order, and returns the
// outcome of every row (and its error, for failed rows).
//
// Rows are grouped into waves: a key's rows stay in one wave while they go
// to one topic and move to the next wave when the key changes topic, so
// publishing the waves one after the other, each as one Publish per topic,
// sends every key's rows in sequence order. A key whose row failed is
// blocked for the rest of the batch; other keys go on.
//
// alive is called before each Publish call; when it fails, publish stops
// and returns its error.
func (r *Relay) publish(ctx context.Context, batch []row, alive func(context.Context) error) ([]int, []error, error) {
	state := make([]int, len(batch))
	errs := make([]error, len(batch))
	type last struct {
		wave  int
		topic string
	}
	seen := map[string]last{}
	waves := make([]int, len(batch))
	nw := 1
	for i, w := range batch {
		if w.key == "" {
			continue
		}
		if l, ok := seen[w.key]; ok {
			waves[i] = l.wave
			if l.topic != w.topic {
				waves[i] = l.wave + 1
			}
		}
		seen[w.key] = last{waves[i], w.topic}
		nw = max(nw, waves[i]+1)
	}
	blocked := map[string]bool{}
	for wave := 0; wave < nw; wave++ {
		// Topics of this wave, in order of first appearance.
		var topics []string
		groups := map[string][]int{}
		for i, w := range batch {
			if waves[i] != wave || state[i] != pending {
				continue
			}
			if w.key != "" && blocked[w.key] {
				continue
			}
			if _, ok := groups[w.topic]; !ok {
				topics = append(topics, w.topic)
			}
			groups[w.topic] = append(groups[w.topic], i)
		}
		for _, topic := range topics {
			if ctx.Err() != nil {
				return state, errs, nil
			}
			if err := r.publishGroup(ctx, topic, batch, groups[topic], state, errs, blocked, alive); err != nil {
				return state, errs, err
			}
		}
	}
	return state, errs, nil
}

func (r *Relay) toMessage(w row) (*message.Message, error) {
	m := &message.Message{ID: w.id, Key: w.key, Payload: w.payload}
	if len(w.headers) > 0 {
		if err := json.Unmarshal(w.headers, &m.Headers); err != nil {
			return nil, message.Permanent(fmt.Errorf("outbox: row %d: headers: %w", w.seq, err))
		}
	}
	return m, nil
}

func (r *Relay) send(ctx context.Context, topic string, msgs []*message.Message) error {
	pctx, cancel := context.WithTimeout(ctx, r.opts.PublishTimeout)
	defer cancel()
	return r.pub.Publish(pctx, topic, msgs...)
}

// publishGroup publishes rows idx of one topic. When the group publish
// fails it falls back to one message at a time, so that one bad message
// or key does not hold back the others.
// It returns alive's error, when alive failed.
func (r *Relay) publishGroup(ctx context.Context, topic string, batch []row, idx []int, state []int, errs []error, blocked map[string]bool, alive func(context.Context) error) error {
	msgs := make([]*message.Message, 0, len(idx))
	ok := idx[:0:0]
	for _, i := range idx {
		m, err := r.toMessage(batch[i])
		if err != nil {
			r.fail(topic, batch, []int{i}, err, state, errs, blocked)
			continue
		}
		msgs = append(msgs, m)
		ok = append(ok, i)
	}
	if len(ok) == 0 {
		return nil
	}
	if err := alive(ctx); err != nil {
		return err
	}
	err := r.send(ctx, topic, msgs)
	if err == nil {
		for _, i := range ok {
			state[i] = sent
		}
		return nil
	}
	if ctx.Err() != nil {
		return nil
	}
	if len(ok) == 1 || errors.Is(err, context.DeadlineExceeded) {
		// One message, or a transport that did not answer within
		// PublishTimeout: trying each message alone would hold the
		// partitions for that long again per message.
		r.fail(topic, batch, ok, err, state, errs, blocked)
		return nil
	}
	r.log.Debug("outbox relay: group publish failed, trying one by one", "topic", topic, "n", len(ok), "err", err)
	transient := 0 // consecutive failures a retry might fix
	for j, i := range ok {
		w := batch[i]
		if w.key != "" && blocked[w.key] {
			continue
		}
		if transient >= 3 {
			// The transport is failing everything: stop hammering it and
			// leave the rest for the next batch. They were not tried, so
			// they stay as they are: no attempt counted, never made
			// dead, and no retry delay either (a delay on a row with no
			// attempt would not hold back its key's later rows, which
			// the next batches would then publish before it). Their keys
			// wait for the rest of this batch, and the relay pauses
			// before its next batch.
			r.putOff(topic, batch, remaining(ok[j:], batch, blocked), transient, err, blocked)
			return nil
		}
		if aerr := alive(ctx); aerr != nil {
			return aerr
		}
		err = r.send(ctx, topic, msgs[j:j+1])
		if ctx.Err() != nil {
			return nil
		}
		if err == nil {
			state[i] = sent
			transient = 0
			continue
		}
		if !permanentPublishErr(err) {
			transient++
		}
		r.fail(topic, batch, []int{i}, err, state, errs, blocked)
	}
	return nil
}

func remaining(idx []int, batch []row, blocked map[string]bool) []int {
	var out []int
	for _, i := range idx {
		if batch[i].key == "" || !blocked[batch[i].key] {
			out = append(out, i)
		}
	}
	return out
}

// fail records err for rows idx: dead when it cannot succeed or attempts
// ran out, else retry (and the key is blocked for the rest of the batch).
func (r *Relay) fail(topic string, batch []row, idx []int, err error, state []int, errs []error, blocked map[string]bool) {
	nDead, nRetry := 0, 0
	for _, i := range idx {
		w := batch[i]
		errs[i] = err
		if permanentPublishErr(err) || (r.opts.MaxAttempts > 0 && w.attempts+1 >= r.opts.MaxAttempts) {
			state[i] = dead
			nDead++
			continue
		}
		state[i] = retry
		nRetry++
		if w.key != "" {
			blocked[w.key] = true
		}
	}
	if nDead > 0 {
		r.log.Error("outbox relay: rows made dead", "topic", topic, "n", nDead, "err", err)
		if r.opts.Hooks.OnFailure != nil {
			r.opts.Hooks.OnFailure(topic, nDead, true, err)
		}
	}
	if nRetry > 0 {
		r.log.Warn("outbox relay: publish failed, will retry", "topic", topic, "n", nRetry, "err", err)
		if r.opts.Hooks.OnFailure != nil {
			r.opts.Hooks.OnFailure(topic, nRetry, false, err)
		}
	}
}

// putOff leaves rows idx untried (pending, unchanged in the table), blocks
// their keys for the rest of the batch and makes the relay pause before its
// next batch.
func (r *Relay) putOff(topic string, batch []row, idx []int, failures int, last error, blocked map[string]bool) {
	if len(idx) == 0 {
		return
	}
	for _, i := range idx {
		if k := batch[i].key; k != "" {
			blocked[k] = true
		}
	}
	r.pause = true
	r.log.Warn("outbox relay: rows not tried after consecutive publish failures, left for the next batch",
		"topic", topic, "n", len(idx), "failures", failures, "err", last)
}

// cleanup deletes published rows older than Retention, in chunks.
func (r *Relay) cleanup(ctx context.Context, conn *pgx.Conn) (int64, error) {
	var total int64
	q := fmt.Sprintf(`DELETE FROM %[1]s WHERE seq IN (
  SELECT seq FROM %[1]s WHERE published_at IS NOT NULL AND published_at < now() - make_interval(secs => $1)
  LIMIT 10000)`, r.n.outbox)
	for i := 0; i < 100; i++ {
		tag, err := conn.Exec(ctx, q, r.opts.Retention.Seconds())
		if err != nil {
			return total, err
		}
		total += tag.RowsAffected()
		if tag.RowsAffected() < 10000 {
			break
		}
	}
	return total, nil
}

// Backlog returns the outbox's backlog through db.
func (r *Relay) Backlog(ctx context.Context, db DB) (Backlog, error) {
	return backlog(ctx, db, r.n)
}

// Stats returns the backlog of the outbox named by t, through db.
func Stats(ctx context.Context, db DB, t Tables) (Backlog, error) {
	n, err := t.resolve()
	if err != nil {
		return Backlog{}, err
	}
	return backlog(ctx, db, n)
}

type rowQuerier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
}

func backlog(ctx context.Context, db any, n names) (Backlog, error) {
	q := fmt.Sprintf(`SELECT
  (SELECT count(*) FROM %[1]s WHERE published_at IS NULL AND dead_at IS NULL),
  (SELECT count(*) FROM %[1]s WHERE dead_at IS NOT NULL),
  COALESCE((SELECT EXTRACT(EPOCH FROM now() - min(created_at))::float8 FROM %[1]s WHERE published_at IS NULL AND dead_at IS NULL), 0)`, n.outbox)
	var b Backlog
	var age float64
	switch x := db.(type) {
	case rowQuerier:
		if err := x.QueryRow(ctx, q).Scan(&b.Pending, &b.Dead, &age); err != nil {
			return Backlog{}, err
		}
	case DB:
		found, err := x.queryRow(ctx, q, nil, &b.Pending, &b.Dead, &age)
		if err != nil {
			return Backlog{}, err
		}
		if !found {
			return Backlog{}, errors.New("outbox: backlog query returned no row")
		}
	}
	b.OldestAge = time.Duration(age * float64(time.Second))
	return b, nil
}

// RequeueDead makes the dead rows of the outbox named by t publishable
// again (attempts reset, in their original order) and returns how many.
// Fix what made them fail first (a too-small broker limit, a missing
// permission), or they die again.
func RequeueDead(ctx context.Context, db DB, t Tables) (int64, error) {
	n, err := t.resolve()
	if err != nil {
		return 0, err
	}
	if err := db.valid(); err != nil {
		return 0, err
	}
	c, err := db.exec(ctx, fmt.Sprintf("UPDATE %s SET dead_at = NULL, attempts = 0, available_at = now() WHERE dead_at IS NOT NULL", n.outbox))
	if err != nil {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		return 0, fmt.Errorf("outbox: requeue dead rows: %w", err)
	}
	return c, nil
}
