package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/middleware"
	"github.com/courierkit/courier/router"
	"github.com/courierkit/courier/transport"
	memtransport "github.com/courierkit/courier/transport/mem"
)

// Idempotency with the in-memory store: a message delivered again after
// it was processed is acked without running the handler; a failure
// releases the claim, so the redelivery runs it.
func ExampleIdempotency() {
	ctx := context.Background()
	store := middleware.NewMemoryStore(middleware.MemoryStoreOptions{})
	defer store.Close()

	calls := 0
	h := message.Chain(message.HandlerFunc(func(_ context.Context, m *message.Message) error {
		calls++
		if calls == 1 {
			return errors.New("database busy") // the first delivery fails
		}
		fmt.Printf("charged %s\n", m.Payload)
		return nil
	}), middleware.Idempotency(store, middleware.IdempotencyOptions{
		Scope: "billing", // outside a Router there is no group to scope by
		OnDuplicate: func(_ context.Context, m *message.Message) {
			fmt.Printf("duplicate %s skipped\n", m.Payload)
		},
	}))

	m := message.New([]byte("order 42"))
	fmt.Println("delivery 1:", h.Handle(ctx, m))
	fmt.Println("delivery 2:", h.Handle(ctx, m))
	fmt.Println("delivery 3:", h.Handle(ctx, m))
	fmt.Println("handler calls:", calls)
	// Output:
	// delivery 1: database busy
	// charged order 42
	// delivery 2: <nil>
	// duplicate order 42 skipped
	// delivery 3: <nil>
	// handler calls: 2
}

// One Breaker shared by two routes that call the same downstream, with
// its Check in the router's health: once it opens, the router reports
// not ready, and both routes' messages wait in the broker.
func ExampleBreaker_Check() {
	ctx := context.Background()
	conn, _ := memtransport.New(ctx, memtransport.Options{})
	defer conn.Close()
	for _, t := range []string{"invoices", "refunds"} {
		_ = conn.Declare(ctx, t, transport.SubscribeOptions{Group: "payments"})
	}

	opened := make(chan struct{})
	breaker := middleware.NewBreaker(middleware.BreakerOptions{
		Name:                "payment-gateway",
		ConsecutiveFailures: 2,
		Timeout:             time.Hour,
		OnStateChange: func(_ string, _, to gobreaker.State) {
			if to == gobreaker.StateOpen {
				close(opened)
			}
		},
	})
	r := router.New(conn, router.Options{
		Checks: []router.Check{{Name: "payment-gateway", Func: breaker.Check}},
	})
	gateway := message.HandlerFunc(func(context.Context, *message.Message) error {
		return errors.New("gateway timeout")
	})
	for _, t := range []string{"invoices", "refunds"} {
		_ = r.Add(router.Route{Topic: t, Subscribe: transport.SubscribeOptions{Group: "payments"},
			Handler: gateway, Middleware: []message.Middleware{breaker.Middleware()}})
	}
	go func() { _ = r.Run(ctx) }()

	// One failure on each route: the shared breaker counts both.
	_ = conn.Publish(ctx, "invoices", message.New(nil))
	_ = conn.Publish(ctx, "refunds", message.New(nil))
	<-opened

	h := r.Health(ctx)
	fmt.Println("ready:", h.Ready)
	fmt.Printf("%s: %s (%s)\n", h.Checks[0].Name, h.Checks[0].Status, h.Checks[0].Error)
	_ = r.Close()
	<-r.Done()
	// Output:
	// ready: false
	// payment-gateway: failing (middleware: circuit breaker "payment-gateway" is open)
}
