package middleware_test

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/middleware"
	"github.com/courierkit/courier/router"
	"github.com/courierkit/courier/transport"
	memtransport "github.com/courierkit/courier/transport/mem"
)

// The recommended stack on a router: a handler that always fails ends in
// the dead-letter topic after three deliveries of two attempts each.
func ExampleRecommended() {
	ctx := context.Background()
	conn, _ := memtransport.New(ctx, memtransport.Options{})
	defer conn.Close()
	for _, d := range [][2]string{{"payments", "ledger"}, {"payments.dlq", "ops"}} {
		_ = conn.Declare(ctx, d[0], transport.SubscribeOptions{Group: d[1]})
	}

	stack := middleware.Recommended(middleware.StackOptions{
		Store:      middleware.NewMemoryStore(middleware.MemoryStoreOptions{}),
		Retry:      middleware.RetryOptions{MaxAttempts: 2, InitialInterval: time.Millisecond},
		Redelivery: middleware.RedeliveryOptions{InitialDelay: time.Millisecond},
		DeadLetter: middleware.DeadLetterOptions{MaxAttempts: 3},
	})
	r := router.New(conn, router.Options{})
	runs := 0
	_ = r.Add(router.Route{Topic: "payments", Subscribe: transport.SubscribeOptions{Group: "ledger"}, Middleware: stack,
		Handler: message.HandlerFunc(func(context.Context, *message.Message) error {
			runs++
			return errors.New("ledger unavailable")
		})})
	dead := make(chan *message.Message, 1)
	_ = r.Handle("payments.dlq", "ops", message.HandlerFunc(func(_ context.Context, m *message.Message) error {
		dead <- m
		return nil
	}))
	go func() { _ = r.Run(ctx) }()

	_ = conn.Publish(ctx, "payments", message.New([]byte("pay 10")))
	m := <-dead
	_ = r.Shutdown(ctx)
	fmt.Println("handler runs:", runs)
	fmt.Println("reason:", m.Header(message.HeaderDeadLetterReason))
	fmt.Println("attempts:", m.Header(message.HeaderDeadLetterAttempts))
	// Output:
	// handler runs: 6
	// reason: ledger unavailable
	// attempts: 3
}

// Publisher decorators: correlation from the context and validation
// before anything reaches the broker.
func ExampleChainPublisher() {
	ctx := context.Background()
	conn, _ := memtransport.New(ctx, memtransport.Options{})
	defer conn.Close()
	pub := middleware.ChainPublisher(conn, middleware.PropagateCorrelation(), middleware.Validate(middleware.ValidJSON))

	bad := message.New([]byte(`{"amount": `))
	bad.SetHeader(message.HeaderContentType, "application/json")
	err := pub.Publish(middleware.ContextWithCorrelationID(ctx, "checkout-7"), "payments", bad)
	fmt.Println(errors.Is(err, middleware.ErrInvalid))
	fmt.Println(bad.CorrelationID())
	// Output:
	// true
	// checkout-7
}
