package outbox_test

import (
	"context"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/courierkit/courier/internal/testenv"
	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/outbox"
)

// testenv can start a private PostgreSQL (initdb + pg_ctl, loopback, random
// port) for machines without one at 127.0.0.1:5432; the outbox works on it.
func TestPrivatePostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a PostgreSQL server; skipped under -short")
	}
	url, stop, err := testenv.PostgresSpec.Start(t)
	if err != nil {
		testenv.Unavailable(t, "private PostgreSQL: "+err.Error())
	}
	defer stop()
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, url)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	if err := outbox.CreateSchema(ctx, outbox.Pgx(conn), outbox.SchemaOptions{}); err != nil {
		t.Fatal(err)
	}
	w, _ := outbox.New(outbox.Options{})
	tx, _ := conn.Begin(ctx)
	if err := w.Publish(ctx, outbox.Pgx(tx), "t", &message.Message{Key: "k", Payload: []byte("0")}); err != nil {
		t.Fatal(err)
	}
	tx.Commit(ctx)
	tr, s := memSink(t, "t")
	r, err := outbox.NewRelay(url, tr, outbox.RelayOptions{})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	s.waitN(t, 1, 20*time.Second)
	if err := r.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	<-done
}
