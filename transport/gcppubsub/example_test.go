package gcppubsubtransport_test

import (
	"context"
	"fmt"
	"time"

	"cloud.google.com/go/pubsub/v2/pstest"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	gcppubsubtransport "github.com/courierkit/courier/transport/gcppubsub"
)

// A group's subscription is declared first, so that it keeps what is
// published; the handler's nil acks the message. Here against the
// in-process pstest emulator; on Google Cloud, leave Emulator empty.
func ExampleNew() {
	srv := pstest.NewServerWithAddress("127.0.0.1:0")
	defer srv.Close()

	ctx := context.Background()
	conn, err := gcppubsubtransport.New(ctx, gcppubsubtransport.Options{
		Project:  "my-project",
		Emulator: srv.Addr,
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer conn.Close()

	group := transport.SubscribeOptions{Group: "billing", AckWait: 10 * time.Second}
	if err := conn.Declare(ctx, "orders", group); err != nil {
		fmt.Println(err)
		return
	}
	m := message.New([]byte(`{"order":42}`))
	m.Key = "customer-7" // the Pub/Sub ordering key
	if err := conn.Publish(ctx, "orders", m); err != nil {
		fmt.Println(err)
		return
	}

	sctx, stop := context.WithTimeout(ctx, 10*time.Second)
	defer stop()
	_ = conn.Subscribe(sctx, "orders", message.HandlerFunc(func(_ context.Context, m *message.Message) error {
		fmt.Printf("%s %s %s\n", m.Topic, m.Key, m.Payload)
		stop()
		return nil
	}), group)
	// Output: orders customer-7 {"order":42}
}
