package sqstransport

import (
	"bytes"
	"context"
	"encoding/json"
	"maps"
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
		var w wire
		if err := encode(m, &w); err != nil {
			t.Fatal(err)
		}
		attrs := w.sqsAttrs()
		if len(attrs) > maxAttrs || len(w.snsAttrs()) != len(attrs) {
			t.Errorf("%q: %d attributes (%d for SNS)", m.ID, len(attrs), len(w.snsAttrs()))
		}
		if !safe(w.body) || w.body == "" {
			t.Errorf("%q: body %q cannot travel", m.ID, w.body)
		}
		for k, v := range attrs {
			if !safe(*v.StringValue) || *v.StringValue == "" {
				t.Errorf("%q: attribute %q value %q cannot travel", m.ID, k, *v.StringValue)
			}
		}
		id := "sqs-id"
		got, err := decode(&sqstypes.Message{MessageId: &id, Body: &w.body, MessageAttributes: attrs})
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
		var w wire
		if err := encode(m, &w); err != nil {
			b.Fatal(err)
		}
		_ = w.sqsAttrs()
	}
}

func TestSimple(t *testing.T) {
	for _, md := range []meta{
		{V: 1, ID: "plain"},
		{V: 1, ID: `q"uo\te` + "\t\n\r", Key: "ключ 🔑", Body: "base64"},
		{V: 1, ID: "ctl\x01\x1f\x7f<&>", Key: `\\`},
		{V: 1, ID64: "AA==", Key64: "AQ==", Body: "empty"},
	} {
		raw, _ := json.Marshal(md)
		// encoding/json as the JSON path uses it, with SetEscapeHTML(false)
		want := strings.NewReplacer(`\u003c`, "<", `\u003e`, ">", `\u0026`, "&").Replace(string(raw))
		if got := md.simple(); got != want {
			t.Errorf("simple = %s, want %s", got, want)
		}
		var back meta
		if err := json.Unmarshal([]byte(md.simple()), &back); err != nil || back.ID != md.ID || back.Key != md.Key || back.ID64 != md.ID64 || back.Key64 != md.Key64 || back.Body != md.Body {
			t.Errorf("%s read back as %+v, %v", md.simple(), back, err)
		}
	}
}

// TestSafeBytes: the payload check agrees with the string one.
func TestSafeBytes(t *testing.T) {
	for _, s := range []string{"", "plain", "tab\tnl\ncr\r", "nul\x00", "\x1f", "ü€🔑", "\uffff", "\ufffd", "\xff", "\xed\xa0\x80", "\U0010ffff", "a\xc3"} {
		if safeBytes([]byte(s)) != safe(s) {
			t.Errorf("safeBytes(%q) = %v, safe = %v", s, safeBytes([]byte(s)), safe(s))
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
		if !parseSimple(md.simple(), &got) || got.ID != md.ID || got.ID64 != md.ID64 || got.Key != md.Key || got.Key64 != md.Key64 || got.Body != md.Body {
			t.Errorf("parseSimple(%s) = %+v", md.simple(), got)
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
	var w wire
	_ = encode(&message.Message{ID: message.NewID(), Key: "k", Payload: make([]byte, 256)}, &w)
	attrs := w.sqsAttrs()
	id := "x"
	b.ReportAllocs()
	for b.Loop() {
		if _, err := decode(&sqstypes.Message{MessageId: &id, Body: &w.body, MessageAttributes: attrs}); err != nil {
			b.Fatal(err)
		}
	}
}

// TestWireCompat pins the wire format: bodies and attributes as the codec
// wrote them before the encoder was rewritten for speed (2026-11-22).
// The encoder must still write exactly these, and decode must read them,
// so that messages already in queues and consumers of either version keep
// working.
func TestWireCompat(t *testing.T) {
	golden := []struct {
		m     *message.Message
		body  string
		attrs map[string]string
	}{
		{&message.Message{ID: "019a8b1c-2d3e-7f40-8a5b-6c7d8e9f0a1b", Payload: []byte("hello")},
			"hello", map[string]string{"courier": "{\"v\":1,\"id\":\"019a8b1c-2d3e-7f40-8a5b-6c7d8e9f0a1b\"}"}},
		{&message.Message{ID: "k1", Key: "order-42", Payload: []byte(`{"json":"body"}`)},
			"{\"json\":\"body\"}", map[string]string{"courier": "{\"v\":1,\"id\":\"k1\",\"k\":\"order-42\"}"}},
		{&message.Message{ID: "empty", Payload: nil},
			"-", map[string]string{"courier": "{\"v\":1,\"id\":\"empty\",\"b\":\"empty\"}"}},
		{&message.Message{ID: "bin\x00", Key: "k\xff", Payload: []byte{0, 0xff, 0xfe, 1}},
			"AP/+AQ==", map[string]string{"courier": "{\"v\":1,\"id64\":\"YmluAA==\",\"k64\":\"a/8=\",\"b\":\"base64\"}"}},
		{&message.Message{ID: `q"uote`, Key: "ключ", Payload: []byte("\t\n")},
			"\t\n", map[string]string{"courier": "{\"v\":1,\"id\":\"q\\\"uote\",\"k\":\"ключ\"}"}},
		{&message.Message{ID: "hdrs", Headers: message.Header{"traceparent": "00-abc-def-01", "a": "1", "bad name": "x", "ctl": "a\x00b", "": "", "z.z": ""}, Payload: []byte("p")},
			"p", map[string]string{"a": "1", "traceparent": "00-abc-def-01", "courier": "{\"v\":1,\"id\":\"hdrs\",\"h\":{\"\":\"\",\"bad name\":\"x\",\"z.z\":\"\"},\"x\":[[\"Y3Rs\",\"YQBi\"]]}"}},
		{&message.Message{ID: "many", Headers: message.Header{"h01": "1", "h02": "2", "h03": "3", "h04": "4", "h05": "5", "h06": "6", "h07": "7", "h08": "8", "h09": "9", "h10": "10", "h11": "11"}, Payload: []byte("p")},
			"p", map[string]string{"h01": "1", "h06": "6", "h07": "7", "h08": "8", "h09": "9", "h02": "2", "h03": "3", "h04": "4", "h05": "5", "courier": "{\"v\":1,\"id\":\"many\",\"h\":{\"h10\":\"10\",\"h11\":\"11\"}}"}},
	}
	for _, g := range golden {
		var w wire
		if err := encode(g.m, &w); err != nil {
			t.Fatal(err)
		}
		got := map[string]string{}
		for k, v := range w.sqsAttrs() {
			got[k] = *v.StringValue
		}
		if w.body != g.body || !maps.Equal(got, g.attrs) {
			t.Errorf("%q encodes as %q %q, want %q %q", g.m.ID, w.body, got, g.body, g.attrs)
		}
		attrs := map[string]sqstypes.MessageAttributeValue{}
		for k, v := range g.attrs {
			attrs[k] = sqstypes.MessageAttributeValue{DataType: &stringType, StringValue: &v}
		}
		id := "sqs-id"
		m, err := decode(&sqstypes.Message{MessageId: &id, Body: &g.body, MessageAttributes: attrs})
		if err != nil {
			t.Fatalf("%q: %v", g.m.ID, err)
		}
		if m.ID != g.m.ID || m.Key != g.m.Key || !bytes.Equal(m.Payload, g.m.Payload) && len(g.m.Payload) > 0 || !maps.Equal(m.Headers, g.m.Headers) && len(g.m.Headers) > 0 {
			t.Errorf("%q decodes as %+v", g.m.ID, m)
		}
	}
}
