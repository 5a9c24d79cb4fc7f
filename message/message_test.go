package message_test

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/courierkit/courier/message"
)

var uuidv7 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

func TestNewIDIsUUIDv7Monotonic(t *testing.T) {
	const n = 20000
	var mu sync.Mutex
	seen := make(map[string]bool, n)
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			prev := ""
			for range n / 4 {
				id := message.NewID()
				if !uuidv7.MatchString(id) {
					t.Errorf("goroutine %d: %q is not a canonical UUIDv7", g, id)
					return
				}
				if id <= prev {
					t.Errorf("IDs not increasing within a goroutine: %s after %s", id, prev)
					return
				}
				prev = id
				mu.Lock()
				if seen[id] {
					t.Errorf("duplicate ID %s", id)
				}
				seen[id] = true
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	// The timestamp is the current unix millisecond (big-endian, first 48 bits).
	id := strings.ReplaceAll(message.NewID(), "-", "")
	var ms int64
	fmt.Sscanf(id[:12], "%x", &ms)
	if d := time.Since(time.UnixMilli(ms)); d < -time.Second || d > time.Second {
		t.Errorf("UUIDv7 timestamp %v is %v away from now", time.UnixMilli(ms), d)
	}
}

func TestChainOrder(t *testing.T) {
	var trace []string
	mw := func(name string) message.Middleware {
		return func(next message.Handler) message.Handler {
			return message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
				trace = append(trace, name+">")
				err := next.Handle(ctx, m)
				trace = append(trace, "<"+name)
				return err
			})
		}
	}
	h := message.Chain(message.HandlerFunc(func(context.Context, *message.Message) error {
		trace = append(trace, "h")
		return nil
	}), mw("a"), nil, mw("b"))
	if err := h.Handle(context.Background(), message.New(nil)); err != nil {
		t.Fatal(err)
	}
	want := []string{"a>", "b>", "h", "<b", "<a"}
	if !slices.Equal(trace, want) {
		t.Fatalf("trace %v, want %v", trace, want)
	}
}

func TestPermanentAndRetryAfter(t *testing.T) {
	base := errors.New("bad input")
	if message.Permanent(nil) != nil || message.RetryAfter(nil, time.Second) != nil {
		t.Fatal("wrapping nil must return nil")
	}
	p := message.Permanent(base)
	if !message.IsPermanent(p) || !errors.Is(p, base) || p.Error() != "bad input" {
		t.Fatalf("Permanent: IsPermanent %v, Is %v, text %q", message.IsPermanent(p), errors.Is(p, base), p)
	}
	if message.Permanent(p) != p {
		t.Error("Permanent of a permanent error should not wrap again")
	}
	wrapped := fmt.Errorf("handler: %w", p)
	if !message.IsPermanent(wrapped) {
		t.Error("IsPermanent must see through wrapping")
	}
	if message.IsPermanent(base) || message.IsPermanent(nil) {
		t.Error("plain errors are not permanent")
	}
	r := fmt.Errorf("outer: %w", message.RetryAfter(base, 3*time.Second))
	if d, ok := message.RetryDelay(r); !ok || d != 3*time.Second || !errors.Is(r, base) {
		t.Errorf("RetryDelay = %v, %v", d, ok)
	}
	if d, ok := message.RetryDelay(message.RetryAfter(base, -time.Second)); !ok || d != 0 {
		t.Errorf("negative delay = %v, %v; want 0, true", d, ok)
	}
	if _, ok := message.RetryDelay(base); ok {
		t.Error("RetryDelay of a plain error")
	}
}

type order struct {
	ID    string  `json:"id"`
	Total float64 `json:"total"`
}

func (order) MessageType() string { return "order.created.v1" }

func TestCodecRoundTripAndPoison(t *testing.T) {
	m, err := message.Encode(order{ID: "o-1", Total: 9.5})
	if err != nil {
		t.Fatal(err)
	}
	if m.Header(message.HeaderContentType) != "application/json" || m.Type() != "order.created.v1" || m.ID == "" {
		t.Fatalf("headers %v id %q", m.Headers, m.ID)
	}
	got, err := message.Decode[order](m)
	if err != nil || got != (order{ID: "o-1", Total: 9.5}) {
		t.Fatalf("Decode = %+v, %v", got, err)
	}
	for _, ct := range []string{"", "application/json; charset=utf-8", "application/cloudevents+json"} {
		m.Headers[message.HeaderContentType] = ct
		if _, err := message.Decode[order](m); err != nil {
			t.Errorf("content type %q rejected: %v", ct, err)
		}
	}
	m.Headers[message.HeaderContentType] = "application/protobuf"
	_, err = message.Decode[order](m)
	var de *message.DecodeError
	if !message.IsPermanent(err) || !errors.As(err, &de) || de.ContentType != "application/protobuf" {
		t.Errorf("wrong content type: %v", err)
	}
	bad := &message.Message{ID: "x", Payload: []byte("{not json")}
	_, err = message.Decode[order](bad)
	if !message.IsPermanent(err) || !errors.As(err, &de) || de.MessageID != "x" {
		t.Errorf("undecodable payload: %v (permanent %v)", err, message.IsPermanent(err))
	}
	if _, err := message.Encode(func() {}); err == nil {
		t.Error("encoding a func should fail")
	}
}

func TestFollowUpAndCopy(t *testing.T) {
	cause := &message.Message{ID: "m1", Payload: []byte("p"), Headers: message.Header{"a": "b"}}
	f := cause.FollowUp([]byte("next"))
	if f.CorrelationID() != "m1" || f.CausationID() != "m1" || f.ID == "" || f.ID == "m1" {
		t.Errorf("first follow-up: corr %q cause %q id %q", f.CorrelationID(), f.CausationID(), f.ID)
	}
	g := f.FollowUp(nil)
	if g.CorrelationID() != "m1" || g.CausationID() != f.ID {
		t.Errorf("second follow-up: corr %q cause %q", g.CorrelationID(), g.CausationID())
	}
	c := cause.Copy()
	c.Payload[0] = 'X'
	c.Headers["a"] = "changed"
	if string(cause.Payload) != "p" || cause.Headers["a"] != "b" {
		t.Error("Copy shares payload or headers")
	}
	var nm *message.Message
	if nm.As(new(int)) || cause.As(new(int)) {
		t.Error("As without a native message must report false")
	}
	cause.SetAs(func(target any) bool {
		if p, ok := target.(*string); ok {
			*p = "native"
			return true
		}
		return false
	})
	var s string
	if !cause.As(&s) || s != "native" {
		t.Error("As did not reach the native message")
	}
}

func BenchmarkNewID(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		_ = message.NewID()
	}
}
