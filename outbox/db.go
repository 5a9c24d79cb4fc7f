package outbox

import (
	"context"
	"database/sql"
	"errors"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// SQLExecutor is the part of *sql.Tx, *sql.DB and *sql.Conn the outbox
// uses (database/sql with the pgx stdlib driver, or lib/pq).
type SQLExecutor interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
	QueryContext(ctx context.Context, query string, args ...any) (*sql.Rows, error)
}

// PgxExecutor is the part of pgx.Tx, *pgx.Conn and *pgxpool.Pool the
// outbox uses.
type PgxExecutor interface {
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// DB is a database handle for the outbox and inbox: a database/sql handle
// wrapped with SQL, or a pgx one wrapped with Pgx. When it is a transaction
// (*sql.Tx, pgx.Tx), the outbox's and inbox's statements run inside it and
// commit or roll back with it — that is the point of the outbox.
type DB struct {
	s SQLExecutor
	p PgxExecutor
}

// SQL wraps a database/sql handle: *sql.Tx, *sql.DB or *sql.Conn.
func SQL(x SQLExecutor) DB { return DB{s: x} }

// Pgx wraps a pgx handle: pgx.Tx, *pgx.Conn or *pgxpool.Pool.
func Pgx(x PgxExecutor) DB { return DB{p: x} }

var errNoDB = errors.New("outbox: DB is empty: wrap a handle with outbox.SQL or outbox.Pgx")

func (d DB) valid() error {
	if d.s == nil && d.p == nil {
		return errNoDB
	}
	return nil
}

// execer is the small surface the package's own statements need.
type execer interface {
	exec(ctx context.Context, q string, args ...any) (int64, error)
	// queryRow runs q and scans its first row into dest; found is false
	// when there was no row.
	queryRow(ctx context.Context, q string, args []any, dest ...any) (found bool, err error)
}

func (d DB) exec(ctx context.Context, q string, args ...any) (int64, error) {
	if d.p != nil {
		tag, err := d.p.Exec(ctx, q, args...)
		if err != nil {
			return 0, err
		}
		return tag.RowsAffected(), nil
	}
	res, err := d.s.ExecContext(ctx, q, args...)
	if err != nil {
		return 0, err
	}
	return res.RowsAffected()
}

func (d DB) queryRow(ctx context.Context, q string, args []any, dest ...any) (bool, error) {
	if d.p != nil {
		rows, err := d.p.Query(ctx, q, args...)
		if err != nil {
			return false, err
		}
		defer rows.Close()
		return scanFirst(rows, dest, func() error { rows.Close(); return rows.Err() })
	}
	rows, err := d.s.QueryContext(ctx, q, args...)
	if err != nil {
		return false, err
	}
	defer rows.Close()
	return scanFirst(rows, dest, rows.Close)
}

// scanFirst scans the first row of rows into dest, then closes rows with
// closeErr, which returns the error that ended the rows.
func scanFirst(rows interface {
	Next() bool
	Scan(...any) error
	Err() error
}, dest []any, closeErr func() error) (bool, error) {
	if !rows.Next() {
		return false, rows.Err()
	}
	if err := rows.Scan(dest...); err != nil {
		return false, err
	}
	return true, closeErr()
}

type sqlBeginner interface {
	BeginTx(ctx context.Context, opts *sql.TxOptions) (*sql.Tx, error)
}

type pgxBeginner interface {
	Begin(ctx context.Context) (pgx.Tx, error)
}

// inTx runs fn in a transaction: a new one when d can begin one (a pool, a
// connection; a pgx.Tx begins a savepoint), else d itself (a *sql.Tx).
func (d DB) inTx(ctx context.Context, fn func(context.Context, DB) error) error {
	if err := d.valid(); err != nil {
		return err
	}
	if d.p != nil {
		if b, ok := d.p.(pgxBeginner); ok {
			tx, err := b.Begin(ctx)
			if err != nil {
				return err
			}
			if err := fn(ctx, DB{p: tx}); err != nil {
				_ = tx.Rollback(context.WithoutCancel(ctx))
				return err
			}
			return tx.Commit(ctx)
		}
		return fn(ctx, d)
	}
	if b, ok := d.s.(sqlBeginner); ok {
		tx, err := b.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if err := fn(ctx, DB{s: tx}); err != nil {
			_ = tx.Rollback()
			return err
		}
		return tx.Commit()
	}
	return fn(ctx, d)
}

// SQLExecutor returns the database/sql handle d wraps, or nil. Inside
// Inbox.Handler it is the *sql.Tx.
func (d DB) SQLExecutor() SQLExecutor { return d.s }

// PgxExecutor returns the pgx handle d wraps, or nil. Inside Inbox.Handler
// it is the pgx.Tx.
func (d DB) PgxExecutor() PgxExecutor { return d.p }
