package outbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/middleware"
)

// ErrInProgress is returned by Inbox.Mark (and, as a nack with a delay, by
// Inbox.Handler) when another delivery of the same message holds an
// unexpired claim taken with Claim.
var ErrInProgress = errors.New("outbox: inbox: message is being processed by another delivery")

// InboxOptions configure an Inbox.
type InboxOptions struct {
	// Tables names the inbox table (Tables.Inbox). Default:
	// courier_inbox in the search_path.
	Tables
	// Retention is how long a processed record is kept when Done or Mark
	// is given a retention <= 0: redeliveries of a message arriving later
	// than this are processed again. Keep it longer than the broker
	// redelivers (and than the outbox relay can be down). Default: 7 days.
	Retention time.Duration
	// CleanupInterval is how often the inbox deletes expired records in
	// the background, 10,000 at a time. Negative: never (call Cleanup).
	// Default: 10m.
	CleanupInterval time.Duration
	// InProgressDelay is the redelivery delay Inbox.Handler asks for
	// (message.RetryAfter) when another delivery holds the message.
	// Default: 1s.
	InProgressDelay time.Duration
	// Logger receives cleanup errors. Default: nil, discard.
	Logger *slog.Logger
}

// Inbox is the consumer-side de-duplication table on PostgreSQL: it
// remembers which messages were processed so that redeliveries (and the
// duplicates a crashed outbox relay can publish) are applied once.
//
// It is used in one of two ways:
//
//   - Transactionally (exactly-once effects): Mark, or the Handler helper,
//     records the message inside the same transaction as the handler's
//     own writes, so the effects and the "processed" record commit or roll
//     back together. A redelivery after the commit finds the record and is
//     skipped; a crash before the commit leaves neither.
//   - As the middleware.IdempotencyStore behind middleware.Idempotency:
//     Claim, Done and Release, each its own statement on the Inbox's
//     database handle. Done can also run inside the handler's transaction
//     (DoneTx) to make the effects and the record atomic there too.
//
// Inbox is safe for concurrent use by many goroutines and processes.
type Inbox struct {
	db   DB
	n    names
	opts InboxOptions
	log  *slog.Logger

	claimQ, markQ, doneQ, releaseQ, cleanupQ string

	mu     sync.Mutex
	closed bool
	stop   chan struct{}
	wg     sync.WaitGroup
}

var _ middleware.IdempotencyStore = (*Inbox)(nil)

// NewInbox returns an Inbox over db, which should be a pool or database
// (*pgxpool.Pool wrapped with Pgx, *sql.DB with SQL): Claim, Done, Release,
// Cleanup and Handler's transactions run on it. The table must exist
// (CreateSchema). Close stops its background cleanup.
func NewInbox(db DB, opts InboxOptions) (*Inbox, error) {
	if err := db.valid(); err != nil {
		return nil, err
	}
	n, err := opts.Tables.resolve()
	if err != nil {
		return nil, err
	}
	if opts.Retention <= 0 {
		opts.Retention = 7 * 24 * time.Hour
	}
	if opts.CleanupInterval == 0 {
		opts.CleanupInterval = 10 * time.Minute
	}
	if opts.InProgressDelay <= 0 {
		opts.InProgressDelay = time.Second
	}
	log := opts.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	in := &Inbox{db: db, n: n, opts: opts, log: log.With("component", "outbox.inbox"), stop: make(chan struct{})}
	// result: 1 claimed / taken, 2 in progress, 3 processed.
	upsert := func(state int, cond string) string {
		return fmt.Sprintf(`WITH up AS (
  INSERT INTO %[1]s AS i (key, token, state, expires_at)
  VALUES ($1, $2, %[2]d, now() + make_interval(secs => $3::float8))
  ON CONFLICT (key) DO UPDATE SET token = EXCLUDED.token, state = %[2]d, expires_at = EXCLUDED.expires_at
  WHERE %[3]s
  RETURNING 1)
SELECT 1::int4 FROM up
UNION ALL
SELECT CASE WHEN state = 2 THEN 3 ELSE 2 END::int4 FROM %[1]s WHERE key = $1 AND NOT EXISTS (SELECT 1 FROM up)`, n.inbox, state, cond)
	}
	in.claimQ = upsert(1, "i.expires_at <= now() OR (i.state = 1 AND i.token = EXCLUDED.token)")
	in.markQ = upsert(2, "i.expires_at <= now() OR (i.state = 1 AND i.token = EXCLUDED.token AND EXCLUDED.token <> '')")
	in.doneQ = fmt.Sprintf(`INSERT INTO %[1]s AS i (key, token, state, expires_at)
VALUES ($1, $2, 2, now() + make_interval(secs => $3::float8))
ON CONFLICT (key) DO UPDATE SET token = EXCLUDED.token, state = 2, expires_at = EXCLUDED.expires_at`, n.inbox)
	in.releaseQ = fmt.Sprintf(`DELETE FROM %s WHERE key = $1 AND token = $2 AND state = 1`, n.inbox)
	in.cleanupQ = fmt.Sprintf(`DELETE FROM %[1]s WHERE key IN (SELECT key FROM %[1]s WHERE expires_at < now() LIMIT 10000)`, n.inbox)
	if opts.CleanupInterval > 0 {
		in.wg.Add(1)
		go in.cleaner()
	}
	return in, nil
}

func (in *Inbox) isClosed() bool {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.closed
}

// Close stops the background cleanup; later calls return
// middleware.ErrStoreClosed. It does not close the database handle.
func (in *Inbox) Close() error {
	in.mu.Lock()
	if !in.closed {
		in.closed = true
		close(in.stop)
	}
	in.mu.Unlock()
	in.wg.Wait()
	return nil
}

func (in *Inbox) cleaner() {
	defer in.wg.Done()
	t := time.NewTicker(in.opts.CleanupInterval)
	defer t.Stop()
	for {
		select {
		case <-in.stop:
			return
		case <-t.C:
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			if _, err := in.Cleanup(ctx); err != nil {
				in.log.Warn("inbox cleanup", "err", err)
			}
			cancel()
		}
	}
}

// Cleanup deletes expired records (processed records past their retention,
// claims past their TTL) and returns how many.
func (in *Inbox) Cleanup(ctx context.Context) (int64, error) {
	var total int64
	for i := 0; i < 100; i++ {
		n, err := in.db.exec(ctx, in.cleanupQ)
		if err != nil {
			return total, in.wrap(ctx, "cleanup", err)
		}
		total += n
		if n < 10000 {
			break
		}
	}
	return total, nil
}

func (in *Inbox) wrap(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("outbox: inbox %s: %w", op, err)
}

func checkKey(key, token string) error {
	if key == "" || len(key) > 512 {
		return fmt.Errorf("outbox: inbox key must be 1 to 512 bytes, got %d", len(key))
	}
	if len(token) > 64 {
		return fmt.Errorf("outbox: inbox token must be at most 64 bytes, got %d", len(token))
	}
	return nil
}

// upsert runs q (claimQ or markQ) through db and maps the result. The
// statement's fallback SELECT reads the snapshot taken before it waited on
// a concurrent writer of the same key, so it may see no row: then it runs
// again, with a fresh snapshot.
func (in *Inbox) upsert(ctx context.Context, db DB, q, key, token string, secs float64) (middleware.ClaimState, error) {
	for range 5 {
		var res int32
		found, err := db.queryRow(ctx, q, []any{key, token, secs}, &res)
		if err != nil {
			return 0, err
		}
		if !found {
			continue
		}
		switch res {
		case 1:
			return middleware.Claimed, nil
		case 3:
			return middleware.Processed, nil
		default:
			return middleware.InProgress, nil
		}
	}
	return middleware.InProgress, nil
}

// Claim implements middleware.IdempotencyStore.
func (in *Inbox) Claim(ctx context.Context, key, token string, ttl time.Duration) (middleware.ClaimState, error) {
	if in.isClosed() {
		return 0, middleware.ErrStoreClosed
	}
	if err := checkKey(key, token); err != nil {
		return 0, err
	}
	if token == "" {
		return 0, errors.New("outbox: inbox claim needs a token")
	}
	st, err := in.upsert(ctx, in.db, in.claimQ, key, token, ttl.Seconds())
	if err != nil {
		return 0, in.wrap(ctx, "claim", err)
	}
	return st, nil
}

// Done implements middleware.IdempotencyStore.
func (in *Inbox) Done(ctx context.Context, key, token string, retention time.Duration) error {
	if in.isClosed() {
		return middleware.ErrStoreClosed
	}
	return in.DoneTx(ctx, in.db, key, token, retention)
}

// DoneTx is Done through tx, the handler's transaction, so the record
// commits together with the handler's effects.
func (in *Inbox) DoneTx(ctx context.Context, tx DB, key, token string, retention time.Duration) error {
	if err := checkKey(key, token); err != nil {
		return err
	}
	if retention <= 0 {
		retention = in.opts.Retention
	}
	if _, err := tx.exec(ctx, in.doneQ, key, token, retention.Seconds()); err != nil {
		return in.wrap(ctx, "done", err)
	}
	return nil
}

// Release implements middleware.IdempotencyStore.
func (in *Inbox) Release(ctx context.Context, key, token string) error {
	if in.isClosed() {
		return middleware.ErrStoreClosed
	}
	if err := checkKey(key, token); err != nil {
		return err
	}
	if _, err := in.db.exec(ctx, in.releaseQ, key, token); err != nil {
		return in.wrap(ctx, "release", err)
	}
	return nil
}

// Mark records key as processed inside tx, the transaction that also
// holds the handler's writes, and reports whether the caller should apply
// its effects: true the first time, false when key was processed before
// (then the caller applies nothing and acks). Concurrent deliveries of
// one key serialize on the record: the second waits for the first
// transaction and then gets false (or true, if the first rolled back).
// When a delivery holds a Claim on key (the middleware path), Mark returns
// ErrInProgress; token lets the delivery that holds that claim Mark (pass
// "" otherwise). retention <= 0 means InboxOptions.Retention.
//
// If tx is not a transaction (a pool), the record commits at once and the
// exactly-once property is lost: always pass the handler's transaction.
func (in *Inbox) Mark(ctx context.Context, tx DB, key, token string, retention time.Duration) (bool, error) {
	if err := checkKey(key, token); err != nil {
		return false, err
	}
	if retention <= 0 {
		retention = in.opts.Retention
	}
	st, err := in.upsert(ctx, tx, in.markQ, key, token, retention.Seconds())
	if err != nil {
		return false, in.wrap(ctx, "mark", err)
	}
	switch st {
	case middleware.Claimed:
		return true, nil
	case middleware.Processed:
		return false, nil
	}
	return false, ErrInProgress
}

// Handler returns a message.Handler that applies each message once per
// group: in one transaction on the Inbox's database it marks the message
// (key group + "/" + ID, or the ID alone when group is empty: the keys
// middleware.Idempotency stores with that Scope, so both paths recognize
// each other's records) and, when it was not processed before, calls fn
// with that transaction; the transaction commits when fn returns nil and
// rolls back when it returns an error (the message is then nacked and
// redelivered). A message already processed is acked without calling fn.
// fn must make its writes through tx (tx.PgxExecutor() is the pgx.Tx,
// tx.SQLExecutor() the *sql.Tx) and must not commit it.
func (in *Inbox) Handler(group string, fn func(ctx context.Context, tx DB, m *message.Message) error) message.Handler {
	return message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		if in.isClosed() {
			return middleware.ErrStoreClosed
		}
		key := m.ID
		if group != "" {
			key = group + "/" + m.ID
		}
		err := in.db.inTx(ctx, func(ctx context.Context, tx DB) error {
			first, err := in.Mark(ctx, tx, key, "", 0)
			if err != nil {
				return err
			}
			if !first {
				return nil
			}
			return fn(ctx, tx, m)
		})
		if errors.Is(err, ErrInProgress) {
			return message.RetryAfter(err, in.opts.InProgressDelay)
		}
		return err
	})
}
