package outbox

import (
	"context"
	"fmt"
	"regexp"
	"strings"
)

// DefaultTable is the outbox table's name when Tables.Outbox is empty; the
// partition table is the outbox table's name plus "_partitions".
const DefaultTable = "courier_outbox"

// DefaultInboxTable is the inbox table's name when Tables.Inbox is empty.
const DefaultInboxTable = "courier_inbox"

// DefaultPartitions is how many partitions CreateSchema makes when
// SchemaOptions.Partitions is 0.
const DefaultPartitions = 64

// Tables names the tables the outbox, the relay and the inbox use. The zero
// value is courier_outbox, courier_outbox_partitions and courier_inbox in
// the connection's search_path. The writer, every relay and CreateSchema
// must be given the same Tables.
type Tables struct {
	// Schema is the PostgreSQL schema holding the tables. Default: ""
	// (unqualified names, resolved through search_path).
	Schema string
	// Outbox is the outbox table. Default: "courier_outbox".
	Outbox string
	// Inbox is the inbox table. Default: "courier_inbox".
	Inbox string
}

var identRe = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]{0,62}$`)

// names holds the quoted, qualified names derived from Tables.
type names struct {
	outbox, parts, inbox string // qualified and quoted
	channel              string // LISTEN/NOTIFY channel
	lockClass            int32  // first key of the per-key advisory locks
	plain                string // unquoted outbox name, for index names
	plainInbox           string
	schemaQ              string // quoted schema or ""
}

func (t Tables) resolve() (names, error) {
	if t.Outbox == "" {
		t.Outbox = DefaultTable
	}
	if t.Inbox == "" {
		t.Inbox = DefaultInboxTable
	}
	for _, id := range []string{t.Schema, t.Outbox, t.Inbox} {
		if id != "" && !identRe.MatchString(id) {
			return names{}, fmt.Errorf("%w: %q (use [A-Za-z_][A-Za-z0-9_]*, at most 63 characters)", ErrInvalidTableName, id)
		}
	}
	if len(t.Outbox) > 63-len("_partitions") {
		return names{}, fmt.Errorf("%w: %q is too long to derive the partition table's name", ErrInvalidTableName, t.Outbox)
	}
	q := func(id string) string { return `"` + id + `"` }
	var n names
	prefix := ""
	if t.Schema != "" {
		n.schemaQ = q(t.Schema)
		prefix = n.schemaQ + "."
	}
	n.outbox = prefix + q(t.Outbox)
	n.parts = prefix + q(t.Outbox+"_partitions")
	n.inbox = prefix + q(t.Inbox)
	n.plain = t.Outbox
	n.plainInbox = t.Inbox
	ch := t.Outbox
	if t.Schema != "" {
		ch = t.Schema + "." + t.Outbox
	}
	if len(ch) > 63 {
		// pg_notify refuses channel names of 64 bytes or more.
		ch = fmt.Sprintf("courier_outbox_%08x", fnv32(ch))
	}
	n.channel = ch
	n.lockClass = int32(fnv32(ch) & 0x7fffffff)
	return n, nil
}

// SchemaOptions configure CreateSchema and SchemaSQL.
type SchemaOptions struct {
	Tables
	// Partitions is the number of partitions the relay claims rows by: a
	// row belongs to partition hash(Key) mod Partitions (hash(ID) for rows
	// without a key), and one relay at a time holds a partition, which is
	// how several relays keep per-key order. More partitions spread a
	// backlog of many keys over more relays. It is fixed when the tables
	// are created (it is the number of rows of the partition table):
	// CreateSchema on existing tables never changes it, and returns
	// ErrPartitionCount when Partitions is set and differs (0 accepts the
	// existing count). To change it, stop every relay and rewrite that
	// table (its rows are 0 to Partitions-1). Default: 64 for new tables.
	Partitions int
}

// SchemaSQL returns the SQL that creates the outbox and inbox tables, for
// migration tools; CreateSchema runs the same statements. Every statement
// is idempotent (IF NOT EXISTS, ON CONFLICT DO NOTHING), and the partition
// rows are inserted only into an empty partition table, so running it
// against existing tables never changes their partition count (it does not
// check it either: CreateSchema does). Run as it is, its CREATE INDEX IF NOT
// EXISTS statements lock their tables against writes until the migration
// commits even when the indexes exist (CreateSchema skips existing ones).
func SchemaSQL(opts SchemaOptions) (string, error) {
	n, err := opts.Tables.resolve()
	if err != nil {
		return "", err
	}
	p := opts.Partitions
	if p <= 0 {
		p = DefaultPartitions
	}
	if p > 1<<15 {
		return "", fmt.Errorf("outbox: %d partitions is more than the 32768 supported", p)
	}
	var b strings.Builder
	if n.schemaQ != "" {
		fmt.Fprintf(&b, "CREATE SCHEMA IF NOT EXISTS %s;\n\n", n.schemaQ)
	}
	fmt.Fprintf(&b, `CREATE TABLE IF NOT EXISTS %[1]s (
    seq          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    topic        text        NOT NULL,
    msg_key      text        NOT NULL DEFAULT '',
    key_hash     integer     NOT NULL,
    msg_id       text        NOT NULL,
    headers      jsonb,
    payload      bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    available_at timestamptz NOT NULL DEFAULT now(),
    attempts     integer     NOT NULL DEFAULT 0,
    last_error   text,
    published_at timestamptz,
    dead_at      timestamptz
);
CREATE INDEX IF NOT EXISTS %[2]s ON %[1]s (seq) WHERE published_at IS NULL AND dead_at IS NULL;
CREATE INDEX IF NOT EXISTS %[3]s ON %[1]s (msg_key, seq) WHERE published_at IS NULL AND dead_at IS NULL AND attempts > 0;
CREATE INDEX IF NOT EXISTS %[4]s ON %[1]s (published_at) WHERE published_at IS NOT NULL;

CREATE TABLE IF NOT EXISTS %[5]s (
    part integer PRIMARY KEY
);
INSERT INTO %[5]s (part) SELECT generate_series(0, %[6]d - 1)
    WHERE NOT EXISTS (SELECT 1 FROM %[5]s) ON CONFLICT DO NOTHING;

CREATE TABLE IF NOT EXISTS %[7]s (
    key        text        PRIMARY KEY,
    token      text        NOT NULL DEFAULT '',
    state      smallint    NOT NULL,
    expires_at timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS %[8]s ON %[7]s (expires_at);
`, n.outbox, quoteIdent(n.plain+"_pending"), quoteIdent(n.plain+"_retrying"), quoteIdent(n.plain+"_published"),
		n.parts, p, n.inbox, quoteIdent(n.plainInbox+"_expires"))
	return b.String(), nil
}

func quoteIdent(s string) string {
	if len(s) > 63 {
		s = s[:63]
	}
	return `"` + s + `"`
}

// CreateSchema creates the outbox, partition and inbox tables and their
// indexes when they do not exist (SchemaSQL shows the statements). It runs
// them in one transaction, under an advisory lock so that several
// processes starting at once do not race. db is a *sql.DB, *sql.Conn,
// *pgx.Conn or *pgxpool.Pool, wrapped with SQL or Pgx. It skips the indexes
// that exist (CREATE INDEX IF NOT EXISTS would lock their table against
// writes, and wait for the transactions writing to it), so on existing
// tables it neither waits for nor holds up the application's writes.
//
// It never changes the partition count of existing tables: when they
// exist with another count than a non-zero opts.Partitions, it changes
// nothing and returns an error matching ErrPartitionCount. Refusing is
// safer than going on with the old count in silence: the caller asked
// for a layout it does not get, and a deploy that meant to change the
// count fails at start instead of running as if it had.
func CreateSchema(ctx context.Context, db DB, opts SchemaOptions) error {
	stmts, err := SchemaSQL(opts)
	if err != nil {
		return err
	}
	n, _ := opts.Tables.resolve()
	return db.inTx(ctx, func(ctx context.Context, x DB) error {
		if _, err := x.exec(ctx, "SELECT pg_advisory_xact_lock($1, 0)", n.lockClass); err != nil {
			return err
		}
		if opts.Partitions > 0 {
			var exists bool
			var have int64
			if _, err := x.queryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", []any{n.parts}, &exists); err != nil {
				return fmt.Errorf("outbox: create schema: %w", err)
			}
			if exists {
				if _, err := x.queryRow(ctx, "SELECT count(*) FROM "+n.parts, nil, &have); err != nil {
					return fmt.Errorf("outbox: create schema: %w", err)
				}
			}
			if have > 0 && have != int64(opts.Partitions) {
				return fmt.Errorf("%w: %s has %d partitions, SchemaOptions.Partitions is %d (stop every relay and rewrite the table to change it)",
					ErrPartitionCount, n.parts, have, opts.Partitions)
			}
		}
		for _, s := range strings.Split(stmts, ";\n") {
			if strings.TrimSpace(s) == "" {
				continue
			}
			// CREATE INDEX IF NOT EXISTS takes a SHARE lock on its
			// table before it finds the index exists, and holds it to
			// the commit: it would wait for every open transaction
			// that wrote to the table, and every new write would wait
			// behind it. Existing indexes are skipped instead.
			if idx, ok := strings.CutPrefix(strings.TrimSpace(s), "CREATE INDEX IF NOT EXISTS "); ok {
				name, _, _ := strings.Cut(idx, " ")
				if n.schemaQ != "" {
					name = n.schemaQ + "." + name
				}
				var exists bool
				if _, err := x.queryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", []any{name}, &exists); err != nil {
					return fmt.Errorf("outbox: create schema: %w", err)
				}
				if exists {
					continue
				}
			}
			if _, err := x.exec(ctx, s); err != nil {
				return fmt.Errorf("outbox: create schema: %w", err)
			}
		}
		return nil
	})
}

// DropSchema drops the tables CreateSchema made (and the schema, when
// Tables.Schema is set and the schema is then empty). For tests and
// teardown.
func DropSchema(ctx context.Context, db DB, t Tables) error {
	n, err := t.resolve()
	if err != nil {
		return err
	}
	return db.inTx(ctx, func(ctx context.Context, x DB) error {
		if _, err := x.exec(ctx, fmt.Sprintf("DROP TABLE IF EXISTS %s, %s, %s", n.outbox, n.parts, n.inbox)); err != nil {
			return err
		}
		if n.schemaQ != "" {
			if _, err := x.exec(ctx, "DROP SCHEMA IF EXISTS "+n.schemaQ+" RESTRICT"); err != nil {
				return err
			}
		}
		return nil
	})
}

// fnv32 is FNV-1a, 32 bits: the partition hash of keys and IDs. It is part
// of the table format (rows store it), so it must never change.
func fnv32(s string) uint32 {
	h := uint32(2166136261)
	for i := 0; i < len(s); i++ {
		h ^= uint32(s[i])
		h *= 16777619
	}
	return h
}
