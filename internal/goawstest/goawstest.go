// Package goawstest runs the goaws SQS/SNS emulator in-process for tests,
// on 127.0.0.1 only, behind a shim that makes it safe under the race
// detector. goaws keeps its state in package globals, so a test binary has
// at most one emulator: Start it from TestMain.
//
// The shim and the quirks it works around are described on Server. Start
// also sets goaws's environment (host, port, account 000000000000) and runs
// its PeriodicTasks, without which visibility timeouts and redrive never
// happen, and silences its logrus output.
package goawstest

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/Admiral-Piett/goaws/app/gosqs"
	"github.com/Admiral-Piett/goaws/app/models"
	"github.com/Admiral-Piett/goaws/app/router"
	"github.com/sirupsen/logrus"
)

var started atomic.Bool

// Start starts the emulator on a random loopback port and returns it with
// its stop function. A second call in one process is an error.
func Start() (*Server, func(), error) {
	if !started.CompareAndSwap(false, true) {
		return nil, nil, fmt.Errorf("goawstest: goaws keeps global state; only one emulator per process")
	}
	logrus.SetOutput(io.Discard)
	logrus.SetLevel(logrus.PanicLevel)
	g, err := start("127.0.0.1:0")
	if err != nil {
		return nil, nil, err
	}
	models.CurrentEnvironment.Host, models.CurrentEnvironment.Port, _ = strings.Cut(g.addr, ":")
	models.CurrentEnvironment.Region = ""
	models.CurrentEnvironment.AccountID = "000000000000"
	models.CurrentEnvironment.EnableDuplicates = true
	quit := make(chan bool)
	done := make(chan struct{})
	go func() { defer close(done); gosqs.PeriodicTasks(100*time.Millisecond, quit) }()
	return g, func() {
		close(quit)
		<-done
		g.closeServer()
	}, nil
}

// Endpoint is the emulator's base URL, "http://127.0.0.1:PORT".
func (g *Server) Endpoint() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return "http://" + g.addr
}

// SlowDown delays, by d each way, every request whose body contains marker
// (a queue or topic name): a loaded broker for one test's resources. A zero
// d removes the slowdown.
func (g *Server) SlowDown(marker string, d time.Duration) {
	if d <= 0 {
		g.slow.Store(nil)
		return
	}
	g.slow.Store(&slowdown{marker: []byte(marker), delay: d})
}

// Server serves goaws's router (the handler app/servertest wraps) on a
// loopback listener of our own, so that it can be stopped cleanly and
// restarted on the same address with its state (conformance's
// BrokerRestart), behind a shim that works around its data races:
// goaws reads its queue and topic maps without a lock at the top of most
// handlers while CreateQueue/CreateTopic/Subscribe write them, which the
// race detector reports and which, with two concurrent CreateQueue calls
// for one name, replaces a queue holding messages by an empty one. The
// shim runs those writers alone (an RWMutex) and turns each long poll
// into short polls taken under the read lock, so a 20 s ReceiveMessage
// does not hold the writers off.
type Server struct {
	addr string
	mu   sync.Mutex
	srv  *http.Server
	gate sync.RWMutex
	h    http.Handler
	// slow, when set (SlowDown), delays each request whose body names slow.marker
	// by slow.delay before goaws sees it and again before the answer
	// leaves: a broker (or a machine) under load, for one test's queues.
	slow atomic.Pointer[slowdown]
	// calls counts the requests per action (Calls).
	calls sync.Map // action → *atomic.Int64
	// active counts the requests being served (WaitIdle).
	active atomic.Int64
}

// WaitIdle returns once no request is being served, or with ctx's error.
// A client that cancelled a long poll has its answer at once, while the
// emulator may still be serving it (and may still take messages for it,
// which then stay invisible for the visibility timeout): a benchmark that
// fills a queue after a drain waits for this first.
func (g *Server) WaitIdle(ctx context.Context) error {
	for g.active.Load() > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Millisecond):
		}
	}
	return nil
}

// Calls is how many requests of action ("SendMessageBatch",
// "GetQueueAttributes", ...) the emulator has received so far.
func (g *Server) Calls(action string) int64 {
	if n, ok := g.calls.Load(action); ok {
		return n.(*atomic.Int64).Load()
	}
	return 0
}

type slowdown struct {
	marker []byte
	delay  time.Duration
}

func start(addr string) (*Server, error) {
	g := &Server{h: router.New()}
	if err := g.listen(addr); err != nil {
		return nil, err
	}
	return g, nil
}

func (g *Server) listen(addr string) error {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	srv := &http.Server{Handler: g, ReadHeaderTimeout: 10 * time.Second}
	g.mu.Lock()
	g.addr, g.srv = l.Addr().String(), srv
	g.mu.Unlock()
	go func() { _ = srv.Serve(l) }()
	return nil
}

func (g *Server) closeServer() {
	g.mu.Lock()
	srv := g.srv
	g.mu.Unlock()
	_ = srv.Close()
}

// Restart stops the server, dropping every connection, and serves again
// on the same address; goaws's state survives (it is in memory).
func (g *Server) Restart(ctx context.Context) error {
	g.closeServer()
	for {
		err := g.listen(g.addr)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("relisten on %s: %w (last: %v)", g.addr, ctx.Err(), err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

var goawsWriters = map[string]bool{
	"CreateQueue": true, "DeleteQueue": true, "SetQueueAttributes": true, "PurgeQueue": true,
	"CreateTopic": true, "DeleteTopic": true, "Subscribe": true, "Unsubscribe": true,
	"SetSubscriptionAttributes": true,
}

func (g *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	g.active.Add(1)
	defer g.active.Add(-1)
	if sl := g.slow.Load(); sl != nil {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		if bytes.Contains(body, sl.marker) {
			time.Sleep(sl.delay)
			defer time.Sleep(sl.delay) // the answer is buffered until ServeHTTP returns
		}
	}
	action := ""
	if tgt := r.Header.Get("X-Amz-Target"); tgt != "" {
		_, action, _ = strings.Cut(tgt, ".")
	} else {
		_ = r.ParseForm() // goaws parses it again: ParseForm keeps the result
		action = r.PostForm.Get("Action")
		if action == "" {
			action = r.Form.Get("Action")
		}
	}
	n, ok := g.calls.Load(action)
	if !ok {
		n, _ = g.calls.LoadOrStore(action, new(atomic.Int64))
	}
	n.(*atomic.Int64).Add(1)
	switch {
	case goawsWriters[action]:
		g.gate.Lock()
		defer g.gate.Unlock()
		g.h.ServeHTTP(w, r)
	case action == "ReceiveMessage" && r.Header.Get("X-Amz-Target") != "":
		g.longPoll(w, r)
	default:
		g.gate.RLock()
		defer g.gate.RUnlock()
		g.h.ServeHTTP(w, r)
	}
}

// longPoll answers a JSON ReceiveMessage by polling goaws without a wait
// until a message is there or the requested wait has passed.
func (g *Server) longPoll(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	var req map[string]any
	if err := json.Unmarshal(body, &req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	wait, _ := req["WaitTimeSeconds"].(float64)
	delete(req, "WaitTimeSeconds")
	short, _ := json.Marshal(req)
	deadline := time.Now().Add(time.Duration(wait * float64(time.Second)))
	for {
		if r.Context().Err() != nil {
			// The client is gone: take no messages for it (goaws would
			// hide them for the visibility timeout).
			return
		}
		rec := httptest.NewRecorder()
		rr := r.Clone(r.Context())
		rr.Body = io.NopCloser(bytes.NewReader(short))
		rr.ContentLength = int64(len(short))
		g.gate.RLock()
		g.h.ServeHTTP(rec, rr)
		g.gate.RUnlock()
		var res struct{ Messages []json.RawMessage }
		_ = json.Unmarshal(rec.Body.Bytes(), &res)
		if rec.Code != http.StatusOK || len(res.Messages) > 0 || !time.Now().Before(deadline) || r.Context().Err() != nil {
			for k, vs := range rec.Header() {
				w.Header()[k] = vs
			}
			w.WriteHeader(rec.Code)
			_, _ = w.Write(rec.Body.Bytes())
			return
		}
		select {
		case <-r.Context().Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
}
