package gcppubsubtransport_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"sync"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2/pstest"
	"go.uber.org/goleak"

	"github.com/courierkit/courier/internal/testenv"
	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	gcppubsubtransport "github.com/courierkit/courier/transport/gcppubsub"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// Started by go.opencensus.io's init (imported by the client
		// library for its legacy metrics); it lives for the process.
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		// pubsub/v2 v2.8.1: a stopped stream's keep-alive goroutine checks
		// for the stop only between its ping ticks, so it outlives
		// Receive by up to one tick, then exits.
		goleak.IgnoreTopFunction("cloud.google.com/go/pubsub/v2.(*messageIterator).streamKeepAliveHandler"),
	)
}

const project = "courier-test"

// emulator returns the address of a Pub/Sub emulator for t: the one named
// by $PUBSUB_EMULATOR_HOST, else a private pstest server on 127.0.0.1,
// closed when t ends.
func emulator(t testing.TB) string {
	addr, _ := emulatorServer(t)
	return addr
}

// emulatorServer is emulator that also returns the pstest server (nil when
// $PUBSUB_EMULATOR_HOST names an external emulator).
func emulatorServer(t testing.TB) (string, *pstest.Server) {
	t.Helper()
	var srv *pstest.Server
	addr := testenv.PubSub(t, func(testing.TB) (string, func(), error) {
		srv = pstest.NewServerWithAddress("127.0.0.1:0")
		return srv.Addr, func() { _ = srv.Close() }, nil
	})
	return addr, srv
}

// testOptions are the Options tests use against addr.
func testOptions(addr string) gcppubsubtransport.Options {
	return gcppubsubtransport.Options{
		Project:           project,
		Emulator:          addr,
		ReceiveGoroutines: 16, // pstest sends ~1 message per stream per 10ms
		AckDeadline:       10 * time.Second,
	}
}

// open returns a transport on addr, closed when t ends.
func open(t testing.TB, o gcppubsubtransport.Options) *gcppubsubtransport.Transport {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tr, err := gcppubsubtransport.New(ctx, o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	return tr
}

func name(what string) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return "t-" + what + "-" + hex.EncodeToString(b[:])
}

// run starts Subscribe in a goroutine; the returned stop cancels it and
// returns its error. t's cleanup stops it too.
func run(t testing.TB, c transport.Subscriber, topic string, o transport.SubscribeOptions, h message.Handler) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Subscribe(ctx, topic, h, o) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(30 * time.Second):
				err = errors.New("Subscribe did not return within 30s of cancel")
			}
		})
		return err
	}
	t.Cleanup(func() {
		if err := stop(); err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, transport.ErrClosed) {
			t.Errorf("Subscribe: %v", err)
		}
	})
	return stop
}

// waitFor polls cond until it holds or d passes.
func waitFor(d time.Duration, cond func() bool) bool {
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

// recorder collects handled messages.
type recorder struct {
	mu   sync.Mutex
	msgs []*message.Message
}

func (r *recorder) Handle(_ context.Context, m *message.Message) error {
	r.mu.Lock()
	r.msgs = append(r.msgs, m)
	r.mu.Unlock()
	return nil
}

func (r *recorder) len() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.msgs)
}

func (r *recorder) snapshot() []*message.Message {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*message.Message(nil), r.msgs...)
}

func ctxT(t testing.TB) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}
