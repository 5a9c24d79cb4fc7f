package natstransport_test

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testServer is an embedded nats-server (the real server code, in
// process) with JetStream on file storage in a temp dir. Restart stops it
// and starts it again on the same port and store directory.
type testServer struct {
	t    testing.TB
	mu   sync.Mutex
	s    *server.Server
	opts server.Options
}

func newServer(t testing.TB, mod func(*server.Options)) *testServer {
	t.Helper()
	o := server.Options{
		Host:      "127.0.0.1",
		Port:      server.RANDOM_PORT,
		JetStream: true,
		StoreDir:  t.TempDir(),
		NoLog:     true,
		NoSigs:    true,
	}
	if mod != nil {
		mod(&o)
	}
	ts := &testServer{t: t, opts: o}
	if err := ts.start(); err != nil {
		t.Fatal(err)
	}
	ts.opts.Port = ts.s.Addr().(*net.TCPAddr).Port
	t.Cleanup(ts.stop)
	return ts
}

func (ts *testServer) start() error {
	o := ts.opts
	s, err := server.NewServer(&o)
	if err != nil {
		return err
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		s.Shutdown()
		s.WaitForShutdown()
		return context.DeadlineExceeded
	}
	ts.mu.Lock()
	ts.s = s
	ts.mu.Unlock()
	return nil
}

func (ts *testServer) stop() {
	ts.mu.Lock()
	s := ts.s
	ts.s = nil
	ts.mu.Unlock()
	if s != nil {
		s.Shutdown()
		s.WaitForShutdown()
	}
}

// URL is the server's client URL.
func (ts *testServer) URL() string {
	return "nats://127.0.0.1:" + itoa(ts.opts.Port)
}

// Restart shuts the server down and starts it again on the same port and
// store directory.
func (ts *testServer) Restart(ctx context.Context) error {
	ts.stop()
	var err error
	for ctx.Err() == nil {
		if err = ts.start(); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
	if err == nil {
		err = ctx.Err()
	}
	return err
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	for n >= 10 {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	i--
	b[i] = byte('0' + n)
	return string(b[i:])
}
