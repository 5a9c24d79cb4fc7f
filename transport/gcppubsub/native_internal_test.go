package gcppubsubtransport

import (
	"testing"

	"cloud.google.com/go/pubsub/v2"
)

// A received message without headers costs its Message, its acker and the
// acker's channel: the acker is Message.As's target, so no closure is
// allocated.
func TestReceiveAllocations(t *testing.T) {
	pm := &pubsub.Message{ID: "ps-1", Data: []byte("payload"), Attributes: map[string]string{idAttr: "id-1"}, OrderingKey: "k"}
	sub := new(pubsub.Subscriber)
	allocs := testing.AllocsPerRun(100, func() { receive(pm, "t", sub) })
	if allocs != 3 {
		t.Errorf("receive: %v allocations, want 3 (Message, acker, channel)", allocs)
	}
	m, _ := receive(pm, "t", sub)
	if m.ID != "id-1" || m.Key != "k" || m.Topic != "t" || string(m.Payload) != "payload" || m.Headers != nil {
		t.Errorf("message %+v", m)
	}
	var got *pubsub.Message
	if !m.As(&got) || got != pm {
		t.Errorf("As(**pubsub.Message) = %p, want %p", got, pm)
	}
	var s *pubsub.Subscriber
	if !m.As(&s) || s != sub {
		t.Errorf("As(**pubsub.Subscriber) = %p, want %p", s, sub)
	}
	if m.As(new(string)) || m.As(new(pubsub.Message)) {
		t.Error("As accepted a target of another type")
	}
}
