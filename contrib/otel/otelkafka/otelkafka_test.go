package otelkafka_test

import (
	"context"
	"testing"

	"github.com/IBM/sarama"

	"github.com/courierkit/courier/contrib/otel/otelkafka"
	"github.com/courierkit/courier/message"
)

// The attributes come from the native record; other messages get none.
// (The end-to-end test on kfake is in contrib/otel's adapter tests.)
func TestAttributes(t *testing.T) {
	if kv := otelkafka.Attributes(context.Background(), message.New(nil)); kv != nil {
		t.Errorf("a message without a Kafka record got %v", kv)
	}
	cm := &sarama.ConsumerMessage{Partition: 3, Offset: 42}
	m := message.New(nil)
	m.SetAs(func(target any) bool {
		p, ok := target.(**sarama.ConsumerMessage)
		if ok {
			*p = cm
		}
		return ok
	})
	got := map[string]any{}
	for _, kv := range otelkafka.Attributes(context.Background(), m) {
		got[string(kv.Key)] = kv.Value.AsInterface()
	}
	if got["messaging.destination.partition.id"] != "3" || got["messaging.kafka.offset"] != int64(42) || got["messaging.kafka.message.tombstone"] != true {
		t.Errorf("attributes %v", got)
	}
}
