package sqstransport

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// TestCodec round-trips awkward messages through encode and decode and
// checks the attribute budget.
func TestCodec(t *testing.T) {
	h := message.Header{}
	for i := range 30 {
		h[strings.Repeat("h", i+1)] = strings.Repeat("v", i)
	}
	h["bad name"] = "x"
	h["ctl"] = "a\x00b"
	h["inval\xff"] = "\xfe"
	h["AWS.x"] = "reserved prefix"
	h["courier"] = "the reserved name"
	msgs := []*message.Message{
		{ID: "plain", Payload: []byte("text")},
		{ID: "", Payload: nil},
		{ID: "bin\x00", Key: "k\xff", Payload: []byte{0, 0xff, 0xfe, 1}},
		{ID: "hdrs", Key: "ключ", Headers: h, Payload: []byte("\uffff not sqs-safe")},
	}
	for _, m := range msgs {
		w, err := encode(m)
		if err != nil {
			t.Fatal(err)
		}
		if len(w.attrs) > maxAttrs {
			t.Errorf("%q: %d attributes", m.ID, len(w.attrs))
		}
		if !safe(w.body) || w.body == "" {
			t.Errorf("%q: body %q cannot travel", m.ID, w.body)
		}
		for k, v := range w.attrs {
			if !safe(*v.StringValue) || *v.StringValue == "" {
				t.Errorf("%q: attribute %q value %q cannot travel", m.ID, k, *v.StringValue)
			}
		}
		id := "sqs-id"
		got, err := decode(&sqstypes.Message{MessageId: &id, Body: &w.body, MessageAttributes: w.attrs})
		if err != nil {
			t.Fatal(err)
		}
		if got.ID != m.ID || got.Key != m.Key || string(got.Payload) != string(m.Payload) || len(got.Headers) != len(m.Headers) {
			t.Errorf("round trip of %q: got %+v", m.ID, got)
		}
		for k, v := range m.Headers {
			if got.Headers[k] != v {
				t.Errorf("%q: header %q = %q, want %q", m.ID, k, got.Headers[k], v)
			}
		}
	}
	// A message from elsewhere: no courier attribute.
	id, body := "foreign-id", "{}"
	sv, dt := "v", "String"
	got, err := decode(&sqstypes.Message{MessageId: &id, Body: &body, MessageAttributes: map[string]sqstypes.MessageAttributeValue{"a": {StringValue: &sv, DataType: &dt}}})
	if err != nil || got.ID != id || string(got.Payload) != body || got.Headers["a"] != "v" {
		t.Errorf("foreign message decoded as %+v, %v", got, err)
	}
}

func TestFifoToken(t *testing.T) {
	if fifoToken("abc-1!") != "abc-1!" {
		t.Error("valid token changed")
	}
	for _, s := range []string{"", "with space", strings.Repeat("x", 129), "ü"} {
		tok := fifoToken(s)
		if len(tok) != 64 || fifoToken(s) != tok {
			t.Errorf("fifoToken(%q) = %q", s, tok)
		}
	}
}

// TestBatchFailures: entries the service lists as failed, or does not list
// at all, are never reported as sent.
func TestBatchFailures(t *testing.T) {
	tr := &Transport{}
	b := []entry{{idx: 3, m: &message.Message{ID: "a"}}, {idx: 4, m: &message.Message{ID: "b"}}}
	f, err := tr.batchFailures(b, 1, func(y func(id, code, msg string, sender bool)) { y("1", "InternalError", "oops", false) })
	if err != nil || len(f) != 1 || f[0].Index != 4 || f[0].SenderFault {
		t.Errorf("got %+v, %v", f, err)
	}
	if _, err := tr.batchFailures(b, 1, func(func(string, string, string, bool)) {}); err == nil {
		t.Error("an unlisted entry was counted as sent")
	}
	tr.o.Goaws = true
	if f, err := tr.batchFailures(b, 0, func(func(string, string, string, bool)) {}); err != nil || f != nil {
		t.Error("goaws's empty answer should count as sent with Options.Goaws")
	}
}

// BenchmarkEncode is the adapter's own cost per message before the SDK.
func BenchmarkEncode(b *testing.B) {
	payload := make([]byte, 256)
	for i := range payload {
		payload[i] = 'a'
	}
	b.ReportAllocs()
	for b.Loop() {
		m := &message.Message{Payload: payload}
		if err := transport.PreparePublish("topic", []*message.Message{m}, transport.Limits{MaxPayload: maxPayloadAnyBytes}); err != nil {
			b.Fatal(err)
		}
		if _, err := encode(m); err != nil {
			b.Fatal(err)
		}
	}
}

func TestAppendSimple(t *testing.T) {
	for _, md := range []meta{
		{V: 1, ID: "plain"},
		{V: 1, ID: `q"uo\te` + "\t\n\r", Key: "ключ 🔑", Body: "base64"},
		{V: 1, ID64: "AA==", Key64: "AQ==", Body: "empty"},
	} {
		want, _ := json.Marshal(md)
		if got := md.appendSimple(nil); got != string(want) {
			t.Errorf("appendSimple = %s, want %s", got, want)
		}
	}
}

// TestSendWithRetry: entries failed on the service's side are sent again
// (only they), sender faults are reported at once, and what still fails
// after PublishAttempts is reported, never counted as sent.
func TestSendWithRetry(t *testing.T) {
	tr := &Transport{o: Options{PublishAttempts: 3}.withDefaults()}
	b := []entry{{idx: 0, m: &message.Message{ID: "a"}}, {idx: 1, m: &message.Message{ID: "b"}}, {idx: 2, m: &message.Message{ID: "c"}}}
	var calls [][]int
	send := func(_ context.Context, es []entry) ([]EntryError, error) {
		var idx []int
		for _, e := range es {
			idx = append(idx, e.idx)
		}
		calls = append(calls, idx)
		var f []EntryError
		for _, e := range es {
			switch {
			case e.m.ID == "b": // sender fault: never retried
				f = append(f, EntryError{Index: e.idx, MessageID: "b", Code: "InvalidParameterValue", SenderFault: true})
			case e.m.ID == "c" && len(calls) < 2: // throttled once
				f = append(f, EntryError{Index: e.idx, MessageID: "c", Code: "Throttled"})
			}
		}
		return f, nil
	}
	failed, err := tr.sendWithRetry(context.Background(), b, send)
	if err != nil {
		t.Fatal(err)
	}
	if len(failed) != 1 || failed[0].MessageID != "b" {
		t.Errorf("failed = %+v, want only b", failed)
	}
	if len(calls) != 2 || len(calls[1]) != 1 || calls[1][0] != 2 {
		t.Errorf("calls = %v, want [0 1 2] then [2]", calls)
	}
	// Always failing on the service's side: reported after 3 attempts.
	calls = nil
	always := func(_ context.Context, es []entry) ([]EntryError, error) {
		calls = append(calls, nil)
		f := make([]EntryError, len(es))
		for i, e := range es {
			f[i] = EntryError{Index: e.idx, MessageID: e.m.ID, Code: "InternalError"}
		}
		return f, nil
	}
	failed, err = tr.sendWithRetry(context.Background(), b[:1], always)
	if err != nil || len(failed) != 1 || len(calls) != 3 {
		t.Errorf("failed %+v err %v after %d calls, want 1 failure after 3", failed, err, len(calls))
	}
}

func TestParseSimple(t *testing.T) {
	for _, md := range []meta{
		{V: 1, ID: "plain"},
		{V: 1, ID: "ключ 🔑", Key: "k", Body: "base64"},
		{V: 1, ID64: "AA==", Key64: "AQ==", Body: "empty"},
	} {
		var got meta
		if !parseSimple(md.appendSimple(nil), &got) || got.ID != md.ID || got.ID64 != md.ID64 || got.Key != md.Key || got.Key64 != md.Key64 || got.Body != md.Body {
			t.Errorf("parseSimple(%s) = %+v", md.appendSimple(nil), got)
		}
	}
	for _, s := range []string{`{"v":1,"id":"a\"b"}`, `{"v":2,"id":"x"}`, `{"v":1,"h":{"a":"b"}}`, `{"v":1,"id":"x"`, `{"v":1,"zz":"x"}`} {
		var md meta
		if parseSimple(s, &md) {
			t.Errorf("parseSimple accepted %s", s)
		}
	}
}

func BenchmarkDecode(b *testing.B) {
	w, _ := encode(&message.Message{ID: message.NewID(), Key: "k", Payload: make([]byte, 256)})
	id := "x"
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decode(&sqstypes.Message{MessageId: &id, Body: &w.body, MessageAttributes: w.attrs}); err != nil {
			b.Fatal(err)
		}
	}
}
