package middleware

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/router"
)

var (
	// ErrBreakerOpen is matched (errors.Is) by the error CircuitBreaker
	// returns for a message it did not run because the breaker is open (or
	// half-open and already probing). The message is not at fault:
	// DeadLetter never dead-letters it and Retry does not retry it.
	ErrBreakerOpen = errors.New("middleware: circuit breaker open")
	// ErrInProgress is matched by the error Idempotency returns for a
	// message whose ID another delivery is processing right now. Like
	// ErrBreakerOpen it is never dead-lettered nor retried in-process; it
	// carries a redelivery delay (message.RetryAfter).
	ErrInProgress = errors.New("middleware: message is being processed by another delivery")
)

// deferred reports errors that say "not now" rather than "this message
// failed": they are not retried in-process, not counted towards
// dead-lettering, and do not trip a breaker.
func deferred(err error) bool {
	return errors.Is(err, ErrBreakerOpen) || errors.Is(err, ErrInProgress) || errors.Is(err, ErrDraining) || errors.Is(err, ErrRateLimited)
}

// stopped reports whether the delivery's context was cancelled: the
// subscription stopping hard (Close, Shutdown out of time, Run's ctx), not
// the message failing. A context that passed its deadline (a Timeout
// outside, a transport's per-message lease) is not a stop: the handler was
// too slow, which is a failure like any other.
func stopped(ctx context.Context) bool {
	return errors.Is(ctx.Err(), context.Canceled)
}

// draining returns the router's draining channel, or nil outside a Router.
func routerDelivery(ctx context.Context) *router.Delivery { return router.FromContext(ctx) }

func draining(ctx context.Context) <-chan struct{} {
	if d := router.FromContext(ctx); d != nil {
		return d.Draining()
	}
	return nil
}

// groupOf returns the consumer group of the delivery in ctx, or fallback.
func groupOf(ctx context.Context, fallback string) string {
	if fallback != "" {
		return fallback
	}
	if d := router.FromContext(ctx); d != nil {
		return d.Group()
	}
	return ""
}

// topicOf returns m.Topic, or the route's topic.
func topicOf(ctx context.Context, m *message.Message) string {
	if m.Topic != "" {
		return m.Topic
	}
	if d := router.FromContext(ctx); d != nil {
		return d.Topic()
	}
	return ""
}

// sleep waits d, returning false when ctx ended or the router began to
// drain first.
func sleep(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	case <-draining(ctx):
		return false
	}
}

// note is where inner middleware tell Logging what became of a message
// beyond its error: dead-lettered, skipped as a duplicate, how many
// in-process attempts ran. Logging installs it; without Logging the
// lookups find nothing and cost a context walk.
type note struct {
	outcome string
	tries   int
	dlq     string
}

type noteKey struct{}

func noteOf(ctx context.Context) *note {
	n, _ := ctx.Value(noteKey{}).(*note)
	return n
}

func setOutcome(ctx context.Context, outcome string) {
	if n := noteOf(ctx); n != nil {
		n.outcome = outcome
	}
}

// tracker remembers a little per message (failure count, first failure
// time) across deliveries, for what the broker does not carry (transports
// that do not count attempts, first-failure times). It is bounded: past
// max entries the oldest is forgotten. Keys are (group, message ID).
type tracker struct {
	mu    sync.Mutex
	n     atomic.Int64 // len(m), read without the lock on the hot path
	max   int
	m     map[trackKey]*trackEntry
	order []trackKey // insertion order, for eviction; may hold stale keys
}

type trackKey struct{ group, id string }

type trackEntry struct {
	failures int
	refused  int // deliveries refused (ErrBreakerOpen, ErrInProgress)
	first    time.Time
}

func newTracker(max int) *tracker {
	if max <= 0 {
		max = 10000
	}
	return &tracker{max: max, m: make(map[trackKey]*trackEntry)}
}

// failed records a failure of key at now and returns its failure count
// (this one included), the time of its first recorded failure and how
// many of its deliveries were refused.
func (t *tracker) failed(key trackKey, now time.Time) (int, time.Time, int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	e := t.entry(key)
	if e.failures == 0 {
		e.first = now
	}
	e.failures++
	return e.failures, e.first, e.refused
}

// refused records a delivery of key that was refused, not run.
func (t *tracker) refused(key trackKey) {
	t.mu.Lock()
	t.entry(key).refused++
	t.mu.Unlock()
}

// entry returns key's entry, making it (and evicting the oldest past max)
// when there is none; t.mu held.
func (t *tracker) entry(key trackKey) *trackEntry {
	e := t.m[key]
	if e == nil {
		for len(t.m) >= t.max && len(t.order) > 0 {
			delete(t.m, t.order[0])
			t.order[0] = trackKey{}
			t.order = t.order[1:]
		}
		if len(t.order) >= 2*t.max { // drop keys forgotten since
			live := make([]trackKey, 0, len(t.m)+1)
			seen := make(map[trackKey]bool, len(t.m))
			for _, k := range t.order {
				if t.m[k] != nil && !seen[k] {
					seen[k] = true
					live = append(live, k)
				}
			}
			t.order = live
		}
		e = &trackEntry{}
		t.m[key] = e
		t.order = append(t.order, key)
		t.n.Store(int64(len(t.m)))
	}
	return e
}

// get returns key's failure count and first failure time without changing
// them.
func (t *tracker) get(key trackKey) (int, time.Time) {
	if t.n.Load() == 0 {
		return 0, time.Time{}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if e := t.m[key]; e != nil {
		return e.failures, e.first
	}
	return 0, time.Time{}
}

// forget drops key (after success or dead-lettering).
func (t *tracker) forget(key trackKey) {
	if t.n.Load() == 0 {
		return
	}
	t.mu.Lock()
	delete(t.m, key)
	t.n.Store(int64(len(t.m)))
	t.mu.Unlock()
}
