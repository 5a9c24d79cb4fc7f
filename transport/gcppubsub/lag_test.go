package gcppubsubtransport_test

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/courierkit/courier/transport"
	gcppubsubtransport "github.com/courierkit/courier/transport/gcppubsub"
)

func TestLagUnsupported(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tr := open(t, testOptions(emulator(t)))
	topic := name("lag")
	if err := tr.Declare(ctx, topic, transport.SubscribeOptions{Group: "g1"}); err != nil {
		t.Fatal(err)
	}
	_, err := tr.Lag(ctx, topic, "g1")
	if !errors.Is(err, transport.ErrUnsupported) {
		t.Fatalf("Lag = %v, want an error matching transport.ErrUnsupported", err)
	}
	if !strings.Contains(err.Error(), "num_undelivered_messages") || !strings.Contains(err.Error(), "projects/"+project+"/subscriptions/"+topic+".g1") {
		t.Fatalf("Lag's error does not say where the backlog is: %v", err)
	}
	if _, err := tr.Lag(ctx, topic, ""); err == nil || errors.Is(err, transport.ErrUnsupported) {
		t.Fatalf("Lag without a group = %v, want a usage error", err)
	}
	var ne *transport.NameError
	if _, err := tr.Lag(ctx, "x", "g1"); !errors.As(err, &ne) {
		t.Fatalf("Lag of an invalid topic = %v, want *transport.NameError", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := tr.Lag(cctx, topic, "g1"); err != context.Canceled {
		t.Fatalf("Lag with a cancelled ctx = %v, want context.Canceled", err)
	}
	_ = tr.Close()
	if _, err := tr.Lag(ctx, topic, "g1"); !errors.Is(err, transport.ErrClosed) {
		t.Fatalf("Lag after Close = %v, want ErrClosed", err)
	}
}

func TestPing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	addr := emulator(t)
	tr := open(t, testOptions(addr))
	if err := tr.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	// Some topics there: still one page of one.
	for range 3 {
		if err := tr.Declare(ctx, name("ping"), transport.SubscribeOptions{Group: "g1"}); err != nil {
			t.Fatal(err)
		}
	}
	if err := tr.Ping(ctx); err != nil {
		t.Fatalf("Ping with topics: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := tr.Ping(cctx); err != context.Canceled {
		t.Fatalf("Ping with a cancelled ctx = %v, want context.Canceled", err)
	}
	if err := tr.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tr.Ping(ctx); !errors.Is(err, transport.ErrClosed) {
		t.Fatalf("Ping after Shutdown = %v, want ErrClosed", err)
	}
}

// TestPingUnreachable: with nothing listening, Ping fails fast with the
// gRPC status rather than waiting for its ctx.
func TestPingUnreachable(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	tr := open(t, testOptions(addr))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = tr.Ping(ctx)
	if err == nil {
		t.Fatal("Ping with nothing listening: no error")
	}
	if ctx.Err() != nil {
		t.Fatalf("Ping waited for its whole ctx: %v", err)
	}
	if c := status.Code(err); c != codes.Unavailable {
		t.Fatalf("Ping's error has gRPC code %v, want Unavailable: %v", c, err)
	}
	t.Logf("unreachable: %v", err)
}

// TestPingClose: Close ends a Ping waiting on a server that never
// answers, and that Ping returns ErrClosed.
func TestPingClose(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns sync.WaitGroup
	conns.Add(1)
	go func() { // accept and say nothing until the listener closes
		defer conns.Done()
		var held []net.Conn
		defer func() {
			for _, c := range held {
				_ = c.Close()
			}
		}()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			held = append(held, c)
		}
	}()
	defer conns.Wait()
	defer l.Close()
	o := testOptions(l.Addr().String())
	tr, err := gcppubsubtransport.New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- tr.Ping(context.Background()) }()
	select {
	case err := <-done:
		t.Fatalf("Ping of a silent server returned %v before Close", err)
	case <-time.After(300 * time.Millisecond):
	}
	start := time.Now()
	if err := tr.Close(); err != nil {
		t.Logf("Close: %v", err)
	}
	select {
	case err := <-done:
		if !errors.Is(err, transport.ErrClosed) {
			t.Fatalf("Ping interrupted by Close = %v, want ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Ping did not return within 10s of Close")
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("Close and Ping took %v", d)
	}
}
