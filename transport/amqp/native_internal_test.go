package amqptransport

import (
	"testing"

	amqp "github.com/rabbitmq/amqp091-go"
)

// A delivery without headers costs its Message and its acker: the acker
// is Message.As's target, so no closure is allocated.
func TestReceiveAllocations(t *testing.T) {
	s := &subscription{t: &Transport{}, topic: "t"}
	ch := &consumerChan{ch: new(amqp.Channel)}
	dv := amqp.Delivery{MessageId: "id-1", Body: []byte("payload"), DeliveryTag: 42, RoutingKey: "k"}
	allocs := testing.AllocsPerRun(100, func() { s.receive(dv, ch, "t.g") })
	if allocs != 2 {
		t.Errorf("receive: %v allocations, want 2 (Message, acker)", allocs)
	}
	m, a := s.receive(dv, ch, "t.g")
	if _, ok := a.(*acker); !ok {
		t.Fatalf("acker %T without a dead-letter exchange", a)
	}
	if m.ID != "id-1" || m.Topic != "t" || m.Attempt != 1 || string(m.Payload) != "payload" {
		t.Errorf("message %+v", m)
	}
	var got amqp.Delivery
	if !m.As(&got) || got.DeliveryTag != 42 || got.RoutingKey != "k" || got.MessageId != "id-1" {
		t.Errorf("As(*amqp.Delivery) = %+v", got)
	}
	var c *amqp.Channel
	if !m.As(&c) || c != ch.ch {
		t.Errorf("As(**amqp.Channel) = %p, want %p", c, ch.ch)
	}
	if m.As(new(string)) || m.As(&ch) {
		t.Error("As accepted a target of another type")
	}

	// With a dead-letter exchange and a group the acker is wrapped; As
	// still reaches the delivery.
	s.t.o.DeadLetterExchange, s.opts.Group = "dlx", "g"
	m, a = s.receive(dv, ch, "t.g")
	if _, ok := a.(*termAcker); !ok {
		t.Fatalf("acker %T with a dead-letter exchange", a)
	}
	got = amqp.Delivery{}
	if !m.As(&got) || got.DeliveryTag != 42 {
		t.Errorf("As(*amqp.Delivery) with a dead-letter exchange = %+v", got)
	}
}
