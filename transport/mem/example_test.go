package memtransport_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	_ "github.com/courierkit/courier/transport/mem"
)

// Two services share a named in-process broker; billing fails once and the
// message is redelivered with a higher attempt count.
func Example() {
	ctx := context.Background()
	conn, err := transport.Open(ctx, "mem://example")
	if err != nil {
		panic(err)
	}
	defer conn.Close()

	opts := transport.SubscribeOptions{Group: "billing"}
	_ = conn.Declare(ctx, "orders", opts) // keep messages for billing from now on
	_ = conn.Publish(ctx, "orders", &message.Message{ID: "order-1", Payload: []byte(`{"total":42}`)})

	sctx, stop := context.WithCancel(ctx)
	err = conn.Subscribe(sctx, "orders", message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		fmt.Printf("%s attempt %d: %s\n", m.ID, m.Attempt, m.Payload)
		if m.Attempt == 1 {
			return errors.New("database busy") // nack: delivered again
		}
		stop()
		return nil
	}), opts)
	fmt.Println("subscribe ended:", err)
	// Output:
	// order-1 attempt 1: {"total":42}
	// order-1 attempt 2: {"total":42}
	// subscribe ended: context canceled
}
