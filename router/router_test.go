package router_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"go.uber.org/goleak"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/router"
	"github.com/courierkit/courier/transport"
	memtransport "github.com/courierkit/courier/transport/mem"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newMem(t *testing.T) *memtransport.Transport {
	t.Helper()
	tr, err := memtransport.New(t.Context(), memtransport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	return tr
}

func declare(t *testing.T, c transport.Conn, topic, group string) {
	t.Helper()
	if err := c.Declare(t.Context(), topic, transport.SubscribeOptions{Group: group}); err != nil {
		t.Fatal(err)
	}
}

func publish(t *testing.T, p transport.Publisher, topic string, msgs ...*message.Message) {
	t.Helper()
	if err := p.Publish(context.Background(), topic, msgs...); err != nil {
		t.Fatal(err)
	}
}

func lag(t *testing.T, c *memtransport.Transport, topic, group string) transport.Lag {
	t.Helper()
	l, err := c.Lag(context.Background(), topic, group)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// run starts r.Run in a goroutine and returns its result channel.
func run(r *router.Router, ctx context.Context) chan error {
	ch := make(chan error, 1)
	go func() { ch <- r.Run(ctx) }()
	return ch
}

func TestRoutesAndFollowUps(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mem := newMem(t)
		declare(t, mem, "orders", "billing")
		declare(t, mem, "invoices", "audit")
		r := router.New(mem, router.Options{})
		var got sync.Map
		err := r.Handle("orders", "billing", message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			got.Store("order:"+m.ID, true)
			out := message.New([]byte("invoice for " + m.ID))
			return router.PublisherFrom(ctx).Publish(ctx, "invoices", out)
		}))
		if err != nil {
			t.Fatal(err)
		}
		invoices := make(chan *message.Message, 4)
		if err := r.Add(router.Route{Topic: "invoices", Subscribe: transport.SubscribeOptions{Group: "audit", Concurrency: 4},
			Handler: message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
				d := router.FromContext(ctx)
				if d == nil || d.Route() != "invoices/audit" || d.Group() != "audit" || d.Message != m {
					t.Errorf("delivery %+v", d)
				}
				invoices <- m
				return nil
			})}); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(t.Context())
		done := run(r, ctx)
		in := message.New([]byte("o1"))
		in.SetHeader(message.HeaderCorrelationID, "corr-1")
		publish(t, mem, "orders", in)
		out := <-invoices
		if out.CorrelationID() != "corr-1" || out.CausationID() != in.ID {
			t.Fatalf("follow-up headers %v, want correlation corr-1 and causation %s", out.Headers, in.ID)
		}
		// Without a correlation ID on the consumed message, its ID starts the chain.
		in2 := message.New([]byte("o2"))
		publish(t, mem, "orders", in2)
		out2 := <-invoices
		if out2.CorrelationID() != in2.ID || out2.CausationID() != in2.ID {
			t.Fatalf("follow-up headers %v", out2.Headers)
		}
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("Run after ctx cancel = %v", err)
		}
		if _, ok := got.Load("order:" + in.ID); !ok {
			t.Fatal("order not handled")
		}
	})
}

func TestAddValidates(t *testing.T) {
	mem := newMem(t)
	r := router.New(mem, router.Options{})
	h := message.HandlerFunc(func(context.Context, *message.Message) error { return nil })
	for _, rt := range []router.Route{
		{Topic: "", Handler: h},
		{Topic: "bad topic", Handler: h},
		{Topic: "ok", Handler: h, Subscribe: transport.SubscribeOptions{Group: "bad/group"}},
		{Topic: "ok"},
	} {
		if err := r.Add(rt); err == nil {
			t.Errorf("Add(%+v) accepted", rt)
		}
	}
	if err := r.Handle("t", "g", h); err != nil {
		t.Fatal(err)
	}
	if err := r.Handle("t", "g", h); err == nil {
		t.Fatal("duplicate route accepted")
	}
	if err := router.New(mem, router.Options{}).Run(t.Context()); err == nil {
		t.Fatal("Run without routes succeeded")
	}
}

// Shutdown lets the in-flight handler finish, lands its ack and its
// follow-up publish, hands nothing new to handlers, and makes Run return
// ErrClosed.
func TestShutdownDrains(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mem := newMem(t)
		declare(t, mem, "jobs", "w")
		declare(t, mem, "results", "r")
		started := make(chan string, 10)
		release := make(chan struct{})
		r := router.New(mem, router.Options{})
		var handled atomic.Int32
		_ = r.Add(router.Route{Topic: "jobs", Subscribe: transport.SubscribeOptions{Group: "w", Concurrency: 2},
			Handler: message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
				started <- m.ID
				<-release
				time.Sleep(time.Second) // still working after the release
				handled.Add(1)
				return router.PublisherFrom(ctx).Publish(ctx, "results", m.FollowUp(nil))
			})})
		done := run(r, t.Context())
		publish(t, mem, "jobs", message.New(nil), message.New(nil))
		<-started
		<-started
		shut := make(chan error, 1)
		go func() { shut <- r.Shutdown(context.Background()) }()
		synctest.Wait()
		// During the drain, new messages are not handed to handlers.
		publish(t, mem, "jobs", message.New(nil), message.New(nil), message.New(nil))
		synctest.Wait()
		select {
		case id := <-started:
			t.Fatalf("message %s started during the drain", id)
		default:
		}
		if h := r.Health(t.Context()); h.State != "draining" || h.Ready {
			t.Fatalf("health during drain: %+v", h)
		}
		close(release)
		if err := <-shut; err != nil {
			t.Fatalf("Shutdown = %v", err)
		}
		if err := <-done; !errors.Is(err, router.ErrClosed) {
			t.Fatalf("Run = %v, want ErrClosed", err)
		}
		if handled.Load() != 2 {
			t.Fatalf("%d handled", handled.Load())
		}
		if l := lag(t, mem, "results", "r"); l.Pending != 2 {
			t.Fatalf("follow-ups landed: %d, want 2", l.Pending)
		}
		if l := lag(t, mem, "jobs", "w"); l.Pending != 3 || l.InFlight != 0 {
			t.Fatalf("jobs lag %+v: want the 3 late messages pending for redelivery, none in flight", l)
		}
		// Idempotent, and Run after Shutdown is ErrClosed.
		if err := r.Shutdown(t.Context()); err != nil {
			t.Fatal(err)
		}
		if err := r.Run(t.Context()); !errors.Is(err, router.ErrClosed) {
			t.Fatal(err)
		}
	})
}

func TestShutdownDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mem := newMem(t)
		declare(t, mem, "jobs", "w")
		r := router.New(mem, router.Options{})
		started := make(chan struct{}, 1)
		_ = r.Handle("jobs", "w", message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			started <- struct{}{}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(time.Hour):
				return nil
			}
		}))
		done := run(r, t.Context())
		publish(t, mem, "jobs", message.New(nil))
		<-started
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		start := time.Now()
		if err := r.Shutdown(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("Shutdown = %v", err)
		}
		if time.Since(start) != 5*time.Second {
			t.Fatalf("Shutdown took %v", time.Since(start))
		}
		if err := <-done; !errors.Is(err, router.ErrClosed) {
			t.Fatalf("Run = %v", err)
		}
		// The message was handed back, not lost.
		if l := lag(t, mem, "jobs", "w"); l.Pending != 1 {
			t.Fatalf("lag %+v", l)
		}
	})
}

func TestHandlerPanicDoesNotCrash(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mem := newMem(t)
		declare(t, mem, "jobs", "w")
		r := router.New(mem, router.Options{})
		var calls atomic.Int32
		ok := make(chan struct{})
		_ = r.Add(router.Route{Topic: "jobs", Subscribe: transport.SubscribeOptions{Group: "w", NackDelay: time.Second},
			Handler: message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
				if calls.Add(1) == 1 {
					panic("kaboom")
				}
				close(ok)
				return nil
			})})
		done := run(r, t.Context())
		publish(t, mem, "jobs", message.New(nil))
		<-ok
		h := r.Health(t.Context())
		if h.Routes[0].Failed != 1 || h.Routes[0].LastError == "" {
			t.Fatalf("health after a panic: %+v", h.Routes[0])
		}
		_ = r.Close()
		<-done
	})
}

func TestRouteFailureStopsRouter(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mem := newMem(t)
		r := router.New(mem, router.Options{})
		h := message.HandlerFunc(func(context.Context, *message.Message) error { return nil })
		_ = r.Handle("a", "g", h)
		_ = r.Handle("b", "g", h)
		done := run(r, t.Context())
		synctest.Wait()
		if hh := r.Health(t.Context()); !hh.Ready || !hh.Live {
			t.Fatalf("health while running: %+v", hh)
		}
		_ = mem.Close() // the broker connection goes away
		err := <-done
		if !errors.Is(err, transport.ErrClosed) {
			t.Fatalf("Run = %v, want the route's ErrClosed", err)
		}
		hh := r.Health(t.Context())
		if hh.Live || hh.Ready || hh.State != "failed" || hh.Error == "" {
			t.Fatalf("health after failure: %+v", hh)
		}
	})
}

func TestHealthHandler(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mem := newMem(t)
		r := router.New(mem, router.Options{Checks: []router.Check{{Name: "db", Func: func(context.Context) error { return nil }}}})
		_ = r.Handle("a", "g", message.HandlerFunc(func(context.Context, *message.Message) error { return nil }))
		failing := atomic.Bool{}
		r.AddCheck("breaker", func(context.Context) error {
			if failing.Load() {
				return errors.New("open")
			}
			return nil
		})
		srv := r.HealthHandler()
		get := func(path string) (int, router.Health) {
			rec := httptest.NewRecorder()
			srv.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
			var h router.Health
			if err := json.Unmarshal(rec.Body.Bytes(), &h); err != nil {
				t.Fatal(err)
			}
			return rec.Code, h
		}
		if code, h := get("/readyz"); code != 503 || h.State != "idle" {
			t.Fatalf("before Run: %d %+v", code, h)
		}
		if code, _ := get("/livez"); code != 200 {
			t.Fatalf("liveness before Run: %d", code)
		}
		done := run(r, t.Context())
		synctest.Wait()
		code, h := get("/readyz")
		if code != 200 || h.Broker.Status != "ok" || h.Broker.Via != "ping" || len(h.Routes) != 1 || h.Routes[0].State != "running" || len(h.Checks) != 2 {
			t.Fatalf("running: %d %+v", code, h)
		}
		failing.Store(true)
		if code, h := get("/readyz"); code != 503 || h.Checks[1].Status != "failing" {
			t.Fatalf("failing check: %d %+v", code, h)
		}
		if code, _ := get("/healthz?probe=live"); code != 200 {
			t.Fatalf("a failing check must not fail liveness: %d", code)
		}
		rec := httptest.NewRecorder()
		srv.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/readyz", nil))
		if rec.Code != http.StatusMethodNotAllowed {
			t.Fatal(rec.Code)
		}
		_ = r.Shutdown(t.Context())
		<-done
		if code, h := get("/readyz"); code != 503 || h.State != "stopped" {
			t.Fatalf("after shutdown: %d %+v", code, h)
		}
	})
}

type pingMem struct {
	*memtransport.Transport
	err error
}

func (p pingMem) Ping(context.Context) error { return p.err }

func TestHealthPingsBroker(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mem := newMem(t)
		r := router.New(pingMem{mem, errors.New("connection refused")}, router.Options{})
		_ = r.Handle("a", "g", message.HandlerFunc(func(context.Context, *message.Message) error { return nil }))
		done := run(r, t.Context())
		synctest.Wait()
		h := r.Health(t.Context())
		if h.Ready || h.Broker.Status != "failing" || h.Broker.Error != "connection refused" || h.Broker.Via != "ping" {
			t.Fatalf("%+v", h)
		}
		_ = r.Close()
		<-done
	})
}

func TestRunUntilSignal(t *testing.T) {
	mem := newMem(t)
	declare(t, mem, "jobs", "w")
	r := router.New(mem, router.Options{})
	started, release := make(chan struct{}), make(chan struct{})
	finished := atomic.Bool{}
	_ = r.Handle("jobs", "w", message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		close(started)
		<-release // in flight when the signal arrives
		finished.Store(true)
		return nil
	}))
	done := make(chan error, 1)
	go func() { done <- r.RunUntilSignal(t.Context(), 10*time.Second, syscall.SIGUSR1) }()
	publish(t, mem, "jobs", message.New(nil))
	<-started
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGUSR1); err != nil {
		t.Fatal(err)
	}
	// The signal starts a graceful drain (poll the health state, bounded).
	deadline := time.Now().Add(10 * time.Second)
	for r.Health(t.Context()).State != "draining" {
		if time.Now().After(deadline) {
			t.Fatal("no drain 10s after the signal")
		}
		runtime.Gosched()
	}
	select {
	case err := <-done:
		t.Fatalf("RunUntilSignal returned %v while a handler was in flight", err)
	default:
	}
	close(release)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("RunUntilSignal = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no shutdown 10s after the handler finished")
	}
	if !finished.Load() {
		t.Fatal("the in-flight handler did not finish before RunUntilSignal returned")
	}
	if l := lag(t, mem, "jobs", "w"); l.Pending != 0 || l.InFlight != 0 {
		t.Fatalf("lag %+v", l)
	}
}

func TestCloseStopsAtOnce(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mem := newMem(t)
		declare(t, mem, "jobs", "w")
		r := router.New(mem, router.Options{})
		started := make(chan struct{})
		_ = r.Add(router.Route{Topic: "jobs", Subscribe: transport.SubscribeOptions{Group: "w", Concurrency: 2},
			Handler: message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
				close(started)
				<-ctx.Done()
				return ctx.Err()
			})})
		done := run(r, t.Context())
		publish(t, mem, "jobs", message.New(nil))
		<-started
		_ = r.Close()
		_ = r.Close()
		if err := <-done; !errors.Is(err, router.ErrClosed) {
			t.Fatal(err)
		}
		if l := lag(t, mem, "jobs", "w"); l.Pending != 1 {
			t.Fatalf("lag %+v", l)
		}
	})
}
