package kafkatransport

import (
	"testing"

	"github.com/IBM/sarama"
)

// Building a delivery's Message allocates nothing when the record has no
// headers but the ID: the delivery itself is Message.As's target, so no
// closure is allocated (the delivery comes from a chunk).
func TestFillAllocations(t *testing.T) {
	cm := &sarama.ConsumerMessage{Topic: "t", Partition: 2, Offset: 9, Value: []byte("payload"),
		Headers: []*sarama.RecordHeader{{Key: []byte(HeaderID), Value: []byte("id-1")}}}
	d := &delivery{pt: &partState{}, cm: cm, attempt: 1}
	if n := testing.AllocsPerRun(100, d.fill); n != 0 {
		t.Errorf("fill: %v allocations, want 0", n)
	}
	m := d.message()
	if m.ID != "id-1" || m.Topic != "t" || string(m.Payload) != "payload" {
		t.Errorf("message %+v", m)
	}
	var got *sarama.ConsumerMessage
	if !m.As(&got) || got != cm {
		t.Fatalf("As(**sarama.ConsumerMessage) = %v", got)
	}
	var sess sarama.ConsumerGroupSession
	if m.As(&sess) {
		t.Error("As(*sarama.ConsumerGroupSession) true without a group session")
	}
	if m.As(new(string)) {
		t.Error("As accepted a target of another type")
	}
	// A redelivery's copy reaches the same record.
	d.attempt = 2
	got = nil
	if r := d.message(); r == m || r.Attempt != 2 || !r.As(&got) || got != cm {
		t.Errorf("redelivery: As = %v, attempt %d", got, r.Attempt)
	}
}
