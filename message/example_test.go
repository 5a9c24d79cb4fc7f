package message_test

import (
	"context"
	"errors"
	"fmt"

	"github.com/courierkit/courier/message"
)

type OrderCreated struct {
	OrderID string `json:"order_id"`
}

func (OrderCreated) MessageType() string { return "order.created.v1" }

func ExampleEncode() {
	m, _ := message.Encode(OrderCreated{OrderID: "o-42"})
	fmt.Println(string(m.Payload))
	fmt.Println(m.Header(message.HeaderContentType), m.Type())

	o, err := message.Decode[OrderCreated](m)
	fmt.Println(o.OrderID, err)

	_, err = message.Decode[OrderCreated](&message.Message{Payload: []byte("garbage")})
	fmt.Println("poison is permanent:", message.IsPermanent(err))
	// Output:
	// {"order_id":"o-42"}
	// application/json order.created.v1
	// o-42 <nil>
	// poison is permanent: true
}

func ExampleChain() {
	logging := func(next message.Handler) message.Handler {
		return message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			err := next.Handle(ctx, m)
			fmt.Printf("handled %s: %v\n", m.ID, err)
			return err
		})
	}
	h := message.Chain(message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		if len(m.Payload) == 0 {
			return message.Permanent(errors.New("empty order"))
		}
		return nil
	}), logging)
	_ = h.Handle(context.Background(), &message.Message{ID: "a", Payload: []byte("{}")})
	_ = h.Handle(context.Background(), &message.Message{ID: "b"})
	// Output:
	// handled a: <nil>
	// handled b: empty order
}
