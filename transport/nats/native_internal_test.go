package natstransport

import (
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// fakeJSMsg is as much of a jetstream.Msg as receive reads.
type fakeJSMsg struct {
	jetstream.Msg
	hdr  nats.Header
	data []byte
	md   *jetstream.MsgMetadata
}

func (f *fakeJSMsg) Headers() nats.Header                      { return f.hdr }
func (f *fakeJSMsg) Data() []byte                              { return f.data }
func (f *fakeJSMsg) Subject() string                           { return "courier.t" }
func (f *fakeJSMsg) Metadata() (*jetstream.MsgMetadata, error) { return f.md, nil }

// Receiving a JetStream message allocates only the acker that carries the
// Message: the acker is Message.As's target, so no closure is allocated.
func TestReceiveAllocations(t *testing.T) {
	msg := &fakeJSMsg{
		hdr:  nats.Header{hdrMsgID: {"id-1"}},
		data: []byte("payload"),
		md:   &jetstream.MsgMetadata{NumDelivered: 1, Sequence: jetstream.SequencePair{Stream: 7}, Stream: "S"},
	}
	s := &jsSub{topic: "t", inflight: make(map[*jsAcker]struct{})}
	var dv delivery
	allocs := testing.AllocsPerRun(100, func() {
		var ok bool
		if dv, ok = s.receive(msg); !ok {
			t.Fatal("receive refused the message")
		}
		s.untrack(dv.a)
	})
	if allocs != 1 {
		t.Errorf("receive: %v allocations, want 1 (the acker with its Message)", allocs)
	}
	var got jetstream.Msg
	if !dv.m.As(&got) || got != jetstream.Msg(msg) {
		t.Fatalf("As(*jetstream.Msg) = %v", got)
	}
	var nm *nats.Msg
	if dv.m.As(&nm) || dv.m.As(new(string)) {
		t.Error("As accepted a target that is not *jetstream.Msg")
	}
	if dv.m.ID != "id-1" || dv.m.Attempt != 1 || string(dv.m.Payload) != "payload" {
		t.Errorf("message %+v", dv.m)
	}
}

// A core NATS message costs what decoding it costs: As's target is the
// *nats.Msg itself.
func TestCoreMessageAllocations(t *testing.T) {
	msg := &nats.Msg{Subject: "courier.t", Header: nats.Header{hdrMsgID: {"id-2"}, "X-App": {"v"}}, Data: []byte("payload")}
	decoding := testing.AllocsPerRun(100, func() {
		if _, err := decode("t", msg.Header, msg.Data); err != nil {
			t.Fatal(err)
		}
	})
	allocs := testing.AllocsPerRun(100, func() {
		if _, err := coreMessage("t", msg); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != decoding {
		t.Errorf("coreMessage: %v allocations, decode alone %v", allocs, decoding)
	}
	got, _ := coreMessage("t", msg)
	var nm *nats.Msg
	if !got.As(&nm) || nm != msg {
		t.Fatalf("As(**nats.Msg) = %v", nm)
	}
	var jm jetstream.Msg
	if got.As(&jm) || got.As(new(string)) {
		t.Error("As accepted a target that is not **nats.Msg")
	}
	if got.ID != "id-2" || got.Headers.Get("X-App") != "v" {
		t.Errorf("message %+v", got)
	}
}
