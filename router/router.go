package router

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

var (
	// ErrClosed is returned by Run after Shutdown or Close, like
	// http.ErrServerClosed, and by Run and Add on a router that was shut
	// down.
	ErrClosed = errors.New("router: closed")
	// ErrRunning is returned by Run when the router already runs, and by
	// Add after Run started.
	ErrRunning = errors.New("router: already running")
)

// Options configure a Router. The zero value is usable.
type Options struct {
	// Publisher is handed to handlers for follow-up messages (see
	// PublisherFrom) and to middleware through Delivery.Publisher (dead
	// letters). Default: the Subscriber itself when it also implements
	// transport.Publisher (every transport.Conn does); nil otherwise.
	Publisher transport.Publisher
	// Middleware wraps every route's handler, outside the route's own
	// middleware. The first is the outermost.
	Middleware []message.Middleware
	// Checks are extra health checks (a circuit breaker's Check, a
	// database ping) that Health runs; a failing check makes the router
	// not ready. Default: none.
	Checks []Check
	// Logger receives route starts, stops and failures, and panics caught
	// by the router's safety net. Default: nil, which discards.
	Logger *slog.Logger
}

// Route binds a topic (and consumer group) to a handler.
type Route struct {
	// Name identifies the route in health reports and logs. Default:
	// "topic" or "topic/group".
	Name string
	// Topic to consume. Required.
	Topic string
	// Handler handles its messages. Required.
	Handler message.Handler
	// Middleware wraps Handler inside the router-level middleware; the
	// first is the outermost.
	Middleware []message.Middleware
	// Subscribe are the subscription's options: Group, Concurrency,
	// MaxInFlight, OrderedByKey, AckWait, NackDelay, and the transport's
	// own MaxAttempts and DeadLetterTopic (see the package doc on how they
	// interact with the middleware). Zero fields take the transport's
	// defaults.
	Subscribe transport.SubscribeOptions
}

// Router runs a set of routes on one Subscriber.
//
// Its methods are safe for concurrent use. Routes are added before Run.
type Router struct {
	sub    transport.Subscriber
	pub    transport.Publisher
	mw     []message.Middleware
	checks []Check
	log    *slog.Logger
	caps   transport.Capabilities
	hasCap bool

	mu       sync.Mutex
	routes   []*route
	state    routerState
	cancel   context.CancelFunc // ends the subscriptions of a running Run
	runDone  chan struct{}      // closed when Run returns
	runErr   error              // why Run returned (set before runDone closes)
	draining chan struct{}      // closed when Shutdown begins
	drainOne sync.Once

	_        [64]byte    // drainNow is read per message: its own cache line
	drainNow atomic.Bool // mirrors draining, for the hot path
	_        [63]byte
	idle     chan struct{}
}

type routerState int

const (
	stateIdle routerState = iota
	stateRunning
	stateDraining
	stateStopped // Run returned after Shutdown or Close or ctx
	stateFailed  // Run returned because a route failed
)

func (s routerState) String() string {
	return [...]string{"idle", "running", "draining", "stopped", "failed"}[s]
}

// New returns a Router consuming from sub.
func New(sub transport.Subscriber, opts Options) *Router {
	r := &Router{
		sub:      sub,
		pub:      opts.Publisher,
		mw:       append([]message.Middleware(nil), opts.Middleware...),
		checks:   append([]Check(nil), opts.Checks...),
		log:      opts.Logger,
		draining: make(chan struct{}),
		idle:     make(chan struct{}, 1),
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.pub == nil {
		if p, ok := sub.(transport.Publisher); ok {
			r.pub = p
		}
	}
	if c, ok := sub.(interface {
		Capabilities() transport.Capabilities
	}); ok {
		r.caps, r.hasCap = c.Capabilities(), true
	}
	return r
}

// Use appends router-level middleware (see Options.Middleware). It must be
// called before Run; routes added earlier get it too. Called once Run
// started it changes nothing (the handler chains are built) and logs an
// error.
func (r *Router) Use(mw ...message.Middleware) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.state != stateIdle {
		r.log.Error("courier: Router.Use after Run: the middleware is ignored", "state", r.state.String())
		return
	}
	r.mw = append(r.mw, mw...)
}

// AddCheck adds a health check (see Options.Checks).
func (r *Router) AddCheck(name string, fn func(context.Context) error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.checks = append(r.checks, Check{Name: name, Func: fn})
}

// Handle adds a route for topic and group with h wrapped in mw; see Add.
func (r *Router) Handle(topic, group string, h message.Handler, mw ...message.Middleware) error {
	return r.Add(Route{Topic: topic, Handler: h, Middleware: mw, Subscribe: transport.SubscribeOptions{Group: group}})
}

// Add adds a route. It checks the topic and group names
// (transport.CheckName), rejects a second route for the same topic and
// group or the same name, and fails with ErrRunning once Run started or
// ErrClosed after a shutdown.
func (r *Router) Add(rt Route) error {
	if rt.Handler == nil {
		return fmt.Errorf("router: route for topic %q has no handler", rt.Topic)
	}
	maxLen := 0
	if r.hasCap {
		maxLen = r.caps.Limits.MaxNameLen
	}
	if err := transport.CheckSubscribe(rt.Topic, rt.Subscribe, transport.Limits{MaxNameLen: maxLen}); err != nil {
		return fmt.Errorf("router: %w", err)
	}
	name := rt.Name
	if name == "" {
		name = routeName(rt.Topic, rt.Subscribe.Group)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	switch r.state {
	case stateRunning, stateDraining:
		return ErrRunning
	case stateStopped, stateFailed:
		return ErrClosed
	}
	for _, o := range r.routes {
		if o.name == name {
			return fmt.Errorf("router: a route named %q exists", name)
		}
		if o.topic == rt.Topic && o.group == rt.Subscribe.Group {
			return fmt.Errorf("router: route %q already consumes topic %q as group %q", o.name, rt.Topic, rt.Subscribe.Group)
		}
	}
	r.routes = append(r.routes, &route{
		r: r, name: name, topic: rt.Topic, group: rt.Subscribe.Group,
		opts: rt.Subscribe, user: rt.Handler, mw: append([]message.Middleware(nil), rt.Middleware...),
		pub: r.pub, caps: r.caps, hasCaps: r.hasCap, draining: r.draining, id: newRouteID(),
	})
	return nil
}

// routeIDs makes RouteIDs: a random prefix per process and a counter.
var (
	routeIDPrefix = func() string {
		var b [8]byte
		_, _ = rand.Read(b[:])
		return hex.EncodeToString(b[:])
	}()
	routeIDSeq atomic.Uint64
)

func newRouteID() string {
	return routeIDPrefix + "-" + strconv.FormatUint(routeIDSeq.Add(1), 10)
}

func routeName(topic, group string) string {
	if group == "" {
		return topic
	}
	return topic + "/" + group
}

// Run subscribes every route and blocks until one of:
//
//   - Shutdown or Close was called: Run returns ErrClosed once every
//     subscription has returned (after Shutdown: every in-flight handler
//     finished and its ack landed);
//   - ctx ended: subscriptions stop hard (handlers' contexts are
//     cancelled; unfinished messages are nacked for redelivery) and Run
//     returns ctx.Err();
//   - a subscription failed (the transport refused it or closed under
//     it): the other routes are stopped the same hard way and Run returns
//     that error, naming the route. The health report then shows the
//     router failed, and a supervisor should restart the process.
//
// Run can be called once.
func (r *Router) Run(ctx context.Context) error {
	r.mu.Lock()
	switch r.state {
	case stateRunning, stateDraining:
		r.mu.Unlock()
		return ErrRunning
	case stateStopped, stateFailed:
		r.mu.Unlock()
		return ErrClosed
	}
	if len(r.routes) == 0 {
		r.mu.Unlock()
		return errors.New("router: no routes")
	}
	subCtx, cancel := context.WithCancel(ctx)
	r.cancel = cancel
	r.runDone = make(chan struct{})
	r.state = stateRunning
	for _, rt := range r.routes {
		rt.handler = rt.build(r.mw)
		rt.stop = subCtx.Done()
		rt.state.Store(int32(routeStarting))
	}
	routes := r.routes
	r.mu.Unlock()
	defer cancel()

	type result struct {
		rt  *route
		err error
	}
	results := make(chan result, len(routes))
	for _, rt := range routes {
		go func() {
			rt.state.CompareAndSwap(int32(routeStarting), int32(routeRunning))
			r.log.Info("courier: route started", "route", rt.name, "topic", rt.topic, "group", rt.group)
			err := r.sub.Subscribe(subCtx, rt.topic, rt, rt.opts)
			results <- result{rt, err}
		}()
	}
	var failure error
	for range routes {
		res := <-results
		rt := res.rt
		switch {
		case subCtx.Err() != nil:
			// We or the caller stopped it: any error is the stop itself.
			rt.state.Store(int32(routeStopped))
			r.log.Info("courier: route stopped", "route", rt.name)
		default:
			err := res.err
			if err == nil {
				err = errors.New("subscription ended without an error")
			}
			rt.setErr(err)
			rt.state.Store(int32(routeFailed))
			r.log.Error("courier: route failed; stopping the router", "route", rt.name, "topic", rt.topic, "group", rt.group, "error", err)
			if failure == nil {
				failure = fmt.Errorf("router: route %q: %w", rt.name, err)
			}
			cancel()
		}
	}

	r.mu.Lock()
	defer r.mu.Unlock()
	switch {
	case failure != nil:
		r.state = stateFailed
		r.runErr = failure
	case r.state == stateDraining || r.closed():
		r.state = stateStopped
		r.runErr = ErrClosed
	default:
		r.state = stateStopped
		r.runErr = ctx.Err()
		if r.runErr == nil {
			r.runErr = ErrClosed
		}
	}
	close(r.runDone)
	return r.runErr
}

// closed reports whether Close was called (r.mu held).
func (r *Router) closed() bool { return r.drainNow.Load() }

// Shutdown stops the routes gracefully: the router stops handing new
// messages to handlers (a message the transport delivers from now on waits
// and is nacked for redelivery when the subscription ends), waiting
// middleware is told through Delivery.Draining (Retry hands its message
// back at once), in-flight handlers run to the end, their acks and
// follow-up publishes land, the subscriptions end, and Run returns
// ErrClosed. Shutdown returns nil then.
//
// When ctx ends first, Shutdown stops what remains the hard way (handlers'
// contexts are cancelled, their messages nacked) and returns ctx.Err()
// without waiting for handlers that ignore their context. Shutdown before
// Run makes Run return ErrClosed. It is idempotent and safe to call
// concurrently with Close.
func (r *Router) Shutdown(ctx context.Context) error {
	r.mu.Lock()
	switch r.state {
	case stateIdle:
		r.state = stateStopped
		r.runErr = ErrClosed
		r.startDrain()
		r.mu.Unlock()
		return nil
	case stateRunning:
		r.state = stateDraining
		for _, rt := range r.routes {
			if !rt.state.CompareAndSwap(int32(routeRunning), int32(routeDraining)) {
				rt.state.CompareAndSwap(int32(routeStarting), int32(routeDraining))
			}
		}
	}
	r.startDrain()
	cancel, done := r.cancel, r.runDone
	r.mu.Unlock()
	if done == nil {
		return nil
	}

	for r.inflight() > 0 {
		select {
		case <-r.idle:
		case <-done:
		case <-ctx.Done():
			cancel()
			return ctx.Err()
		}
		if isDone(done) {
			break
		}
	}
	cancel()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func isDone(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// startDrain closes the draining channel once (r.mu held).
func (r *Router) startDrain() {
	r.drainOne.Do(func() {
		r.drainNow.Store(true)
		close(r.draining)
	})
}

// Close stops every route at once: handlers' contexts are cancelled and
// unfinished messages are nacked by the transport. It does not wait; Run
// returns ErrClosed when the subscriptions have ended. Idempotent.
func (r *Router) Close() error {
	r.mu.Lock()
	if r.state == stateIdle {
		r.state = stateStopped
		r.runErr = ErrClosed
	}
	if r.state == stateRunning {
		r.state = stateDraining
	}
	r.startDrain()
	cancel := r.cancel
	r.mu.Unlock()
	if cancel != nil {
		cancel()
	}
	return nil
}

// Done returns a channel closed when Run has returned (nil before Run).
func (r *Router) Done() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.runDone
}

// route is one running route; it is the message.Handler the router gives
// the transport.
type route struct {
	r        *Router
	id       string // Delivery.RouteID
	name     string
	topic    string
	group    string
	opts     transport.SubscribeOptions
	user     message.Handler
	mw       []message.Middleware
	handler  message.Handler // user wrapped in router and route middleware
	pub      transport.Publisher
	caps     transport.Capabilities
	hasCaps  bool
	draining chan struct{}
	stop     <-chan struct{} // the running subscriptions' ctx.Done()

	// Per-message accounting is two atomic adds: taken on entry, finished
	// on exit (in flight = taken - finished); failed and rejected (held
	// during a drain) only count those cases.
	state    atomic.Int32
	_        [64]byte // keep the counters off the read-mostly fields' cache line
	taken    atomic.Int64
	finished atomic.Int64
	_        [48]byte
	failed   atomic.Int64
	rejected atomic.Int64
	lastErr  atomic.Pointer[errorAt]

	seenMu    sync.Mutex // health's observation of the last message
	seenTaken int64
	seenAt    time.Time
}

// inFlight is the route's running handlers (finished read first, so a
// racing entry can only make it overestimate).
func (rt *route) inFlight() int64 {
	f := rt.finished.Load()
	return max(rt.taken.Load()-f, 0)
}

// inflight sums the routes' running handlers.
func (r *Router) inflight() int64 {
	r.mu.Lock()
	routes := r.routes
	r.mu.Unlock()
	var n int64
	for _, rt := range routes {
		n += rt.inFlight()
	}
	return n
}

type errorAt struct {
	err error
	at  time.Time
}

func (rt *route) setErr(err error) { rt.lastErr.Store(&errorAt{err, time.Now()}) }

type routeState int32

const (
	routeIdle routeState = iota
	routeStarting
	routeRunning
	routeDraining
	routeStopped
	routeFailed
)

func (s routeState) String() string {
	return [...]string{"idle", "starting", "running", "draining", "stopped", "failed"}[s]
}

func (rt *route) build(routerMW []message.Middleware) message.Handler {
	mw := make([]message.Middleware, 0, len(routerMW)+len(rt.mw))
	mw = append(mw, routerMW...)
	mw = append(mw, rt.mw...)
	return message.Chain(rt.user, mw...)
}

// Handle runs the route's handler chain for one message: it is what the
// transport calls.
func (rt *route) Handle(ctx context.Context, m *message.Message) (err error) {
	r := rt.r
	rt.taken.Add(1)
	if r.drainNow.Load() {
		rt.rejected.Add(1)
		rt.leave()
		// Draining: do not start the handler. Hold the message until the
		// subscription ends, then hand it back for redelivery. (Waiting
		// on ctx alone is not enough: a transport that runs a
		// Concurrency-1 handler inline in its fetch loop may cancel the
		// handler's ctx only after the handler returned.)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-rt.stop:
			return context.Canceled
		}
	}
	defer func() {
		if p := recover(); p != nil {
			// Middleware.Recover turns panics into errors with more care;
			// this is the router's safety net so no panic escapes.
			id := ""
			if m != nil {
				id = m.ID
			}
			r.log.Error("courier: handler panicked", "route", rt.name, "message_id", id, "panic", p, "stack", string(debug.Stack()))
			err = fmt.Errorf("router: handler of route %q panicked: %v", rt.name, p)
		}
		if err != nil {
			rt.failed.Add(1)
			rt.setErr(err)
		}
		rt.leave()
	}()
	return rt.handler.Handle(bind(ctx, m, rt), m)
}

// leave ends one message's accounting and, during a drain, wakes
// Shutdown to recount.
func (rt *route) leave() {
	rt.finished.Add(1)
	if rt.r.drainNow.Load() {
		select {
		case rt.r.idle <- struct{}{}:
		default:
		}
	}
}
