package natstransport_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	natstransport "github.com/courierkit/courier/transport/nats"
)

// boundStream opens a transport bound to a new stream holding every
// courier subject, with a 2-minute duplicate window.
func boundStream(t *testing.T, ctx context.Context) (*natstransport.Transport, jetstream.Stream) {
	t.Helper()
	srv := newServer(t, nil)
	admin := open(t, natstransport.Options{URL: srv.URL()})
	st, err := jsOf(t, admin).CreateStream(ctx, jetstream.StreamConfig{Name: "BOUND", Subjects: []string{"courier.>"}, Duplicates: 2 * time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	return open(t, natstransport.Options{URL: srv.URL(), Stream: "BOUND"}), st
}

// TestBoundStreamDeadLetterCopyKept: in a bound stream the dead-letter
// copy (which keeps the original's ID) is stored and delivered, not
// dropped as a duplicate of the original within the duplicate window;
// its consumer sees the original ID.
func TestBoundStreamDeadLetterCopyKept(t *testing.T) {
	ctx := ctxT(t, 30*time.Second)
	tr, _ := boundStream(t, ctx)
	for topic, g := range map[string]string{"dlq": "ops", "orders": "g"} {
		if err := tr.Declare(ctx, topic, transport.SubscribeOptions{Group: g}); err != nil {
			t.Fatal(err)
		}
	}
	subscribe(t, tr, "orders", transport.SubscribeOptions{Group: "g", DeadLetterTopic: "dlq"},
		func(context.Context, *message.Message) error { return message.Permanent(errors.New("poison")) })
	got := make(chan *message.Message, 10)
	subscribe(t, tr, "dlq", transport.SubscribeOptions{Group: "ops"}, func(_ context.Context, m *message.Message) error {
		got <- m
		return nil
	})
	if err := tr.Publish(ctx, "orders", &message.Message{ID: "m-1", Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if m.ID != "m-1" || m.Headers[message.HeaderDeadLetterTopic] != "orders" || m.Headers[message.HeaderDeadLetterGroup] != "g" {
			t.Errorf("dead-letter copy: id %q headers %v", m.ID, m.Headers)
		}
		if _, ok := m.Headers["Courier-Id"]; ok {
			t.Errorf("the adapter's Courier-Id header reached the consumer: %v", m.Headers)
		}
	case <-ctx.Done():
		t.Fatal("the dead-letter copy never arrived (de-duplicated against the original?)")
	}
}

// TestBoundStreamTopicsDoNotDeduplicate: in a bound stream two topics may
// publish the same ID; both are stored and delivered with that ID, while a
// retry to the same topic is still de-duplicated.
func TestBoundStreamTopicsDoNotDeduplicate(t *testing.T) {
	ctx := ctxT(t, 30*time.Second)
	tr, st := boundStream(t, ctx)
	var mu sync.Mutex
	seen := map[string][]string{}
	for _, topic := range []string{"a", "b"} {
		if err := tr.Declare(ctx, topic, transport.SubscribeOptions{Group: "g"}); err != nil {
			t.Fatal(err)
		}
		for range 2 { // the second is a retry: de-duplicated
			if err := tr.Publish(ctx, topic, &message.Message{ID: "same", Payload: []byte(topic)}); err != nil {
				t.Fatal(err)
			}
		}
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 2 {
		t.Fatalf("stream holds %d messages, want 2 (one per topic)", info.State.Msgs)
	}
	for _, topic := range []string{"a", "b"} {
		subscribe(t, tr, topic, transport.SubscribeOptions{Group: "g"}, func(_ context.Context, m *message.Message) error {
			mu.Lock()
			seen[m.Topic] = append(seen[m.Topic], m.ID)
			mu.Unlock()
			return nil
		})
	}
	waitFor(t, 10*time.Second, "one delivery per topic", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(seen["a"]) == 1 && len(seen["b"]) == 1
	})
	mu.Lock()
	defer mu.Unlock()
	if seen["a"][0] != "same" || seen["b"][0] != "same" {
		t.Errorf("IDs delivered: %v", seen)
	}
	// MaxPayload still holds with the scoped ID (64-byte ID, a topic name
	// well under 256 bytes).
	l := tr.Capabilities().Limits
	if err := tr.Publish(ctx, strings.Repeat("t", 200), &message.Message{ID: strings.Repeat("i", 64), Payload: make([]byte, l.MaxPayload)}); err != nil {
		t.Errorf("MaxPayload-sized message in a bound stream: %v", err)
	}
}

// TestTwoGroupsDeadLetterBothKept: two groups of one topic dead-letter the
// same message to one dead-letter topic (its own stream); both copies are
// kept.
func TestTwoGroupsDeadLetterBothKept(t *testing.T) {
	srv := newServer(t, nil)
	ctx := ctxT(t, 30*time.Second)
	tr := open(t, natstransport.Options{URL: srv.URL()})
	for _, g := range []string{"a", "b"} {
		if err := tr.Declare(ctx, "orders", transport.SubscribeOptions{Group: g}); err != nil {
			t.Fatal(err)
		}
	}
	if err := tr.Declare(ctx, "dlq", transport.SubscribeOptions{Group: "ops"}); err != nil {
		t.Fatal(err)
	}
	fail := func(context.Context, *message.Message) error { return message.Permanent(errors.New("poison")) }
	subscribe(t, tr, "orders", transport.SubscribeOptions{Group: "a", DeadLetterTopic: "dlq"}, fail)
	subscribe(t, tr, "orders", transport.SubscribeOptions{Group: "b", DeadLetterTopic: "dlq"}, fail)
	got := make(chan *message.Message, 10)
	subscribe(t, tr, "dlq", transport.SubscribeOptions{Group: "ops"}, func(_ context.Context, m *message.Message) error {
		got <- m
		return nil
	})
	if err := tr.Publish(ctx, "orders", &message.Message{ID: "m-1", Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	groups := map[string]bool{}
	for len(groups) < 2 {
		select {
		case m := <-got:
			if m.ID != "m-1" {
				t.Errorf("dead-letter copy ID %q, want m-1", m.ID)
			}
			groups[m.Headers[message.HeaderDeadLetterGroup]] = true
		case <-ctx.Done():
			t.Fatalf("dead-letter copies by group: %v (want a and b)", groups)
		}
	}
}
