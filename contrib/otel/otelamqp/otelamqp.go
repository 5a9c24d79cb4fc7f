// Package otelamqp adds what a RabbitMQ delivery knows to courierotel's
// process spans: the routing key it was published with
// (messaging.rabbitmq.destination.routing_key) and its delivery tag
// (messaging.rabbitmq.message.delivery_tag).
//
// It is a package of its own so that courierotel does not link the AMQP
// client into programs that do not use it:
//
//	inst, _ := courierotel.New(courierotel.Options{Attributes: otelamqp.Attributes})
//
// It reads the amqp091.Delivery that courier's RabbitMQ transport
// (transport/amqp) exposes through Message.As; for messages of other
// transports it adds nothing.
package otelamqp

import (
	"context"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/courierkit/courier/message"
)

// Attributes returns the routing key and delivery tag of a message
// received from RabbitMQ, or nil. Its signature is that of
// courierotel.Options.Attributes and ConsumerOptions.Attributes.
func Attributes(_ context.Context, m *message.Message) []attribute.KeyValue {
	var d amqp.Delivery
	if !m.As(&d) {
		return nil
	}
	return []attribute.KeyValue{
		semconv.MessagingRabbitMQDestinationRoutingKeyKey.String(d.RoutingKey),
		semconv.MessagingRabbitMQMessageDeliveryTagKey.Int64(int64(d.DeliveryTag)),
	}
}
