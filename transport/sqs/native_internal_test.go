package sqstransport

import (
	"testing"
	"time"

	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/courierkit/courier/message"
)

// A received message costs what decoding it costs plus its inflight
// record: the record is Message.As's target, so no closure is allocated.
func TestReceivedAllocations(t *testing.T) {
	var w wire
	if err := encode(&message.Message{ID: message.NewID(), Key: "k", Payload: []byte("payload")}, &w); err != nil {
		t.Fatal(err)
	}
	id, receipt := "sqs-id", "receipt"
	sm := sqstypes.Message{MessageId: &id, ReceiptHandle: &receipt, Body: &w.body, MessageAttributes: w.sqsAttrs(),
		Attributes: map[string]string{"ApproximateReceiveCount": "2", "SentTimestamp": "1700000000000"}}
	decoding := testing.AllocsPerRun(100, func() {
		if _, err := decode(&sm); err != nil {
			t.Fatal(err)
		}
	})
	s := &sub{topic: "t"}
	deadline := time.Now()
	allocs := testing.AllocsPerRun(100, func() { s.received(sm, deadline) })
	if allocs != decoding+1 {
		t.Errorf("received: %v allocations, want %v (decode) + 1 (inflight)", allocs, decoding)
	}
	inf := s.received(sm, deadline)
	m := inf.m
	if m.Topic != "t" || m.Key != "k" || m.Attempt != 2 || string(m.Payload) != "payload" {
		t.Errorf("message %+v", m)
	}
	var got sqstypes.Message
	if !m.As(&got) || got.ReceiptHandle != &receipt || got.MessageId != &id {
		t.Errorf("As(*types.Message) = %+v", got)
	}
	var p *sqstypes.Message
	if !m.As(&p) || p != &inf.sm {
		t.Errorf("As(**types.Message) = %p, want %p", p, &inf.sm)
	}
	if m.As(new(string)) {
		t.Error("As accepted a target of another type")
	}
}
