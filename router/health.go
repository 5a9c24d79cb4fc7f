package router

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"time"

	"github.com/courierkit/courier/transport"
)

// Check is a named health check. Func returns nil when healthy.
type Check struct {
	Name string
	Func func(ctx context.Context) error
}

// Pinger is transport.Pinger. Health calls it when the Router's
// Subscriber implements it. Otherwise, when the Subscriber is a
// transport.LagReporter, Health asks the broker for the lag of the first
// running route with a group (a real round trip); otherwise the broker is
// reported as "unknown" and judged by the routes' states alone (a
// subscription that loses its broker for good fails its route).
type Pinger = transport.Pinger

// Health is the router's health report. It marshals to JSON as the
// handlers of HealthHandler serve it.
type Health struct {
	// Live is false only when the router cannot recover on its own: Run
	// returned because a route failed. A liveness probe should restart
	// the process then.
	Live bool `json:"live"`
	// Ready is true while Run runs, no route is failed, the broker
	// answers (where it can be asked) and every check passes.
	Ready bool `json:"ready"`
	// State is the router's: idle, running, draining, stopped or failed.
	State string `json:"state"`
	// Error is why Run returned, when it did.
	Error  string        `json:"error,omitempty"`
	Broker CheckResult   `json:"broker"`
	Routes []RouteHealth `json:"routes"`
	Checks []CheckResult `json:"checks,omitempty"`
}

// CheckResult is the outcome of one check: Status is "ok", "failing" or
// (broker only) "unknown".
type CheckResult struct {
	Name     string        `json:"name"`
	Status   string        `json:"status"`
	Error    string        `json:"error,omitempty"`
	Duration time.Duration `json:"duration_ns"`
	// Via says how the broker was checked: "ping", "lag" or "" (unknown).
	Via string `json:"via,omitempty"`
}

// RouteHealth reports one route.
type RouteHealth struct {
	Name  string `json:"name"`
	Topic string `json:"topic"`
	Group string `json:"group,omitempty"`
	// State: idle, starting, running, draining, stopped or failed.
	State string `json:"state"`
	// InFlight handlers now; Handled and Failed count handler outcomes
	// since Run began.
	InFlight int64  `json:"in_flight"`
	Handled  uint64 `json:"handled"`
	Failed   uint64 `json:"failed"`
	// LastMessage is when a health check first saw the route's latest
	// message taken (zero: none seen): the router does not read the clock
	// per message, so its precision is the probe interval. A value that
	// stops moving while the backlog grows is a stalled consumer.
	LastMessage time.Time `json:"last_message,omitzero"`
	// LastError is the last handler error or the subscription's failure,
	// with its time.
	LastError   string    `json:"last_error,omitempty"`
	LastErrorAt time.Time `json:"last_error_at,omitzero"`
}

// Health checks the broker (see Pinger) and the registered checks, each
// bounded by ctx, and reports every route.
func (r *Router) Health(ctx context.Context) Health {
	r.mu.Lock()
	st := r.state
	var runErr error
	if st == stateFailed {
		runErr = r.runErr
	}
	routes := append([]*route(nil), r.routes...)
	checks := append([]Check(nil), r.checks...)
	r.mu.Unlock()

	h := Health{State: st.String(), Live: st != stateFailed}
	if runErr != nil {
		h.Error = runErr.Error()
	}
	ready := st == stateRunning
	h.Broker = CheckResult{Name: "broker", Status: "unknown"}
	if p, ok := r.sub.(Pinger); ok {
		h.Broker = runCheck(ctx, Check{Name: "broker", Func: p.Ping})
		h.Broker.Via = "ping"
	} else if lr, ok := r.sub.(transport.LagReporter); ok {
		for _, rt := range routes {
			if rt.group == "" || routeState(rt.state.Load()) != routeRunning {
				continue
			}
			h.Broker = runCheck(ctx, Check{Name: "broker", Func: func(ctx context.Context) error {
				_, err := lr.Lag(ctx, rt.topic, rt.group)
				return err
			}})
			h.Broker.Via = "lag"
			break
		}
	}
	ready = ready && h.Broker.Status != "failing"
	for _, rt := range routes {
		fin, failed, rej := rt.finished.Load(), rt.failed.Load(), rt.rejected.Load()
		taken := rt.taken.Load()
		rh := RouteHealth{
			Name: rt.name, Topic: rt.topic, Group: rt.group,
			State:    routeState(rt.state.Load()).String(),
			InFlight: max(taken-fin, 0), Handled: uint64(max(fin-failed-rej, 0)), Failed: uint64(failed),
		}
		rt.seenMu.Lock()
		if taken != rt.seenTaken {
			rt.seenTaken, rt.seenAt = taken, time.Now()
		}
		rh.LastMessage = rt.seenAt
		rt.seenMu.Unlock()
		if !rh.LastMessage.IsZero() {
			rh.LastMessage = rh.LastMessage.UTC()
		}
		if e := rt.lastErr.Load(); e != nil {
			rh.LastError, rh.LastErrorAt = e.err.Error(), e.at.UTC()
		}
		if routeState(rt.state.Load()) != routeRunning {
			ready = false
		}
		h.Routes = append(h.Routes, rh)
	}
	for _, c := range checks {
		res := runCheck(ctx, c)
		ready = ready && res.Status == "ok"
		h.Checks = append(h.Checks, res)
	}
	h.Ready = ready
	return h
}

func runCheck(ctx context.Context, c Check) CheckResult {
	start := time.Now()
	res := CheckResult{Name: c.Name, Status: "ok"}
	var err error
	func() {
		defer func() {
			if p := recover(); p != nil {
				err = panicError{p}
			}
		}()
		err = c.Func(ctx)
	}()
	res.Duration = time.Since(start)
	if err != nil {
		res.Status, res.Error = "failing", err.Error()
	}
	return res
}

type panicError struct{ v any }

func (p panicError) Error() string { return "check panicked" }

// HealthHandler serves the health report as JSON for probes. A request
// whose path ends in "live" or "livez" (or has ?probe=live) is a liveness
// probe: 200 while Health.Live, else 503. Any other path is a readiness
// probe: 200 while Health.Ready, else 503. Each request's checks are
// bounded by the request's context and timeout (default 5s).
func (r *Router) HealthHandler() http.Handler {
	return healthHandler{r: r, timeout: 5 * time.Second}
}

type healthHandler struct {
	r       *Router
	timeout time.Duration
}

func (hh healthHandler) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodGet && req.Method != http.MethodHead {
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	ctx, cancel := context.WithTimeout(req.Context(), hh.timeout)
	defer cancel()
	h := hh.r.Health(ctx)
	live := req.URL.Query().Get("probe") == "live" ||
		strings.HasSuffix(req.URL.Path, "live") || strings.HasSuffix(req.URL.Path, "livez")
	ok := h.Ready
	if live {
		ok = h.Live
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	if ok {
		w.WriteHeader(http.StatusOK)
	} else {
		w.WriteHeader(http.StatusServiceUnavailable)
	}
	if req.Method == http.MethodHead {
		return
	}
	_ = json.NewEncoder(w).Encode(h)
}
