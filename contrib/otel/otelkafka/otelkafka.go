// Package otelkafka adds what a Kafka record knows to courierotel's process
// spans: the partition (messaging.destination.partition.id), the offset
// (messaging.kafka.offset) and, for a record without a value,
// messaging.kafka.message.tombstone. The record key is already there
// (messaging.kafka.message.key, from Message.Key).
//
// It is a package of its own so that courierotel does not link the Kafka
// client into programs that do not use it:
//
//	inst, _ := courierotel.New(courierotel.Options{Attributes: otelkafka.Attributes})
//
// It reads the *sarama.ConsumerMessage that courier's Kafka transport
// (transport/kafka) exposes through Message.As; for messages of other
// transports it adds nothing.
package otelkafka

import (
	"context"
	"strconv"

	"github.com/IBM/sarama"
	"go.opentelemetry.io/otel/attribute"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/courierkit/courier/message"
)

// Attributes returns the partition, offset and tombstone attributes of a
// message received from Kafka, or nil. Its signature is that of
// courierotel.Options.Attributes and ConsumerOptions.Attributes.
func Attributes(_ context.Context, m *message.Message) []attribute.KeyValue {
	var cm *sarama.ConsumerMessage
	if !m.As(&cm) || cm == nil {
		return nil
	}
	kv := []attribute.KeyValue{
		semconv.MessagingDestinationPartitionIDKey.String(strconv.Itoa(int(cm.Partition))),
		semconv.MessagingKafkaOffsetKey.Int64(cm.Offset),
	}
	if cm.Value == nil {
		kv = append(kv, semconv.MessagingKafkaMessageTombstoneKey.Bool(true))
	}
	return kv
}
