package router_test

import (
	"context"
	"fmt"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/router"
	"github.com/courierkit/courier/transport"
	memtransport "github.com/courierkit/courier/transport/mem"
)

func Example() {
	ctx := context.Background()
	conn, _ := memtransport.New(ctx, memtransport.Options{})
	defer conn.Close()

	r := router.New(conn, router.Options{})
	done := make(chan struct{})
	// Orders: bill them and publish an invoice as a follow-up.
	_ = r.Add(router.Route{
		Topic:     "orders",
		Subscribe: transport.SubscribeOptions{Group: "billing", Concurrency: 4},
		Handler: message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			inv := message.New([]byte("invoice for " + string(m.Payload)))
			return router.PublisherFrom(ctx).Publish(ctx, "invoices", inv)
		}),
	})
	_ = r.Handle("invoices", "mailer", message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		fmt.Printf("%s (correlation %s)\n", m.Payload, m.CorrelationID())
		close(done)
		return nil
	}))
	for _, d := range [][2]string{{"orders", "billing"}, {"invoices", "mailer"}} {
		_ = conn.Declare(ctx, d[0], transport.SubscribeOptions{Group: d[1]})
	}
	go func() { _ = r.Run(ctx) }()

	order := message.New([]byte("order 42"))
	order.SetHeader(message.HeaderCorrelationID, "checkout-7")
	_ = conn.Publish(ctx, "orders", order)
	<-done
	fmt.Println(r.Shutdown(ctx))
	// Output:
	// invoice for order 42 (correlation checkout-7)
	// <nil>
}
