package amqptransport

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// TestOversizedDeadLetterCopyCut: a message whose headers are just under
// the header limit fails for good; the courier-dlq-* headers push its
// dead-letter copy over the limit, so the reason is cut to fit and the
// copy is published (it used to fail, and the original be nacked and
// retried, forever).
func TestOversizedDeadLetterCopyCut(t *testing.T) {
	url := brokerURL(t)
	tr := openT(t, Options{URL: url})
	topic, dlt, group := uniq("dlq-big"), uniq("dlq-big-dlt"), "g"
	cleanupTopology(t, url, topic, []string{group})
	cleanupTopology(t, url, dlt, []string{group})
	for _, tp := range []string{topic, dlt} {
		if err := tr.Declare(ctxT(t), tp, transport.SubscribeOptions{Group: group}); err != nil {
			t.Fatal(err)
		}
	}
	big := strings.Repeat("b", maxHeaderTotal-700)
	if err := tr.Publish(ctxT(t), topic, &message.Message{ID: "m-1", Headers: message.Header{"x-big": big}, Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	subscribe(t, tr, topic, transport.SubscribeOptions{Group: group, DeadLetterTopic: dlt}, message.HandlerFunc(func(context.Context, *message.Message) error {
		return message.Permanent(errors.New(strings.Repeat("é", 700)))
	}))
	dcol := newCollector()
	subscribe(t, tr, dlt, transport.SubscribeOptions{Group: group}, dcol)
	if !eventually(20*time.Second, func() bool { return dcol.distinct() == 1 }) {
		t.Fatal("the oversized dead-letter copy was never published")
	}
	m := dcol.snapshot()[0]
	r := m.Headers[message.HeaderDeadLetterReason]
	if m.ID != "m-1" || m.Headers["x-big"] != big || m.Headers[message.HeaderDeadLetterTopic] != topic || m.Headers[message.HeaderDeadLetterGroup] != group {
		t.Errorf("copy %s: headers other than the reason changed", m.ID)
	}
	if !utf8.ValidString(r) || !strings.HasSuffix(r, "…") || len(r) >= 1024 {
		t.Errorf("reason not cut on a character boundary: %d bytes, ends %q", len(r), r[max(0, len(r)-8):])
	}
}
