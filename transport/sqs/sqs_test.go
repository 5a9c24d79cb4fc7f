package sqstransport_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	sqstransport "github.com/courierkit/courier/transport/sqs"
)

// collector gathers received messages for a test.
type collector struct {
	mu   sync.Mutex
	msgs []*message.Message
	ch   chan struct{}
}

func newCollector() *collector { return &collector{ch: make(chan struct{}, 1)} }

func (c *collector) Handle(_ context.Context, m *message.Message) error {
	c.mu.Lock()
	c.msgs = append(c.msgs, m)
	c.mu.Unlock()
	select {
	case c.ch <- struct{}{}:
	default:
	}
	return nil
}

// wait blocks until n messages arrived or d passed.
func (c *collector) wait(t testing.TB, n int, d time.Duration) []*message.Message {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		got := append([]*message.Message(nil), c.msgs...)
		c.mu.Unlock()
		if len(got) >= n {
			return got
		}
		select {
		case <-c.ch:
		case <-deadline.C:
			t.Fatalf("got %d of %d messages within %s", len(got), n, d)
		}
	}
}

// subscribe runs Subscribe in the background until the test ends.
func subscribe(t testing.TB, tr transport.Conn, topic string, h message.Handler, o transport.SubscribeOptions) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tr.Subscribe(ctx, topic, h, o) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, transport.ErrClosed) {
				t.Errorf("Subscribe: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("Subscribe did not return within 15s of cancel")
		}
	})
}

func TestRoundTripBothModes(t *testing.T) {
	for _, mode := range []sqstransport.Mode{sqstransport.ModeSNS, sqstransport.ModeSQS} {
		t.Run(mode.String(), func(t *testing.T) {
			tr := open(t, mode, sqstransport.Options{})
			topic := name(t)
			ctx := context.Background()
			if err := tr.Declare(ctx, topic, transport.SubscribeOptions{Group: "g"}); err != nil {
				t.Fatal(err)
			}
			msgs := []*message.Message{
				{ID: "id-1", Key: "k1", Payload: []byte("hello"), Headers: message.Header{"a": "1"}},
				{ID: "id-2", Payload: []byte{0, 1, 2, 0xff, 0xfe}},
				{ID: "id-3", Payload: nil},
				{ID: "id \x01 weird", Key: "k\x00y", Payload: []byte("\uffff"), Headers: message.Header{"": "x", "bad name/ü": "v\x00", "empty": ""}},
			}
			// An empty header name is refused by PreparePublish.
			if err := tr.Publish(ctx, topic, msgs...); !errors.Is(err, transport.ErrInvalidMessage) {
				t.Fatalf("empty header name: got %v, want ErrInvalidMessage", err)
			}
			delete(msgs[3].Headers, "")
			if err := tr.Publish(ctx, topic, msgs...); err != nil {
				t.Fatal(err)
			}
			c := newCollector()
			subscribe(t, tr, topic, c, transport.SubscribeOptions{Group: "g"})
			got := c.wait(t, len(msgs), 20*time.Second)
			byID := map[string]*message.Message{}
			for _, m := range got {
				byID[m.ID] = m
			}
			for _, want := range msgs {
				m := byID[want.ID]
				if m == nil {
					t.Fatalf("message %q not received", want.ID)
				}
				if m.Key != want.Key || string(m.Payload) != string(want.Payload) || len(m.Headers) != len(want.Headers) {
					t.Errorf("message %q: got key %q payload %q headers %v; want %q %q %v", want.ID, m.Key, m.Payload, m.Headers, want.Key, want.Payload, want.Headers)
				}
				for k, v := range want.Headers {
					if m.Headers[k] != v {
						t.Errorf("message %q header %q = %q, want %q", want.ID, k, m.Headers[k], v)
					}
				}
				if m.Topic != topic || m.Attempt < 1 || m.Time.IsZero() {
					t.Errorf("message %q: topic %q attempt %d time %v", want.ID, m.Topic, m.Attempt, m.Time)
				}
				var sm *sqstypes.Message
				if !m.As(&sm) || sm.ReceiptHandle == nil {
					t.Errorf("As(*types.Message) failed")
				}
			}
		})
	}
}

// TestHeaders25 round-trips 25 headers, more than SQS's 10 attributes.
func TestHeaders25(t *testing.T) {
	tr := open(t, sqstransport.ModeSNS, sqstransport.Options{})
	topic := name(t)
	ctx := context.Background()
	if err := tr.Declare(ctx, topic, transport.SubscribeOptions{Group: "g"}); err != nil {
		t.Fatal(err)
	}
	h := message.Header{}
	for i := range 25 {
		h[fmt.Sprintf("h-%02d", i)] = strings.Repeat("v", i+1)
	}
	h["with space"] = "and ünïcode"
	h["AWS.reserved"] = "x"
	h["courier"] = "my own"
	m := &message.Message{Payload: []byte("p"), Headers: h}
	if err := tr.Publish(ctx, topic, m); err != nil {
		t.Fatal(err)
	}
	c := newCollector()
	subscribe(t, tr, topic, c, transport.SubscribeOptions{Group: "g"})
	got := c.wait(t, 1, 20*time.Second)[0]
	if got.ID != m.ID {
		t.Fatalf("id %q, want %q", got.ID, m.ID)
	}
	if len(got.Headers) != len(h) {
		t.Fatalf("got %d headers, want %d: %v", len(got.Headers), len(h), got.Headers)
	}
	for k, v := range h {
		if got.Headers[k] != v {
			t.Errorf("header %q = %q, want %q", k, got.Headers[k], v)
		}
	}
	var sm *sqstypes.Message
	if !got.As(&sm) {
		t.Fatal("As failed")
	}
	if n := len(sm.MessageAttributes); n > 10 {
		t.Fatalf("%d SQS message attributes, want at most 10", n)
	}
}

// TestOversize: a message over 256 KiB once encoded fails before sending.
func TestOversize(t *testing.T) {
	for _, mode := range []sqstransport.Mode{sqstransport.ModeSNS, sqstransport.ModeSQS} {
		t.Run(mode.String(), func(t *testing.T) {
			tr := open(t, mode, sqstransport.Options{})
			topic := name(t)
			ctx := context.Background()
			ok := &message.Message{Payload: []byte("fine")}
			big := &message.Message{Payload: []byte(strings.Repeat("x", 262144))}
			err := tr.Publish(ctx, topic, ok, big)
			var le *transport.LimitError
			if !errors.As(err, &le) || !errors.Is(err, transport.ErrLimit) || le.Index != 1 {
				t.Fatalf("got %v, want a LimitError for message 1", err)
			}
			// Binary payloads travel as base64: 200 000 bytes of them do not fit.
			bin := make([]byte, 200000)
			for i := range bin {
				bin[i] = byte(i)
			}
			if err := tr.Publish(ctx, topic, &message.Message{Payload: bin}); !errors.Is(err, transport.ErrLimit) {
				t.Fatalf("binary 200000 bytes: got %v, want ErrLimit", err)
			}
			// The largest binary payload declared fits.
			max := make([]byte, tr.Capabilities().Limits.MaxPayload)
			for i := range max {
				max[i] = byte(i * 7)
			}
			big.ID = strings.Repeat("i", 64)
			big.Payload = max
			if err := tr.Declare(ctx, topic, transport.SubscribeOptions{Group: "g"}); err != nil {
				t.Fatal(err)
			}
			if err := tr.Publish(ctx, topic, big); err != nil {
				t.Fatalf("MaxPayload binary: %v", err)
			}
			c := newCollector()
			subscribe(t, tr, topic, c, transport.SubscribeOptions{Group: "g"})
			got := c.wait(t, 1, 20*time.Second)[0]
			if string(got.Payload) != string(max) {
				t.Fatalf("payload of %d bytes came back as %d bytes", len(max), len(got.Payload))
			}
		})
	}
}
