package router_test

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"testing/synctest"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/router"
	"github.com/courierkit/courier/transport"
	memtransport "github.com/courierkit/courier/transport/mem"
)

// traceLog records the order in which middleware and handlers run, per
// route.
type traceLog struct {
	mu sync.Mutex
	by map[string][]string
}

func (l *traceLog) add(route, step string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.by == nil {
		l.by = map[string][]string{}
	}
	l.by[route] = append(l.by[route], step)
}

func (l *traceLog) get(route string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.by[route])
}

// tracing is a middleware that records entering and leaving, under the
// route the Delivery in ctx names.
func (l *traceLog) tracing(name string) message.Middleware {
	return func(next message.Handler) message.Handler {
		return message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			d := router.FromContext(ctx)
			if d == nil {
				l.add("?", name+": no Delivery in ctx")
				return next.Handle(ctx, m)
			}
			l.add(d.Route(), name+">")
			err := next.Handle(ctx, m)
			l.add(d.Route(), "<"+name)
			return err
		})
	}
}

// Router-level middleware (Options.Middleware, then Router.Use, in order)
// runs outside each route's own middleware, for every route: also for a
// route added before Use.
func TestMoreRouterMiddlewareOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mem := newMem(t)
		declare(t, mem, "a", "g")
		declare(t, mem, "b", "g")
		var tr traceLog
		r := router.New(mem, router.Options{Middleware: []message.Middleware{tr.tracing("opt1"), tr.tracing("opt2")}})
		var handled sync.WaitGroup
		handled.Add(2)
		handler := func(ctx context.Context, m *message.Message) error {
			defer handled.Done()
			tr.add(router.FromContext(ctx).Route(), "handler")
			return nil
		}
		if err := r.Add(router.Route{Name: "route-a", Topic: "a", Subscribe: transport.SubscribeOptions{Group: "g"},
			Handler:    message.HandlerFunc(handler),
			Middleware: []message.Middleware{tr.tracing("a1"), tr.tracing("a2")}}); err != nil {
			t.Fatal(err)
		}
		r.Use(tr.tracing("use1")) // after route-a was added: it gets it too
		if err := r.Add(router.Route{Name: "route-b", Topic: "b", Subscribe: transport.SubscribeOptions{Group: "g"},
			Handler:    message.HandlerFunc(handler),
			Middleware: []message.Middleware{tr.tracing("b1")}}); err != nil {
			t.Fatal(err)
		}
		r.Use(tr.tracing("use2"), tr.tracing("use3"))
		done := run(r, t.Context())
		publish(t, mem, "a", message.New(nil))
		publish(t, mem, "b", message.New(nil))
		handled.Wait()
		if err := r.Shutdown(t.Context()); err != nil {
			t.Fatal(err)
		}
		if err := <-done; !errors.Is(err, router.ErrClosed) {
			t.Fatalf("Run = %v", err)
		}
		outer := []string{"opt1", "opt2", "use1", "use2", "use3"}
		for route, inner := range map[string][]string{"route-a": {"a1", "a2"}, "route-b": {"b1"}} {
			chain := append(slices.Clone(outer), inner...)
			var want []string
			for _, n := range chain {
				want = append(want, n+">")
			}
			want = append(want, "handler")
			for _, n := range slices.Backward(chain) {
				want = append(want, "<"+n)
			}
			if got := tr.get(route); !slices.Equal(got, want) {
				t.Errorf("%s ran\n  %s\nwant\n  %s", route, strings.Join(got, " "), strings.Join(want, " "))
			}
		}
		if got := tr.get("?"); len(got) != 0 {
			t.Errorf("middleware ran without a Delivery: %v", got)
		}
	})
}

// lagOnly is a broker connection that reports lag but cannot be pinged:
// Health judges the broker by a Lag round trip.
type lagOnly struct {
	mem *memtransport.Transport

	mu    sync.Mutex
	err   error
	asked []string // "topic/group" per Lag call
}

func (s *lagOnly) Subscribe(ctx context.Context, topic string, h message.Handler, opts transport.SubscribeOptions) error {
	return s.mem.Subscribe(ctx, topic, h, opts)
}
func (s *lagOnly) Close() error { return nil }
func (s *lagOnly) Lag(ctx context.Context, topic, group string) (transport.Lag, error) {
	s.mu.Lock()
	s.asked = append(s.asked, topic+"/"+group)
	err := s.err
	s.mu.Unlock()
	if err != nil {
		return transport.Lag{}, err
	}
	return s.mem.Lag(ctx, topic, group)
}

func (s *lagOnly) fail(err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.err = err
}

func (s *lagOnly) calls() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.asked)
}

// plainSub is a Subscriber with neither Ping nor Lag.
type plainSub struct{ mem *memtransport.Transport }

func (s plainSub) Subscribe(ctx context.Context, topic string, h message.Handler, opts transport.SubscribeOptions) error {
	return s.mem.Subscribe(ctx, topic, h, opts)
}
func (s plainSub) Close() error { return nil }

var (
	_ transport.LagReporter = (*lagOnly)(nil)
	_ transport.Subscriber  = plainSub{}
)

// Health of a subscriber without Ping: a LagReporter is asked for the lag
// of the first running route with a group (a route without one is
// skipped), and a failing Lag makes the router not ready (still live).
// With neither, the broker is "unknown" and readiness follows the routes.
func TestMoreHealthBrokerByLag(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		mem := newMem(t)
		declare(t, mem, "events", "audit")
		sub := &lagOnly{mem: mem}
		r := router.New(sub, router.Options{Publisher: mem})
		noop := message.HandlerFunc(func(context.Context, *message.Message) error { return nil })
		// The first route has no group: it cannot be asked for lag.
		if err := r.Add(router.Route{Topic: "broadcast", Handler: noop}); err != nil {
			t.Fatal(err)
		}
		if err := r.Handle("events", "audit", noop); err != nil {
			t.Fatal(err)
		}

		// Before Run no route runs: nothing to ask, the broker is unknown.
		if h := r.Health(t.Context()); h.Broker.Status != "unknown" || h.Broker.Via != "" || h.Ready || !h.Live {
			t.Fatalf("before Run: %+v", h)
		}
		if n := len(sub.calls()); n != 0 {
			t.Fatalf("Lag asked %d times before Run", n)
		}

		done := run(r, t.Context())
		synctest.Wait()
		h := r.Health(t.Context())
		if !h.Ready || !h.Live || h.Broker.Status != "ok" || h.Broker.Via != "lag" || h.Broker.Name != "broker" || h.Broker.Error != "" {
			t.Fatalf("running: %+v", h)
		}
		if got := sub.calls(); !slices.Equal(got, []string{"events/audit"}) {
			t.Fatalf("Lag asked for %v, want [events/audit] (the first running route with a group)", got)
		}

		sub.fail(errors.New("broker unreachable"))
		h = r.Health(t.Context())
		if h.Ready || !h.Live || h.Broker.Status != "failing" || h.Broker.Via != "lag" || h.Broker.Error != "broker unreachable" {
			t.Fatalf("failing lag: %+v, want not ready, live, broker failing via lag", h)
		}
		for _, rh := range h.Routes {
			if rh.State != "running" {
				t.Fatalf("route %s is %s: a broker check must not change route states", rh.Name, rh.State)
			}
		}
		sub.fail(nil)
		if h := r.Health(t.Context()); !h.Ready || h.Broker.Status != "ok" {
			t.Fatalf("recovered: %+v", h)
		}

		if err := r.Shutdown(t.Context()); err != nil {
			t.Fatal(err)
		}
		if err := <-done; !errors.Is(err, router.ErrClosed) {
			t.Fatalf("Run = %v", err)
		}
		// Stopped: no running route to ask.
		n := len(sub.calls())
		if h := r.Health(t.Context()); h.Broker.Status != "unknown" || h.Ready {
			t.Fatalf("stopped: %+v", h)
		}
		if len(sub.calls()) != n {
			t.Fatal("Lag asked after the routes stopped")
		}
	})

	// Neither Ping nor Lag: unknown, and ready on the routes' states alone.
	synctest.Test(t, func(t *testing.T) {
		mem := newMem(t)
		declare(t, mem, "events", "audit")
		r := router.New(plainSub{mem}, router.Options{Publisher: mem})
		if err := r.Handle("events", "audit", message.HandlerFunc(func(context.Context, *message.Message) error { return nil })); err != nil {
			t.Fatal(err)
		}
		done := run(r, t.Context())
		synctest.Wait()
		if h := r.Health(t.Context()); !h.Ready || h.Broker.Status != "unknown" || h.Broker.Via != "" {
			t.Fatalf("running without Ping or Lag: %+v", h)
		}
		_ = r.Close()
		if err := <-done; !errors.Is(err, router.ErrClosed) {
			t.Fatalf("Run = %v", err)
		}
	})
}

// RunUntilSignal's grace runs out (the shutdown was triggered by ctx, so
// no signal is needed and fake time applies): the in-flight handler's
// context is cancelled at the grace, its message goes back to the broker,
// and RunUntilSignal returns context.DeadlineExceeded.
func TestMoreRunUntilSignalGraceRunsOut(t *testing.T) {
	signalOutsideBubble(t)
	synctest.Test(t, func(t *testing.T) {
		mem := newMem(t)
		declare(t, mem, "jobs", "w")
		r := router.New(mem, router.Options{})
		started := make(chan struct{})
		var cancelledAt atomic.Pointer[time.Time]
		_ = r.Handle("jobs", "w", message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			close(started)
			<-ctx.Done() // slower than any grace
			now := time.Now()
			cancelledAt.Store(&now)
			return ctx.Err()
		}))
		ctx, stop := context.WithCancel(t.Context())
		defer stop()
		done := make(chan error, 1)
		go func() { done <- r.RunUntilSignal(ctx, 7*time.Second, syscall.SIGUSR2) }()
		publish(t, mem, "jobs", message.New(nil))
		<-started
		start := time.Now()
		stop()
		synctest.Wait()
		if h := r.Health(t.Context()); h.State != "draining" {
			t.Fatalf("after ctx ended: state %s, want draining", h.State)
		}
		if err := <-done; !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("RunUntilSignal = %v, want context.DeadlineExceeded", err)
		}
		if took := time.Since(start); took != 7*time.Second {
			t.Fatalf("returned %v after ctx ended, want the 7s grace", took)
		}
		if at := cancelledAt.Load(); at == nil || at.Sub(start) != 7*time.Second {
			t.Fatalf("handler ctx cancelled at %v, want at the grace (7s)", at)
		}
		if l := lag(t, mem, "jobs", "w"); l.Pending != 1 || l.InFlight != 0 {
			t.Fatalf("lag %+v: the message must be back in the broker", l)
		}
		if h := r.Health(t.Context()); h.State != "stopped" {
			t.Fatalf("state %s after RunUntilSignal returned, want stopped", h.State)
		}
	})
}

// A handler that ignores its context cannot keep RunUntilSignal (and so
// the process) from returning once the grace ran out: it waits 5s more for
// the cancelled handlers, then returns context.DeadlineExceeded; the
// message stays in flight until the process exits (then the broker
// redelivers it).
func TestMoreRunUntilSignalStuckHandler(t *testing.T) {
	signalOutsideBubble(t)
	synctest.Test(t, func(t *testing.T) {
		mem := newMem(t)
		declare(t, mem, "jobs", "w")
		r := router.New(mem, router.Options{})
		started, release := make(chan struct{}), make(chan struct{})
		_ = r.Handle("jobs", "w", message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			close(started)
			<-release // ignores ctx
			return nil
		}))
		ctx, stop := context.WithCancel(t.Context())
		defer stop()
		done := make(chan error, 1)
		go func() { done <- r.RunUntilSignal(ctx, 7*time.Second, syscall.SIGUSR2) }()
		publish(t, mem, "jobs", message.New(nil))
		<-started
		start := time.Now()
		stop()
		if err := <-done; !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("RunUntilSignal = %v, want context.DeadlineExceeded", err)
		}
		if took := time.Since(start); took != 12*time.Second {
			t.Fatalf("returned %v after ctx ended, want the 7s grace plus 5s", took)
		}
		close(release) // let the bubble's goroutines end
		synctest.Wait()
		_ = mem.Close()
	})
}

// signalOutsideBubble subscribes to SIGUSR2 for the test's duration, from
// outside any synctest bubble: the os/signal machinery (its goroutines and
// channels, started by the process's first Notify of a signal) must not
// be created inside a bubble, and while this subscription holds the
// signal, RunUntilSignal's Notify and Stop inside the bubble only add and
// remove a channel. It also keeps a stray SIGUSR2 from terminating the
// process.
func signalOutsideBubble(t *testing.T) {
	t.Helper()
	c := make(chan os.Signal, 1)
	signal.Notify(c, syscall.SIGUSR2)
	t.Cleanup(func() { signal.Stop(c) })
}

// A clean drain within the grace, triggered by ctx: nil, and the in-flight
// handler finished.
func TestMoreRunUntilSignalCtxDrains(t *testing.T) {
	signalOutsideBubble(t)
	synctest.Test(t, func(t *testing.T) {
		mem := newMem(t)
		declare(t, mem, "jobs", "w")
		r := router.New(mem, router.Options{})
		started := make(chan struct{})
		var finished atomic.Bool
		_ = r.Handle("jobs", "w", message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			close(started)
			time.Sleep(3 * time.Second) // less than the grace
			finished.Store(true)
			return ctx.Err()
		}))
		ctx, stop := context.WithCancel(t.Context())
		defer stop()
		done := make(chan error, 1)
		go func() { done <- r.RunUntilSignal(ctx, 10*time.Second, syscall.SIGUSR2) }()
		publish(t, mem, "jobs", message.New(nil))
		<-started
		stop()
		if err := <-done; err != nil {
			t.Fatalf("RunUntilSignal = %v, want nil", err)
		}
		if !finished.Load() {
			t.Fatal("returned before the in-flight handler finished")
		}
		if l := lag(t, mem, "jobs", "w"); l.Pending != 0 || l.InFlight != 0 {
			t.Fatalf("lag %+v", l)
		}
	})
}

// A second signal during the drain stops at once: the in-flight handler's
// context is cancelled long before the grace, its message goes back to the
// broker, and RunUntilSignal returns. Real signals (SIGUSR2 to this
// process), so no synctest; the test installs its own Notify first, so a
// signal can never take the default action (terminate) whatever
// RunUntilSignal's state.
func TestMoreRunUntilSignalSecondSignalStopsHard(t *testing.T) {
	guard := make(chan os.Signal, 4)
	signal.Notify(guard, syscall.SIGUSR2)
	defer signal.Stop(guard)

	mem := newMem(t)
	declare(t, mem, "jobs", "w")
	r := router.New(mem, router.Options{})
	started := make(chan struct{})
	var sawCancel atomic.Bool
	_ = r.Handle("jobs", "w", message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		close(started)
		<-ctx.Done() // ignores the drain; only a hard stop ends it
		sawCancel.Store(true)
		return ctx.Err()
	}))
	done := make(chan error, 1)
	go func() { done <- r.RunUntilSignal(t.Context(), time.Hour, syscall.SIGUSR2) }()
	publish(t, mem, "jobs", message.New(nil))
	<-started // Run began, so RunUntilSignal's Notify is installed

	waitState := func(want string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for r.Health(t.Context()).State != want {
			if time.Now().After(deadline) {
				t.Fatalf("state %s 10s on, want %s", r.Health(t.Context()).State, want)
			}
			runtime.Gosched()
		}
	}
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	waitState("draining")
	select {
	case err := <-done:
		t.Fatalf("RunUntilSignal returned %v after one signal with a handler in flight", err)
	default:
	}
	if sawCancel.Load() {
		t.Fatal("the first signal cancelled the handler: it must drain gracefully")
	}
	if err := syscall.Kill(syscall.Getpid(), syscall.SIGUSR2); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		// Close cancelled the handler, which returned: ErrHardStop, not
		// the grace's DeadlineExceeded, and not nil (the message was
		// interrupted, not drained).
		if !errors.Is(err, router.ErrHardStop) {
			t.Fatalf("RunUntilSignal = %v, want router.ErrHardStop", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no hard stop 10s after the second signal (grace is 1h)")
	}
	if !sawCancel.Load() {
		t.Fatal("the handler's context was not cancelled by the hard stop")
	}
	if l := lag(t, mem, "jobs", "w"); l.Pending != 1 || l.InFlight != 0 {
		t.Fatalf("lag %+v: the interrupted message must be back in the broker", l)
	}
	if h := r.Health(t.Context()); h.State != "stopped" {
		t.Fatalf("state %s, want stopped", h.State)
	}
}
