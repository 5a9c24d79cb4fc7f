package natstransport_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	natstransport "github.com/courierkit/courier/transport/nats"
)

// TestOversizedDeadLetterCopyCut: a message just under the server's
// max_payload fails for good; the courier-dlq-* headers push its
// dead-letter copy over it, so the reason is cut to fit and the copy is
// published (it used to fail, and the original be nacked and retried,
// forever).
func TestOversizedDeadLetterCopyCut(t *testing.T) {
	srv := newServer(t, func(o *server.Options) { o.MaxPayload = 64 << 10 })
	ctx := ctxT(t, 30*time.Second)
	tr := open(t, natstransport.Options{URL: srv.URL()})
	for _, topic := range []string{"big", "big-dlq"} {
		if err := tr.Declare(ctx, topic, transport.SubscribeOptions{Group: "g"}); err != nil {
			t.Fatal(err)
		}
	}
	id := strings.Repeat("i", 64)
	payload := make([]byte, tr.Capabilities().Limits.MaxPayload-600)
	if err := tr.Publish(ctx, "big", &message.Message{ID: id, Payload: payload}); err != nil {
		t.Fatal(err)
	}
	subscribe(t, tr, "big", transport.SubscribeOptions{Group: "g", DeadLetterTopic: "big-dlq"}, func(context.Context, *message.Message) error {
		return message.Permanent(errors.New(strings.Repeat("é", 700)))
	})
	got := make(chan *message.Message, 1)
	subscribe(t, tr, "big-dlq", transport.SubscribeOptions{Group: "g"}, func(_ context.Context, m *message.Message) error {
		select {
		case got <- m:
		default:
		}
		return nil
	})
	select {
	case m := <-got:
		r := m.Headers[message.HeaderDeadLetterReason]
		if m.ID != id || len(m.Payload) != len(payload) || m.Headers[message.HeaderDeadLetterTopic] != "big" || m.Headers[message.HeaderDeadLetterGroup] != "g" {
			t.Errorf("copy %s: %d-byte payload, headers %v", m.ID, len(m.Payload), len(m.Headers))
		}
		if !utf8.ValidString(r) || !strings.HasSuffix(r, "…") || len(r) >= 1024 {
			t.Errorf("reason not cut on a character boundary: %d bytes, ends %q", len(r), r[max(0, len(r)-8):])
		}
	case <-ctx.Done():
		t.Fatal("the oversized dead-letter copy was never published")
	}
}
