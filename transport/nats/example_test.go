package natstransport_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	natstransport "github.com/courierkit/courier/transport/nats"
)

// Open by URL with a blank import of this package, publish, and consume
// as a group. (Needs a NATS server with JetStream, so it is compiled but
// not run.)
func Example() {
	ctx := context.Background()
	conn, err := transport.Open(ctx, "nats://127.0.0.1:4222?max_age=24h")
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()

	// The group's durable consumer exists from here on: nothing published
	// after this line is lost for it.
	billing := transport.SubscribeOptions{Group: "billing", Concurrency: 4, OrderedByKey: true, DeadLetterTopic: "orders-dlq"}
	if err := conn.Declare(ctx, "orders", billing); err != nil {
		log.Fatal(err)
	}
	m := message.New([]byte(`{"order":42}`))
	m.Key = "customer-7"
	if err := conn.Publish(ctx, "orders", m); err != nil {
		log.Fatal(err)
	}
	sctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	err = conn.Subscribe(sctx, "orders", message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		fmt.Println(m.Topic, m.Key, m.Attempt, string(m.Payload))
		return nil
	}), billing)
	fmt.Println(err)
}

// New with Options: core NATS, token auth, a logger.
func ExampleNew() {
	t, err := natstransport.New(context.Background(), natstransport.Options{
		URL:   "nats://127.0.0.1:4222",
		Token: "s3cret",
		Core:  true,
	})
	if err != nil {
		log.Fatal(err)
	}
	defer t.Close()
	fmt.Println(t.Capabilities().Redelivery)
}
