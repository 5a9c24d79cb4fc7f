package sqstransport_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Admiral-Piett/goaws/app/gosqs"
	"github.com/Admiral-Piett/goaws/app/models"
	"github.com/Admiral-Piett/goaws/app/router"
	"github.com/sirupsen/logrus"
	"go.uber.org/goleak"

	"github.com/courierkit/courier/internal/testenv"
	sqstransport "github.com/courierkit/courier/transport/sqs"
)

// emulator is the endpoint of the one goaws of this test binary (goaws
// keeps its state in package globals), or of the service named by
// COURIER_SQS_ENDPOINT.
var emulator string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	var stop func()
	if os.Getenv(testenv.SQSEnvVar) == "" {
		logrus.SetOutput(io.Discard)
		logrus.SetLevel(logrus.PanicLevel)
		g, err := startGoaws("127.0.0.1:0")
		if err != nil {
			fmt.Fprintln(os.Stderr, "goaws:", err)
			return 1
		}
		emu = g
		models.CurrentEnvironment.Host, models.CurrentEnvironment.Port, _ = strings.Cut(g.addr, ":")
		models.CurrentEnvironment.Region = ""
		models.CurrentEnvironment.AccountID = "000000000000"
		models.CurrentEnvironment.EnableDuplicates = true
		quit := make(chan bool)
		done := make(chan struct{})
		go func() { defer close(done); gosqs.PeriodicTasks(100*time.Millisecond, quit) }()
		emulator = "http://" + g.addr
		stop = func() {
			close(quit)
			<-done
			g.close()
		}
	}
	code := m.Run()
	if stop != nil {
		stop()
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			return 1
		}
	}
	return code
}

// emu is the in-process goaws, nil when COURIER_SQS_ENDPOINT is set.
var emu *goaws

// goaws serves goaws's router (the handler app/servertest wraps) on a
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
type goaws struct {
	addr string
	mu   sync.Mutex
	srv  *http.Server
	gate sync.RWMutex
	h    http.Handler
	// slow, when set, delays each request whose body names slow.marker
	// by slow.delay before goaws sees it and again before the answer
	// leaves: a broker (or a machine) under load, for one test's queues.
	slow atomic.Pointer[slowdown]
}

type slowdown struct {
	marker []byte
	delay  time.Duration
}

func startGoaws(addr string) (*goaws, error) {
	g := &goaws{h: router.New()}
	if err := g.listen(addr); err != nil {
		return nil, err
	}
	return g, nil
}

func (g *goaws) listen(addr string) error {
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

func (g *goaws) close() {
	g.mu.Lock()
	srv := g.srv
	g.mu.Unlock()
	_ = srv.Close()
}

// restart stops the server, dropping every connection, and serves again
// on the same address; goaws's state survives (it is in memory).
func (g *goaws) restart(ctx context.Context) error {
	g.close()
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

func (g *goaws) ServeHTTP(w http.ResponseWriter, r *http.Request) {
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
func (g *goaws) longPoll(w http.ResponseWriter, r *http.Request) {
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

var seq atomic.Int64

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9_-]+`)

// name returns a topic name unique in this test binary.
func name(t testing.TB) string {
	n := unsafeName.ReplaceAllString(t.Name(), "-")
	if len(n) > 40 {
		n = n[len(n)-40:]
	}
	return strings.Trim(fmt.Sprintf("t%d-%s", seq.Add(1), n), "-")
}

// endpoint returns where SQS/SNS are: $COURIER_SQS_ENDPOINT or the
// in-process goaws.
func endpoint(t testing.TB) string {
	return testenv.SQS(t, emulator)
}

// open returns a Transport on the emulator, closed at cleanup.
func open(t testing.TB, mode sqstransport.Mode, o sqstransport.Options) *sqstransport.Transport {
	t.Helper()
	o.Mode = mode
	o.Endpoint = endpoint(t)
	if o.AccessKeyID == "" {
		o.AccessKeyID, o.SecretAccessKey = "test", "test"
	}
	if o.Region == "" {
		o.Region = "us-east-1"
	}
	o.Goaws = os.Getenv(testenv.SQSEnvVar) == ""
	tr, err := sqstransport.New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	return tr
}
