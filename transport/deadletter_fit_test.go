package transport_test

import (
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// FitDeadLetter cuts the reason on a character boundary, then drops the
// optional dead-letter headers, only as far as needed, and never touches
// the original.
func TestFitDeadLetter(t *testing.T) {
	orig := &message.Message{ID: "m-1", Payload: []byte("p"), Headers: message.Header{
		"x-app":                          "v",
		message.HeaderDeadLetterReason:   strings.Repeat("é", 500), // 1000 bytes
		message.HeaderDeadLetterTopic:    "orders",
		message.HeaderDeadLetterGroup:    "g",
		message.HeaderDeadLetterAttempts: "3",
		message.HeaderDeadLetterTime:     "2026-01-01T00:00:00Z",
	}}
	before := transport.Size(orig)
	budget := func(n int) func(*message.Message) bool {
		return func(m *message.Message) bool { return transport.Size(m) <= n }
	}
	if m, cut := transport.FitDeadLetter(orig, budget(before)); cut || m != orig {
		t.Fatal("a copy that fits was changed")
	}
	m, cut := transport.FitDeadLetter(orig, budget(before-101))
	r := m.Headers[message.HeaderDeadLetterReason]
	if !cut || transport.Size(m) > before-101 || !utf8.ValidString(r) || !strings.HasSuffix(r, "…") || len(r) < 1000-101-6 {
		t.Fatalf("cut reason: %d bytes %q, size %d", len(r), r[max(0, len(r)-12):], transport.Size(m))
	}
	if len(orig.Headers[message.HeaderDeadLetterReason]) != 1000 {
		t.Fatal("the original's headers changed")
	}
	// Without room for the reason at all, then not for the time either.
	noReason := before - len(message.HeaderDeadLetterReason) - 1000
	m, _ = transport.FitDeadLetter(orig, budget(noReason))
	if _, ok := m.Headers[message.HeaderDeadLetterReason]; ok || m.Headers[message.HeaderDeadLetterTime] == "" {
		t.Fatalf("headers %v", m.Headers)
	}
	m, _ = transport.FitDeadLetter(orig, budget(noReason-1))
	if _, ok := m.Headers[message.HeaderDeadLetterTime]; ok || m.Headers[message.HeaderDeadLetterAttempts] != "3" {
		t.Fatalf("headers %v", m.Headers)
	}
	for _, k := range []string{"x-app", message.HeaderDeadLetterTopic, message.HeaderDeadLetterGroup} {
		if m.Headers[k] == "" {
			t.Errorf("header %s dropped", k)
		}
	}
	// Nothing left to drop: returned as it is then.
	m, cut = transport.FitDeadLetter(orig, budget(0))
	if !cut || m.Headers[message.HeaderDeadLetterTopic] != "orders" || len(m.Headers) != 3 {
		t.Fatalf("headers %v", m.Headers)
	}
}
