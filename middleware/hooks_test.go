package middleware_test

import (
	"context"
	"errors"
	"testing"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/middleware"
)

// OnDeadLetter fires once a dead letter was published, OnDuplicate when a
// processed message is skipped.
func TestObservabilityHooks(t *testing.T) {
	ctx := context.Background()
	rec := &recorder{}
	var dead []string
	dl := middleware.DeadLetter(middleware.DeadLetterOptions{
		Topic: "orders.dlq", Publisher: rec,
		OnDeadLetter: func(_ context.Context, m *message.Message, dlq string, err error) {
			dead = append(dead, m.ID+" "+dlq+" "+err.Error())
		},
	})
	h := dl(message.HandlerFunc(func(context.Context, *message.Message) error {
		return message.Permanent(errors.New("poison"))
	}))
	m := msg("m1")
	m.Topic = "orders"
	if err := h.Handle(ctx, m); err != nil {
		t.Fatalf("dead-lettered message should be acked: %v", err)
	}
	if len(dead) != 1 || dead[0] != "m1 orders.dlq poison" || len(rec.all()) != 1 {
		t.Fatalf("OnDeadLetter calls %v, published %d", dead, len(rec.all()))
	}

	store := middleware.NewMemoryStore(middleware.MemoryStoreOptions{})
	var dups []string
	idem := middleware.Idempotency(store, middleware.IdempotencyOptions{
		OnDuplicate: func(_ context.Context, m *message.Message) { dups = append(dups, m.ID) },
	})
	c := &counter{}
	hh := idem(c)
	for range 3 {
		if err := hh.Handle(ctx, msg("m2")); err != nil {
			t.Fatal(err)
		}
	}
	if c.count() != 1 || len(dups) != 2 {
		t.Fatalf("handled %d times, OnDuplicate %v", c.count(), dups)
	}
}
