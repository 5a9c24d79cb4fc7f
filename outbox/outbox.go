package outbox

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync/atomic"
	"unicode/utf8"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

var (
	// ErrInvalidTableName is returned for a schema or table name that is
	// not a plain SQL identifier.
	ErrInvalidTableName = errors.New("outbox: invalid table name")
	// ErrRelayClosed is returned by Relay.Run after Shutdown or Close,
	// like http.ErrServerClosed.
	ErrRelayClosed = errors.New("outbox: relay closed")
	// ErrPublisherClosed is returned by a TxPublisher used after Close.
	ErrPublisherClosed = fmt.Errorf("outbox: publisher closed: %w", transport.ErrClosed)
	// ErrPartitionCount is returned by CreateSchema when the tables exist
	// with another number of partitions than SchemaOptions.Partitions
	// asks for: the count is fixed when the tables are created.
	ErrPartitionCount = errors.New("outbox: the outbox tables exist with another partition count")
)

// Options configure an Outbox, the writing side.
type Options struct {
	// Tables names the tables; they must match the relay's. Default:
	// courier_outbox in the search_path.
	Tables
	// Limits are checked by Publish (transport.PreparePublish) before
	// anything is written, so that a message the relay's transport could
	// never carry fails inside the business transaction instead of later
	// in the relay. Set it to the relay transport's
	// Capabilities().Limits. Default: no limits beyond valid topic names.
	Limits transport.Limits
	// NoNotify leaves out the pg_notify that wakes relays when the
	// transaction commits; relays then find rows by polling only
	// (RelayOptions.PollInterval). NOTIFY takes a database-wide lock at
	// commit, which matters only at thousands of commits per second.
	// Default: false (notify).
	NoNotify bool
	// NoKeyLock leaves out the per-key transaction lock
	// (pg_advisory_xact_lock on the key's hash) that Publish takes for
	// each non-empty Key. The lock makes concurrent transactions that
	// write the same key commit their rows in the order of their sequence
	// numbers, which is what lets the relay publish a key in order;
	// without it, two transactions racing on one key may be published in
	// either order. Default: false (lock).
	NoKeyLock bool
	// BeforeWrite, when set, is called by Publish for each message before
	// it is stored, with the ctx of the Publish call and the topic: the
	// place to add headers that depend on the writing request, such as the
	// trace context of the request that caused the write
	// (contrib/otel's Instrumentation.OutboxHook writes W3C traceparent
	// and tracestate), so the relay's publish continues that trace.
	//
	// It gets a copy of the message (same ID, key and payload, a header
	// map of its own), so the caller's messages are not changed; what it
	// leaves in the copy's Key and Headers is what is stored, and is
	// validated again against Limits. An error aborts the call before
	// anything is written and is returned wrapped (errors.Is sees it).
	// Called on the caller's goroutine, in message order. Default: nil.
	BeforeWrite func(ctx context.Context, topic string, m *message.Message) error
}

// Outbox writes messages into the outbox table inside the caller's
// transaction. It holds no connection and is safe for concurrent use.
type Outbox struct {
	opts    Options
	n       names
	insertQ string
}

// New returns an Outbox writing to opts.Tables.
func New(opts Options) (*Outbox, error) {
	n, err := opts.Tables.resolve()
	if err != nil {
		return nil, err
	}
	o := &Outbox{opts: opts, n: n}
	var extra string
	if !opts.NoKeyLock {
		extra += fmt.Sprintf(` CROSS JOIN (SELECT count(pg_advisory_xact_lock(%d, l.h)) FROM (SELECT DISTINCT y.h FROM unnest($2::text[], $3::int4[]) AS y(k, h) WHERE y.k <> '' ORDER BY y.h) AS l) AS locks`, n.lockClass)
	}
	if !opts.NoNotify {
		extra += fmt.Sprintf(` CROSS JOIN (SELECT pg_notify(%s, '')) AS wake`, quoteLiteral(n.channel))
	}
	o.insertQ = fmt.Sprintf(`INSERT INTO %s (topic, msg_key, key_hash, msg_id, headers, payload)
SELECT $1, u.k, u.h, u.id, u.hd, u.p
FROM unnest($2::text[], $3::int4[], $4::text[], $5::jsonb[], $6::bytea[]) WITH ORDINALITY AS u(k, h, id, hd, p, ord)%s
ORDER BY u.ord`, n.outbox, extra)
	return o, nil
}

func quoteLiteral(s string) string {
	// s is built from identifiers checked by identRe: no quotes inside.
	return "'" + s + "'"
}

// Publish writes msgs for topic into the outbox through db, which should be
// the transaction of the business write they belong to (*sql.Tx wrapped
// with SQL, pgx.Tx wrapped with Pgx): the messages are published by a
// Relay once, and only if, that transaction commits. Messages keep their
// order: the relay publishes a key's messages in the order they were
// written. Empty IDs are filled in (message.NewID) on the caller's
// messages.
//
// Publish validates everything before writing: the topic name, the
// Options.Limits, and what PostgreSQL text cannot hold (IDs, keys and
// header names and values must be valid UTF-8 without NUL bytes; payloads
// are bytes and carry anything). On error nothing was written, but the
// caller's transaction may be aborted (PostgreSQL aborts a transaction on
// a failed statement): roll it back.
func (o *Outbox) Publish(ctx context.Context, db DB, topic string, msgs ...*message.Message) error {
	if err := db.valid(); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(msgs) == 0 {
		return transport.CheckName("topic", topic, o.opts.Limits.MaxNameLen)
	}
	if err := transport.PreparePublish(topic, msgs, o.opts.Limits); err != nil {
		return err
	}
	if o.opts.BeforeWrite != nil {
		var err error
		if msgs, err = o.beforeWrite(ctx, topic, msgs); err != nil {
			return err
		}
	}
	keys := make([]string, len(msgs))
	hashes := make([]int32, len(msgs))
	ids := make([]string, len(msgs))
	hdrs := make([][]byte, len(msgs))
	payloads := make([][]byte, len(msgs))
	for i, m := range msgs {
		if err := checkText(i, m); err != nil {
			return err
		}
		keys[i], ids[i] = m.Key, m.ID
		hashes[i] = keyHash(m)
		if len(m.Headers) > 0 {
			b, err := json.Marshal(m.Headers)
			if err != nil {
				return fmt.Errorf("outbox: message %d (id %q): headers: %w", i, m.ID, err)
			}
			hdrs[i] = b
		}
		p := m.Payload
		if p == nil {
			p = []byte{}
		}
		payloads[i] = p
	}
	if _, err := db.exec(ctx, o.insertQ, topic, keys, hashes, ids, hdrs, payloads); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("outbox: write %d message(s) to %s: %w", len(msgs), topic, err)
	}
	return nil
}

// beforeWrite returns copies of msgs (IDs already filled in) as
// Options.BeforeWrite left them, validated again.
func (o *Outbox) beforeWrite(ctx context.Context, topic string, msgs []*message.Message) ([]*message.Message, error) {
	out := make([]*message.Message, len(msgs))
	for i, m := range msgs {
		c := *m
		c.Headers = make(message.Header, len(m.Headers)+2)
		for k, v := range m.Headers {
			c.Headers[k] = v
		}
		if err := o.opts.BeforeWrite(ctx, topic, &c); err != nil {
			return nil, fmt.Errorf("outbox: BeforeWrite: message %d (id %q): %w", i, m.ID, err)
		}
		if c.ID != m.ID {
			return nil, fmt.Errorf("%w: message %d: BeforeWrite changed the ID from %q to %q", transport.ErrInvalidMessage, i, m.ID, c.ID)
		}
		out[i] = &c
	}
	if err := transport.PreparePublish(topic, out, o.opts.Limits); err != nil {
		return nil, fmt.Errorf("outbox: after BeforeWrite: %w", err)
	}
	return out, nil
}

// keyHash is the partition hash stored with a row: of the key, or of the
// ID for rows without a key (which have no order to keep).
func keyHash(m *message.Message) int32 {
	if m.Key != "" {
		return int32(fnv32(m.Key) & 0x7fffffff)
	}
	return int32(fnv32(m.ID) & 0x7fffffff)
}

func checkText(i int, m *message.Message) error {
	bad := func(what, s string) error {
		if !utf8.ValidString(s) {
			return fmt.Errorf("%w: message %d (id %q): %s is not valid UTF-8, which a PostgreSQL text column cannot hold", transport.ErrInvalidMessage, i, m.ID, what)
		}
		for j := 0; j < len(s); j++ {
			if s[j] == 0 {
				return fmt.Errorf("%w: message %d (id %q): %s holds a NUL byte, which a PostgreSQL text column cannot hold", transport.ErrInvalidMessage, i, m.ID, what)
			}
		}
		return nil
	}
	if err := bad("id", m.ID); err != nil {
		return err
	}
	if err := bad("key", m.Key); err != nil {
		return err
	}
	for k, v := range m.Headers {
		if err := bad(fmt.Sprintf("header %q", k), k); err != nil {
			return err
		}
		if err := bad(fmt.Sprintf("value of header %q", k), v); err != nil {
			return err
		}
	}
	return nil
}

// Publisher returns a transport.Publisher that writes into the outbox
// through db, so code written against transport.Publisher can publish
// transactionally: pass it a publisher bound to the current transaction.
func (o *Outbox) Publisher(db DB) *TxPublisher {
	return &TxPublisher{o: o, db: db}
}

// TxPublisher is a transport.Publisher writing into the outbox through one
// database handle, usually a transaction. Its Close only makes later
// Publish calls fail with ErrPublisherClosed: the transaction belongs to
// the caller, who commits or rolls it back.
type TxPublisher struct {
	o      *Outbox
	db     DB
	closed atomic.Bool
}

var _ transport.Publisher = (*TxPublisher)(nil)

// Publish is Outbox.Publish through the publisher's handle.
func (p *TxPublisher) Publish(ctx context.Context, topic string, msgs ...*message.Message) error {
	if p.closed.Load() {
		return ErrPublisherClosed
	}
	return p.o.Publish(ctx, p.db, topic, msgs...)
}

// Close makes later Publish calls fail; it never touches the transaction.
func (p *TxPublisher) Close() error {
	p.closed.Store(true)
	return nil
}
