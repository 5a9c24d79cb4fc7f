package natstransport

import (
	"testing"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/courierkit/courier/message"
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

// The Nats-Msg-Id of an ordinary message in per-topic-stream mode is its
// ID, as before; a dead-letter copy or a bound stream scope it, and the ID
// travels in Courier-Id, decoded back unchanged (quoted or not).
func TestDedupIDWire(t *testing.T) {
	plain := &message.Message{ID: "id-1", Payload: []byte("x")}
	msg, err := encode(0, "courier.t", plain, dedupID("", "courier.t", plain))
	if err != nil {
		t.Fatal(err)
	}
	if got := msg.Header.Get(hdrMsgID); got != "id-1" || msg.Header.Get(hdrID) != "" {
		t.Fatalf("ordinary message: Nats-Msg-Id %q, Courier-Id %q", got, msg.Header.Get(hdrID))
	}
	dl := func(id, topic, group string) *message.Message {
		return &message.Message{ID: id, Headers: message.Header{message.HeaderDeadLetterTopic: topic, message.HeaderDeadLetterGroup: group}}
	}
	ids := map[string]string{}
	for name, c := range map[string]struct {
		bound, subject string
		m              *message.Message
	}{
		"bound a":        {"S", "courier.a", plain},
		"bound b":        {"S", "courier.b", plain},
		"dl g1":          {"", "courier.dlq", dl("id-1", "orders", "g1")},
		"dl g2":          {"", "courier.dlq", dl("id-1", "orders", "g2")},
		"dl ambiguous":   {"", "courier.dlq", dl("id-1", "orders\" dead-letter-group=\"g1", "")},
		"dl quoted id":   {"", "courier.dlq", dl(" id-1\n", "orders", "g1")},
		"bound dl":       {"S", "courier.dlq", dl("id-1", "orders", "g1")},
		"bound dl other": {"S", "courier.dlq", dl("id-1", "other", "g1")},
	} {
		d := dedupID(c.bound, c.subject, c.m)
		if d == "" || d == c.m.ID {
			t.Fatalf("%s: not scoped: %q", name, d)
		}
		if prev, dup := ids[d]; dup {
			t.Fatalf("%s and %s share Nats-Msg-Id %q", name, prev, d)
		}
		ids[d] = name
		msg, err := encode(0, c.subject, c.m, d)
		if err != nil {
			t.Fatal(err)
		}
		if msg.Header.Get(hdrMsgID) != d {
			t.Errorf("%s: Nats-Msg-Id %q, want %q", name, msg.Header.Get(hdrMsgID), d)
		}
		got, err := decode("t", msg.Header, msg.Data)
		if err != nil {
			t.Fatal(err)
		}
		if got.ID != c.m.ID || len(got.Headers) != len(c.m.Headers) {
			t.Errorf("%s: decoded %+v, want ID %q and headers %v", name, got, c.m.ID, c.m.Headers)
		}
	}
	// Courier-Id is the adapter's: a user header of that name is refused.
	if _, err := encode(0, "courier.t", &message.Message{ID: "x", Headers: message.Header{"Courier-Id": "y"}}, ""); err == nil {
		t.Error("a user header Courier-Id was accepted")
	}
}

// An ephemeral subscription remembers nacked sequences until they come
// back, so a recreated consumer starts at the oldest; a recreated
// consumer's first message drops those the stream no longer holds.
func TestResumeSeqKeepsNacked(t *testing.T) {
	s := &jsSub{topic: "t", inflight: make(map[*jsAcker]struct{})}
	msg := func(seq uint64) *fakeJSMsg {
		return &fakeJSMsg{hdr: nats.Header{hdrMsgID: {"id"}}, md: &jetstream.MsgMetadata{NumDelivered: 1, Sequence: jetstream.SequencePair{Stream: seq}, Stream: "S"}}
	}
	var dvs []delivery
	for _, seq := range []uint64{3, 5, 7} {
		dv, ok := s.receive(msg(seq))
		if !ok {
			t.Fatal("receive refused the message")
		}
		dvs = append(dvs, dv)
	}
	s.untrackNacked(dvs[0].a) // 3 nacked
	s.untrackNacked(dvs[1].a) // 5 nacked
	s.untrack(dvs[2].a)       // 7 acked
	if got := s.resumeSeq(); got != 3 {
		t.Fatalf("resumeSeq %d, want 3 (oldest nacked)", got)
	}
	if dv, ok := s.receive(msg(3)); !ok {
		t.Fatal("receive refused")
	} else {
		s.untrack(dv.a) // 3 came back and was acked
	}
	if got := s.resumeSeq(); got != 5 {
		t.Fatalf("resumeSeq %d, want 5", got)
	}
	// Recreated at 5, its first message is 7: 5 is gone from the stream.
	s.resumed = true
	dv, _ := s.receive(msg(7))
	s.untrack(dv.a)
	if got := s.resumeSeq(); got != 8 {
		t.Fatalf("resumeSeq %d, want 8 (nothing unacked left)", got)
	}
}

// A Courier-Id header that the Nats-Msg-Id does not embed (a user header
// from before the name was reserved) is not taken as the ID; decoding a
// scoped ID costs no allocation beyond the message's own.
func TestCourierIDOnlyWithScopedMsgID(t *testing.T) {
	got, err := decode("t", nats.Header{hdrMsgID: {"real"}, hdrID: {"other"}}, nil)
	if err != nil || got.ID != "real" {
		t.Fatalf("decoded %+v, %v; want ID real", got, err)
	}
	m := &message.Message{ID: "m-1", Headers: message.Header{message.HeaderDeadLetterTopic: "orders"}}
	msg, err := encode(0, "courier.dlq", m, dedupID("", "courier.dlq", m))
	if err != nil {
		t.Fatal(err)
	}
	var into message.Message
	allocs := func(h nats.Header) float64 {
		return testing.AllocsPerRun(100, func() {
			into = message.Message{}
			if err := decodeInto(&into, "dlq", h, msg.Data); err != nil {
				t.Fatal(err)
			}
		})
	}
	plain := nats.Header{hdrMsgID: {"m-1"}, message.HeaderDeadLetterTopic: {"orders"}}
	base := allocs(plain)
	if a := allocs(msg.Header); into.ID != "m-1" || a > base {
		t.Errorf("ID %q, %v allocations (want m-1, and %v as without the scoped ID)", into.ID, a, base)
	}
}
