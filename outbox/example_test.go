package outbox_test

import (
	"context"
	"database/sql"
	"log"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/outbox"
	"github.com/courierkit/courier/transport"
	memtransport "github.com/courierkit/courier/transport/mem"
)

// The writer side: the order row and its event commit together. (Not run:
// it needs PostgreSQL.)
func Example() {
	ctx := context.Background()
	db, err := sql.Open("pgx", "postgres://postgres@127.0.0.1:5432/test") // pgx stdlib driver
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	if err := outbox.CreateSchema(ctx, outbox.SQL(db), outbox.SchemaOptions{}); err != nil {
		log.Fatal(err)
	}
	conn, _ := memtransport.New(ctx, memtransport.Options{}) // any courier transport
	ob, _ := outbox.New(outbox.Options{Limits: conn.Capabilities().Limits})

	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		log.Fatal(err)
	}
	defer tx.Rollback()
	if _, err := tx.ExecContext(ctx, "INSERT INTO orders (id, total) VALUES ($1, $2)", "o-1", 4200); err != nil {
		log.Fatal(err)
	}
	msg, _ := message.Encode(map[string]any{"order": "o-1", "total": 4200})
	msg.Key = "o-1"
	if err := ob.Publish(ctx, outbox.SQL(tx), "orders", msg); err != nil {
		log.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		log.Fatal(err)
	}
}

// The relay: one or more per deployment, moving committed rows to the
// transport until shut down. (Not run: it needs PostgreSQL.)
func ExampleRelay() {
	ctx := context.Background()
	conn, _ := memtransport.New(ctx, memtransport.Options{})
	r, err := outbox.NewRelay("postgres://postgres@127.0.0.1:5432/test", conn, outbox.RelayOptions{
		Hooks: outbox.Hooks{OnBacklog: func(b outbox.Backlog) {
			log.Printf("outbox backlog: %d rows, oldest %s", b.Pending, b.OldestAge)
		}},
	})
	if err != nil {
		log.Fatal(err)
	}
	go func() {
		<-ctx.Done() // e.g. SIGTERM
		r.Shutdown(context.Background())
	}()
	if err := r.Run(ctx); err != nil && err != outbox.ErrRelayClosed {
		log.Fatal(err)
	}
}

// The inbox: a consumer applies each message once, in one transaction
// with its own writes. (Not run: it needs PostgreSQL.)
func ExampleInbox_Handler() {
	ctx := context.Background()
	db, _ := sql.Open("pgx", "postgres://postgres@127.0.0.1:5432/test")
	defer db.Close()
	in, err := outbox.NewInbox(outbox.SQL(db), outbox.InboxOptions{})
	if err != nil {
		log.Fatal(err)
	}
	defer in.Close()
	h := in.Handler("billing", func(ctx context.Context, tx outbox.DB, m *message.Message) error {
		_, err := tx.SQLExecutor().ExecContext(ctx, "UPDATE accounts SET charged = true WHERE order_id = $1", m.Key)
		return err
	})
	conn, _ := memtransport.New(ctx, memtransport.Options{})
	_ = conn.Subscribe(ctx, "orders", h, transport.SubscribeOptions{Group: "billing"})
}
