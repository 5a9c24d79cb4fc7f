package otelamqp_test

import (
	"context"
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/courierkit/courier/contrib/otel/otelamqp"
	"github.com/courierkit/courier/message"
)

// The attributes come from the native delivery; other messages get none.
// (The end-to-end test on RabbitMQ is in contrib/otel's adapter tests.)
func TestAttributes(t *testing.T) {
	if kv := otelamqp.Attributes(context.Background(), message.New(nil)); kv != nil {
		t.Errorf("a message without a delivery got %v", kv)
	}
	m := message.New(nil)
	m.SetAs(func(target any) bool {
		p, ok := target.(*amqp.Delivery)
		if ok {
			*p = amqp.Delivery{RoutingKey: "orders.eu", DeliveryTag: 7}
		}
		return ok
	})
	got := map[string]any{}
	for _, kv := range otelamqp.Attributes(context.Background(), m) {
		got[string(kv.Key)] = kv.Value.AsInterface()
	}
	if got["messaging.rabbitmq.destination.routing_key"] != "orders.eu" || got["messaging.rabbitmq.message.delivery_tag"] != int64(7) {
		t.Errorf("attributes %v", got)
	}
}
