package conformance

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// suite is one Run: the harness with defaults applied.
type suite struct {
	h    Harness
	caps transport.Capabilities
}

func (s *suite) defaults() {
	if s.h.Prefix == "" {
		s.h.Prefix = "conf"
	}
	if s.h.Timeout <= 0 {
		s.h.Timeout = 30 * time.Second
	}
	if s.h.RedeliveryTimeout <= 0 {
		s.h.RedeliveryTimeout = s.h.Timeout
	}
	if s.h.MaxPayloadTested <= 0 {
		s.h.MaxPayloadTested = 16 << 20
		if testing.Short() {
			s.h.MaxPayloadTested = 1 << 20
		}
	}
}

// volume returns n, or a tenth of it (at least 2) under -short.
func volume(n int) int {
	if testing.Short() {
		return max(2, n/10)
	}
	return n
}

// name returns a fresh topic or group name: prefix, what, random suffix;
// lower-case letters, digits and hyphens only, so every broker accepts it.
func (s *suite) name(what string) string {
	var b [5]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%s-%s-%s", s.h.Prefix, what, hex.EncodeToString(b[:]))
}

// conn opens a connection that is closed when the test ends.
func (s *suite) conn(t testing.TB) transport.Conn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), s.h.Timeout)
	defer cancel()
	c, err := s.h.Open(ctx)
	if err != nil {
		t.Fatalf("Harness.Open: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// opts merges the harness's subscribe options under o.
func (s *suite) opts(o transport.SubscribeOptions) transport.SubscribeOptions {
	base := s.h.SubscribeOptions
	if o.Group == "" {
		o.Group = base.Group
	}
	if o.MaxInFlight == 0 {
		o.MaxInFlight = base.MaxInFlight
	}
	if o.Concurrency == 0 {
		o.Concurrency = base.Concurrency
	}
	if o.AckWait == 0 {
		o.AckWait = base.AckWait
	}
	if o.NackDelay == 0 {
		o.NackDelay = base.NackDelay
	}
	if o.MaxAttempts == 0 {
		o.MaxAttempts = base.MaxAttempts
	}
	return o
}

func (s *suite) ctx(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), s.h.Timeout)
	t.Cleanup(cancel)
	return ctx
}

func (s *suite) declare(t testing.TB, c transport.Conn, topic string, o transport.SubscribeOptions) {
	t.Helper()
	if err := c.Declare(s.ctx(t), topic, s.opts(o)); err != nil {
		t.Fatalf("Declare(%s, group %s): %v", topic, o.Group, err)
	}
	s.settle()
}

func (s *suite) settle() {
	if s.h.Settle > 0 {
		time.Sleep(s.h.Settle)
	}
}

func (s *suite) publish(t testing.TB, c transport.Publisher, topic string, msgs ...*message.Message) {
	t.Helper()
	if err := c.Publish(s.ctx(t), topic, msgs...); err != nil {
		t.Fatalf("Publish(%s, %d messages): %v", topic, len(msgs), err)
	}
}

// running is a Subscribe call in its own goroutine.
type running struct {
	cancel context.CancelFunc
	done   chan struct{}
	err    error
}

// subscribe starts Subscribe and returns a handle; the test's cleanup stops
// it. The subscription must not fail on its own while the test runs.
func (s *suite) subscribe(t testing.TB, c transport.Subscriber, topic string, o transport.SubscribeOptions, h message.Handler) *running {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{cancel: cancel, done: make(chan struct{})}
	go func() {
		defer close(r.done)
		r.err = c.Subscribe(ctx, topic, h, s.opts(o))
	}()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop cancels the subscription and waits for Subscribe to return.
func (r *running) stop(t testing.TB) {
	t.Helper()
	r.cancel()
	select {
	case <-r.done:
	case <-time.After(30 * time.Second):
		t.Errorf("Subscribe did not return within 30s of its ctx being cancelled")
		return
	}
	if r.err != nil && !errors.Is(r.err, context.Canceled) && !errors.Is(r.err, transport.ErrClosed) {
		t.Errorf("Subscribe returned %v; want context.Canceled or transport.ErrClosed", r.err)
	}
}

// failedEarly reports an error Subscribe returned before the test stopped
// it.
func (r *running) failedEarly() error {
	select {
	case <-r.done:
		if r.err == nil {
			return errors.New("Subscribe returned nil while the test still ran")
		}
		return r.err
	default:
		return nil
	}
}

// collector records received messages.
type collector struct {
	mu    sync.Mutex
	msgs  []*message.Message
	ids   map[string]int
	cond  chan struct{}
	check func(*message.Message) error
}

func newCollector() *collector {
	return &collector{ids: map[string]int{}, cond: make(chan struct{}, 1)}
}

func (c *collector) Handle(_ context.Context, m *message.Message) error {
	c.add(m)
	return nil
}

func (c *collector) add(m *message.Message) {
	cp := m.Copy()
	c.mu.Lock()
	c.msgs = append(c.msgs, cp)
	c.ids[m.ID]++
	c.mu.Unlock()
	select {
	case c.cond <- struct{}{}:
	default:
	}
}

// count returns how often id arrived.
func (c *collector) count(id string) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ids[id]
}

// distinct returns how many different IDs arrived.
func (c *collector) distinct() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.ids)
}

func (c *collector) total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.msgs)
}

func (c *collector) snapshot() []*message.Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*message.Message(nil), c.msgs...)
}

// waitDistinct waits until n distinct IDs arrived or d passes; it fails t
// with what is missing.
func (c *collector) waitDistinct(t testing.TB, n int, d time.Duration, subs ...*running) {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for c.distinct() < n {
		for _, r := range subs {
			if err := r.failedEarly(); err != nil {
				t.Fatalf("subscription ended early: %v (received %d of %d)", err, c.distinct(), n)
			}
		}
		select {
		case <-c.cond:
		case <-tick.C:
		case <-deadline.C:
			t.Fatalf("received %d distinct messages of %d within %s", c.distinct(), n, d)
		}
	}
}

// ids returns the IDs of msgs.
func ids(msgs []*message.Message) []string {
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = m.ID
	}
	return out
}

// numbered returns n messages with payload "<prefix>-<i>".
func numbered(prefix string, n int) []*message.Message {
	out := make([]*message.Message, n)
	for i := range out {
		out[i] = message.New([]byte(fmt.Sprintf("%s-%d", prefix, i)))
	}
	return out
}

func requireCap(t testing.TB, ok bool, name string) {
	t.Helper()
	if !ok {
		t.Skipf("transport does not declare capability %s", name)
	}
}

// eventually polls cond until true or d passes.
func eventually(d time.Duration, cond func() bool) bool {
	deadline := time.Now().Add(d)
	for {
		if cond() {
			return true
		}
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func short(s string) string {
	if len(s) > 60 {
		return s[:60] + "..."
	}
	return strings.ToValidUTF8(s, "?")
}
