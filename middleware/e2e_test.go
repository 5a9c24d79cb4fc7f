package middleware_test

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/middleware"
	"github.com/courierkit/courier/router"
	"github.com/courierkit/courier/transport"
	memtransport "github.com/courierkit/courier/transport/mem"
)

// env is one service on the mem transport: a router with the recommended
// stack on topic "jobs" (group "workers"), and a collector of the
// dead-letter topic "jobs.dlq" (group "ops").
type env struct {
	t    *testing.T
	mem  *memtransport.Transport
	r    *router.Router
	dlq  chan *message.Message
	done chan error
}

func newEnv(t *testing.T, o middleware.StackOptions, h message.Handler, sub transport.SubscribeOptions) *env {
	t.Helper()
	return newEnvWith(t, nil, middleware.Recommended(o), h, sub)
}

// newEnvWith is newEnv with the route's middleware given as is and, when
// wrap is set, the router's publisher (dead letters, follow-ups) wrapped.
func newEnvWith(t *testing.T, wrap func(transport.Publisher) transport.Publisher, mw []message.Middleware, h message.Handler, sub transport.SubscribeOptions) *env {
	t.Helper()
	mem, err := memtransport.New(t.Context(), memtransport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = mem.Close() })
	for _, d := range [][2]string{{"jobs", "workers"}, {"jobs.dlq", "ops"}} {
		if err := mem.Declare(t.Context(), d[0], transport.SubscribeOptions{Group: d[1]}); err != nil {
			t.Fatal(err)
		}
	}
	var pub transport.Publisher = mem
	if wrap != nil {
		pub = wrap(mem)
	}
	e := &env{t: t, mem: mem, dlq: make(chan *message.Message, 100)}
	e.r = router.New(mem, router.Options{Publisher: pub})
	sub.Group = "workers"
	if err := e.r.Add(router.Route{Topic: "jobs", Handler: h, Middleware: mw, Subscribe: sub}); err != nil {
		t.Fatal(err)
	}
	if err := e.r.Handle("jobs.dlq", "ops", message.HandlerFunc(func(_ context.Context, m *message.Message) error {
		e.dlq <- m
		return nil
	})); err != nil {
		t.Fatal(err)
	}
	e.start()
	return e
}

func (e *env) start() {
	e.done = make(chan error, 1)
	r := e.r
	go func() { e.done <- r.Run(context.Background()) }()
}

func (e *env) publish(msgs ...*message.Message) {
	e.t.Helper()
	if err := e.mem.Publish(context.Background(), "jobs", msgs...); err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) lag(topic, group string) transport.Lag {
	e.t.Helper()
	l, err := e.mem.Lag(context.Background(), topic, group)
	if err != nil {
		e.t.Fatal(err)
	}
	return l
}

func (e *env) stop() {
	e.t.Helper()
	if err := e.r.Shutdown(context.Background()); err != nil {
		e.t.Fatal(err)
	}
	if err := <-e.done; !errors.Is(err, router.ErrClosed) {
		e.t.Fatalf("Run = %v", err)
	}
}

// settled waits (fake time, bounded) until the jobs group has nothing
// pending or in flight, nor has the dead-letter collector.
func (e *env) settled() {
	e.t.Helper()
	for range 1000 {
		synctest.Wait()
		a, b := e.lag("jobs", "workers"), e.lag("jobs.dlq", "ops")
		if a.Pending == 0 && a.InFlight == 0 && b.Pending == 0 && b.InFlight == 0 {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	e.t.Fatalf("never settled: jobs %+v, jobs.dlq %+v", e.lag("jobs", "workers"), e.lag("jobs.dlq", "ops"))
}

// Seed flow: a transient failure recovers after in-process retries.
func TestE2ETransientFailureRecovers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int32
		e := newEnv(t, middleware.StackOptions{Retry: middleware.RetryOptions{MaxAttempts: 3}},
			message.HandlerFunc(func(context.Context, *message.Message) error {
				if calls.Add(1) <= 2 {
					return errBoom
				}
				return nil
			}), transport.SubscribeOptions{})
		e.publish(message.New([]byte("job")))
		e.settled()
		e.stop()
		if calls.Load() != 3 || len(e.dlq) != 0 {
			t.Fatalf("%d calls, %d dead letters; want 3 and 0", calls.Load(), len(e.dlq))
		}
	})
}

// Seed flow: a persistent failure ends in the dead-letter topic with the
// reason after exactly N delivery attempts (each with its in-process
// retries), redelivered with growing delays in between.
func TestE2EPersistentFailureDeadLettered(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var mu sync.Mutex
		var attempts []int
		var times []time.Time
		e := newEnv(t, middleware.StackOptions{
			Retry:      middleware.RetryOptions{MaxAttempts: 2},
			Redelivery: middleware.RedeliveryOptions{InitialDelay: 10 * time.Second},
			DeadLetter: middleware.DeadLetterOptions{MaxAttempts: 3},
		}, message.HandlerFunc(func(_ context.Context, m *message.Message) error {
			mu.Lock()
			attempts = append(attempts, m.Attempt)
			times = append(times, time.Now())
			mu.Unlock()
			return errors.New("payment service says no")
		}), transport.SubscribeOptions{})
		m := message.New([]byte("job"))
		m.Key = "k1"
		e.publish(m)
		d := <-e.dlq
		e.settled()
		e.stop()
		if want := []int{1, 1, 2, 2, 3, 3}; !slices.Equal(attempts, want) {
			t.Fatalf("handler saw attempts %v, want %v", attempts, want)
		}
		if len(e.dlq) != 0 {
			t.Fatalf("%d more dead letters, want exactly one", len(e.dlq))
		}
		// The redelivery waited ≥ InitialDelay/2 (equal jitter), then ≥ InitialDelay.
		if gap := times[2].Sub(times[1]); gap < 5*time.Second {
			t.Fatalf("first redelivery after %v", gap)
		}
		if gap := times[4].Sub(times[3]); gap < 10*time.Second {
			t.Fatalf("second redelivery after %v", gap)
		}
		if d.ID != m.ID || d.Key != "k1" || string(d.Payload) != "job" {
			t.Fatalf("dead letter %+v", d)
		}
		h := d.Headers
		for k, v := range map[string]string{
			message.HeaderDeadLetterReason: "payment service says no", message.HeaderDeadLetterTopic: "jobs",
			message.HeaderDeadLetterGroup: "workers", message.HeaderDeadLetterAttempts: "3",
			middleware.HeaderDeadLetterFirstFailure: times[1].UTC().Format(time.RFC3339Nano),
			middleware.HeaderDeadLetterLastFailure:  times[5].UTC().Format(time.RFC3339Nano),
		} {
			if h[k] != v {
				t.Errorf("dead letter header %s = %q, want %q", k, h[k], v)
			}
		}
	})
}

// Seed flow: a poison (undecodable) message goes straight to the
// dead-letter topic, without retries or redeliveries.
func TestE2EPoisonMessage(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int32
		type order struct{ ID int }
		e := newEnv(t, middleware.StackOptions{Retry: middleware.RetryOptions{MaxAttempts: 5}},
			message.HandlerFunc(func(_ context.Context, m *message.Message) error {
				calls.Add(1)
				_, err := message.Decode[order](m)
				return err
			}), transport.SubscribeOptions{})
		m := message.New([]byte(`{"ID": "not a number"`))
		m.SetHeader(message.HeaderContentType, "application/json")
		e.publish(m)
		d := <-e.dlq
		e.settled()
		e.stop()
		if calls.Load() != 1 {
			t.Fatalf("poison message handled %d times, want 1", calls.Load())
		}
		if r := d.Headers[message.HeaderDeadLetterReason]; !strings.Contains(r, "decode") || d.Headers[message.HeaderDeadLetterAttempts] != "1" {
			t.Fatalf("dead letter headers %v", d.Headers)
		}
	})
}

// Seed flow: the breaker opens under repeated failure, refuses messages
// (they come back later, nothing is lost), half-opens, and closes when the
// downstream recovers.
func TestE2EBreaker(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var tr transitions
		b := middleware.NewBreaker(middleware.BreakerOptions{ConsecutiveFailures: 3, Timeout: time.Minute, OnStateChange: tr.hook})
		var down atomic.Bool
		down.Store(true)
		var calls, ok atomic.Int32
		e := newEnv(t, middleware.StackOptions{
			Breaker:    b,
			Retry:      middleware.RetryOptions{MaxAttempts: 1},
			DeadLetter: middleware.DeadLetterOptions{MaxAttempts: 1000},
		}, message.HandlerFunc(func(_ context.Context, m *message.Message) error {
			calls.Add(1)
			if down.Load() {
				return errBoom
			}
			ok.Add(1)
			return nil
		}), transport.SubscribeOptions{})
		e.r.AddCheck("breaker", b.Check) // checks may be added any time
		for range 10 {
			e.publish(message.New(nil))
		}
		for b.State() != gobreaker.StateOpen {
			time.Sleep(100 * time.Millisecond)
		}
		synctest.Wait()
		if calls.Load() != 3 {
			t.Fatalf("%d handler calls when the breaker opened, want 3", calls.Load())
		}
		if h := e.r.Health(t.Context()); h.Ready {
			t.Fatal("ready with the breaker open")
		}
		// While open: nothing runs.
		time.Sleep(30 * time.Second)
		synctest.Wait()
		if calls.Load() != 3 {
			t.Fatalf("%d handler calls while open", calls.Load())
		}
		down.Store(false)
		e.settled()
		e.stop()
		if ok.Load() != 10 || len(e.dlq) != 0 {
			t.Fatalf("%d of 10 messages processed, %d dead-lettered", ok.Load(), len(e.dlq))
		}
		want := "closed->open,open->half-open,half-open->closed"
		if got := strings.Join(tr.list(), ","); got != want {
			t.Fatalf("transitions %s, want %s", got, want)
		}
	})
}

// Seed flow: a duplicate delivery is processed once, also when the copies
// arrive concurrently.
func TestE2EDuplicateProcessedOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var runs sync.Map
		gate := make(chan struct{})
		e := newEnv(t, middleware.StackOptions{
			Store:       middleware.NewMemoryStore(middleware.MemoryStoreOptions{}),
			Idempotency: middleware.IdempotencyOptions{InProgressDelay: time.Second},
		}, message.HandlerFunc(func(_ context.Context, m *message.Message) error {
			n, _ := runs.LoadOrStore(m.ID, new(atomic.Int32))
			n.(*atomic.Int32).Add(1)
			<-gate
			return nil
		}), transport.SubscribeOptions{Concurrency: 4})
		id := message.NewID()
		for range 4 { // the publisher retried: four copies of one message
			e.publish(&message.Message{ID: id, Payload: []byte("pay 10€")})
		}
		other := message.New(nil)
		e.publish(other)
		synctest.Wait()
		close(gate)
		e.settled()
		e.stop()
		for _, k := range []string{id, other.ID} {
			n, _ := runs.Load(k)
			if n == nil || n.(*atomic.Int32).Load() != 1 {
				t.Fatalf("message %s ran %v times, want 1", k, n)
			}
		}
	})
}

// Seed flow: shutting down while a message waits between retries loses
// nothing: the wait is cut short, the message is nacked, and the next run
// of the service processes it.
func TestE2EShutdownMidRetry(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var healthy atomic.Bool
		var calls atomic.Int32
		h := message.HandlerFunc(func(context.Context, *message.Message) error {
			calls.Add(1)
			if !healthy.Load() {
				return errBoom
			}
			return nil
		})
		o := middleware.StackOptions{
			Retry:      middleware.RetryOptions{MaxAttempts: 5, InitialInterval: time.Hour, MaxInterval: time.Hour, BackOff: backoffConst(time.Hour).policy},
			Redelivery: middleware.RedeliveryOptions{InitialDelay: time.Second},
		}
		e := newEnv(t, o, h, transport.SubscribeOptions{})
		e.publish(message.New([]byte("important")))
		for calls.Load() == 0 {
			time.Sleep(time.Millisecond)
		}
		synctest.Wait() // in the 1h backoff now
		start := time.Now()
		e.stop()
		if time.Since(start) != 0 {
			t.Fatalf("shutdown waited %v for the retry backoff", time.Since(start))
		}
		if l := e.lag("jobs", "workers"); l.Pending != 1 {
			t.Fatalf("after shutdown the message must wait in the broker: %+v", l)
		}
		// The service restarts (same broker) and processes it.
		healthy.Store(true)
		e.r = router.New(e.mem, router.Options{})
		if err := e.r.Add(router.Route{Topic: "jobs", Handler: h, Middleware: middleware.Recommended(o), Subscribe: transport.SubscribeOptions{Group: "workers"}}); err != nil {
			t.Fatal(err)
		}
		e.start()
		e.settled()
		e.stop()
		if calls.Load() != 2 || len(e.dlq) != 0 {
			t.Fatalf("%d calls, %d dead letters; want 2 and 0", calls.Load(), len(e.dlq))
		}
	})
}

// Redelivery uses the transport's delayed nack under a Router (mem
// declares DelayedNack): the message waits in the broker, not in process.
func TestE2ERedeliveryUsesDelayedNack(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int32
		e := newEnv(t, middleware.StackOptions{
			Retry:      middleware.RetryOptions{MaxAttempts: 1},
			Redelivery: middleware.RedeliveryOptions{InitialDelay: time.Minute},
		}, message.HandlerFunc(func(context.Context, *message.Message) error {
			if calls.Add(1) == 1 {
				return errBoom
			}
			return nil
		}), transport.SubscribeOptions{})
		e.publish(message.New(nil))
		for calls.Load() == 0 {
			time.Sleep(time.Millisecond)
		}
		synctest.Wait()
		if l := e.lag("jobs", "workers"); l.Pending != 1 || l.InFlight != 0 {
			t.Fatalf("lag during the delay %+v: want the message back in the broker", l)
		}
		if h := e.r.Health(t.Context()); h.Routes[0].InFlight != 0 {
			t.Fatalf("in flight %d", h.Routes[0].InFlight)
		}
		e.settled()
		e.stop()
		if calls.Load() != 2 {
			t.Fatal(calls.Load())
		}
	})
}

// Redelivery's hold fallback (for transports without delayed nack) is cut
// short by a graceful shutdown: the message goes back to the broker at
// once instead of holding the drain for the whole delay.
func TestE2EShutdownDuringRedeliveryHold(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var calls atomic.Int32
		e := newEnv(t, middleware.StackOptions{
			Retry:      middleware.RetryOptions{MaxAttempts: 1},
			Redelivery: middleware.RedeliveryOptions{Mode: middleware.RedeliveryHold, InitialDelay: time.Hour},
		}, message.HandlerFunc(func(context.Context, *message.Message) error {
			calls.Add(1)
			return errBoom
		}), transport.SubscribeOptions{})
		e.publish(message.New(nil))
		for calls.Load() == 0 {
			time.Sleep(time.Millisecond)
		}
		synctest.Wait() // holding for up to an hour now
		start := time.Now()
		e.stop()
		if time.Since(start) != 0 {
			t.Fatalf("shutdown waited %v for the hold", time.Since(start))
		}
		if l := e.lag("jobs", "workers"); l.Pending != 1 || calls.Load() != 1 {
			t.Fatalf("lag %+v after %d calls: the message must be back in the broker", l, calls.Load())
		}
	})
}

// Deliveries the breaker refuses do not use up dead-letter attempts, though
// the transport counts them in Message.Attempt: with the breaker opening
// at the first failure and MaxAttempts 3, the message is dead-lettered
// after exactly three handler runs, whatever the refusals in between.
func TestE2EBreakerRefusalsKeepAttempts(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := middleware.NewBreaker(middleware.BreakerOptions{ConsecutiveFailures: 1, Timeout: time.Minute})
		var mu sync.Mutex
		var runs []int
		e := newEnv(t, middleware.StackOptions{
			Breaker:    b,
			Retry:      middleware.RetryOptions{MaxAttempts: 1},
			DeadLetter: middleware.DeadLetterOptions{MaxAttempts: 3},
		}, message.HandlerFunc(func(_ context.Context, m *message.Message) error {
			mu.Lock()
			runs = append(runs, m.Attempt)
			mu.Unlock()
			return errBoom
		}), transport.SubscribeOptions{})
		e.publish(message.New([]byte("job")))
		d := <-e.dlq
		e.settled()
		e.stop()
		mu.Lock()
		defer mu.Unlock()
		if len(runs) != 3 {
			t.Fatalf("handler ran %d times (deliveries %v), want 3", len(runs), runs)
		}
		// Between runs the breaker refused at least one delivery each time.
		if last := runs[len(runs)-1]; last <= 3 {
			t.Fatalf("deliveries %v: expected refused deliveries in between", runs)
		}
		if got := d.Headers[message.HeaderDeadLetterAttempts]; got != "3" {
			t.Fatalf("attempts header %q, want 3 (failures, not deliveries)", got)
		}
		if len(e.dlq) != 0 {
			t.Fatal("more than one dead letter")
		}
	})
}

// A delivery whose context ends (a hard stop) on its last attempt is not
// dead-lettered: the message goes back to the broker, and the next
// delivery is counted as the last attempt again.
func TestDeadLetterNotOnCancelledDelivery(t *testing.T) {
	pub := &recorder{}
	ctx, cancel := context.WithCancel(t.Context())
	h := middleware.DeadLetter(middleware.DeadLetterOptions{MaxAttempts: 2, Publisher: pub})(
		message.HandlerFunc(func(ctx context.Context, _ *message.Message) error {
			cancel()
			return ctx.Err()
		}))
	m := msg("a")
	m.Attempt = 2
	if err := h.Handle(ctx, m); !errors.Is(err, context.Canceled) {
		t.Fatalf("err %v, want the cancellation (nack)", err)
	}
	if n := len(pub.all()); n != 0 {
		t.Fatalf("%d dead letters for a cancelled delivery", n)
	}
	// Transports that do not count: the cancelled delivery is not counted.
	h = middleware.DeadLetter(middleware.DeadLetterOptions{MaxAttempts: 2, Publisher: pub})(
		message.HandlerFunc(func(context.Context, *message.Message) error { return errBoom }))
	for i := range 3 {
		m := msg("b")
		m.Attempt = 0
		c := t.Context()
		if i == 1 {
			cc, cancel := context.WithCancel(c)
			cancel()
			c = cc
		}
		_ = h.Handle(c, m)
	}
	if got := pub.all(); len(got) != 1 || got[0].m.Headers[message.HeaderDeadLetterAttempts] != "2" {
		t.Fatalf("dead letters %v, want one after 2 counted failures", got)
	}
}

// The dead-letter publish ignores the handler's cancellation but not
// forever: PublishTimeout ends a publish to an unreachable broker, and
// the message is nacked.
func TestDeadLetterPublishTimeout(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		h := middleware.DeadLetter(middleware.DeadLetterOptions{Publisher: hangingPublisher{}, PublishTimeout: 5 * time.Second})(
			message.HandlerFunc(func(context.Context, *message.Message) error { return message.Permanent(errBoom) }))
		start := time.Now()
		err := h.Handle(t.Context(), msg("a"))
		var dle *middleware.DeadLetterError
		if !errors.As(err, &dle) || !errors.Is(err, context.DeadlineExceeded) || message.IsPermanent(err) {
			t.Fatalf("err %v, want a retryable *DeadLetterError from the timeout", err)
		}
		if took := time.Since(start); took != 5*time.Second {
			t.Fatalf("gave up after %v, want 5s", took)
		}
	})
}

type hangingPublisher struct{}

func (hangingPublisher) Publish(ctx context.Context, _ string, _ ...*message.Message) error {
	<-ctx.Done()
	return ctx.Err()
}
func (hangingPublisher) Close() error { return nil }

var _ = strconv.Itoa
