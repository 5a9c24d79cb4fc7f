// Package natstest runs an embedded nats-server (the real server code, in
// process) with JetStream on file storage for tests: loopback only, a
// random port, a store in the test's temp dir. Stop and Resume, or
// Restart, bring the same server back on the same port and store, which is
// how tests show that nothing is lost across a broker restart.
package natstest

import (
	"context"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Server is one embedded nats-server.
type Server struct {
	mu   sync.Mutex
	s    *server.Server
	opts server.Options
}

// Start starts a server with JetStream on 127.0.0.1, a random port and a
// file store in t.TempDir(); mod, when not nil, changes the options first
// (limits, authentication). It is shut down when t ends.
func Start(t testing.TB, mod func(*server.Options)) *Server {
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
	ts := &Server{opts: o}
	if err := ts.Resume(); err != nil {
		t.Fatal(err)
	}
	ts.opts.Port = ts.s.Addr().(*net.TCPAddr).Port
	t.Cleanup(ts.Stop)
	return ts
}

// Resume starts the server (again, after Stop) on its port and store.
func (ts *Server) Resume() error {
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

// Stop shuts the server down, dropping every connection. It may be
// called more than once.
func (ts *Server) Stop() {
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
func (ts *Server) URL() string { return "nats://127.0.0.1:" + strconv.Itoa(ts.opts.Port) }

// Restart stops the server and starts it again on the same port and store
// directory, retrying until ctx ends (the port may linger briefly).
func (ts *Server) Restart(ctx context.Context) error {
	ts.Stop()
	var err error
	for ctx.Err() == nil {
		if err = ts.Resume(); err == nil {
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
