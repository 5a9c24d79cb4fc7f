package sqstransport_test

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	sqstransport "github.com/courierkit/courier/transport/sqs"
)

// waitLag polls Lag until it reports pending and inflight, or fails after d.
func waitLag(t *testing.T, tr *sqstransport.Transport, topic, group string, pending, inflight int64, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	var last transport.Lag
	var err error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		last, err = tr.Lag(ctx, topic, group)
		cancel()
		if err == nil && last.Pending == pending && last.InFlight == inflight {
			if last.Topic != topic || last.Group != group || last.Partitions != nil {
				t.Fatalf("Lag = %+v: want Topic %q, Group %q, no partitions", last, topic, group)
			}
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("Lag(%s, %s) = %+v, %v; want Pending %d InFlight %d within %s", topic, group, last, err, pending, inflight, d)
}

func TestLag(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		mode sqstransport.Mode
		o    sqstransport.Options
	}{
		{"sns", sqstransport.ModeSNS, sqstransport.Options{}},
		{"sqs", sqstransport.ModeSQS, sqstransport.Options{}},
		{"sqs-fifo", sqstransport.ModeSQS, sqstransport.Options{FIFO: true, Receivers: 1}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			tr := open(t, c.mode, c.o)
			topic, group := name(t), "g1"
			so := transport.SubscribeOptions{Group: group, Concurrency: 1, MaxInFlight: 1, AckWait: 30 * time.Second}
			if err := tr.Declare(ctx, topic, so); err != nil {
				t.Fatal(err)
			}
			waitLag(t, tr, topic, group, 0, 0, 10*time.Second)
			const n = 3
			for i := range n {
				m := message.New([]byte(fmt.Sprint("lag ", i)))
				m.Key = fmt.Sprint("k", i) // distinct FIFO groups: one can be in flight while others wait
				if err := tr.Publish(ctx, topic, m); err != nil {
					t.Fatal(err)
				}
			}
			waitLag(t, tr, topic, group, n, 0, 10*time.Second)

			// One message held by a handler: one in flight, the rest pending.
			release := make(chan struct{})
			entered := make(chan struct{}, n)
			subscribe(t, tr, topic, message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
				entered <- struct{}{}
				select {
				case <-release:
					return nil
				case <-ctx.Done():
					return ctx.Err()
				}
			}), so)
			select {
			case <-entered:
			case <-time.After(15 * time.Second):
				t.Fatal("no message delivered")
			}
			waitLag(t, tr, topic, group, n-1, 1, 10*time.Second)
			close(release)
			waitLag(t, tr, topic, group, 0, 0, 20*time.Second)
		})
	}
}

func TestLagErrors(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	sns := open(t, sqstransport.ModeSNS, sqstransport.Options{})
	sq := open(t, sqstransport.ModeSQS, sqstransport.Options{})
	topic := name(t)

	// A group (or topic) without a queue.
	if err := sns.Declare(ctx, topic, transport.SubscribeOptions{Group: "there"}); err != nil {
		t.Fatal(err)
	}
	if _, err := sns.Lag(ctx, topic, "there"); err != nil {
		t.Fatalf("Lag of a declared group: %v", err)
	}
	_, err := sns.Lag(ctx, topic, "missing")
	if !errors.Is(err, sqstransport.ErrNoQueue) {
		t.Fatalf("Lag of a group never declared = %v, want ErrNoQueue", err)
	}
	t.Logf("missing group: %v", err)
	if _, err := sq.Lag(ctx, name(t), ""); !errors.Is(err, sqstransport.ErrNoQueue) {
		t.Fatalf("sqs:// Lag of a topic without a queue = %v, want ErrNoQueue", err)
	}
	// Lag creates nothing.
	if _, err := sns.Lag(ctx, topic, "missing"); !errors.Is(err, sqstransport.ErrNoQueue) {
		t.Fatalf("second Lag of a missing group = %v, want ErrNoQueue", err)
	}
	if _, err := sns.Lag(ctx, topic, ""); err == nil {
		t.Fatal("sns:// Lag without a group: no error")
	}
	var ne *transport.NameError
	if _, err := sns.Lag(ctx, "bad.topic", "g"); !errors.As(err, &ne) {
		t.Fatalf("Lag of an invalid name = %v, want *transport.NameError", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := sns.Lag(cctx, topic, "there"); err != context.Canceled {
		t.Fatalf("Lag with a cancelled ctx = %v, want context.Canceled", err)
	}
	_ = sns.Close()
	if _, err := sns.Lag(ctx, topic, "there"); !errors.Is(err, transport.ErrClosed) {
		t.Fatalf("Lag after Close = %v, want ErrClosed", err)
	}
}

func TestPing(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	for _, mode := range []sqstransport.Mode{sqstransport.ModeSNS, sqstransport.ModeSQS} {
		tr := open(t, mode, sqstransport.Options{})
		if err := tr.Ping(ctx); err != nil {
			t.Fatalf("Ping (%v): %v", mode, err)
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

	// Nothing listening: Ping fails (within its ctx) and keeps the
	// secret key out of its error.
	l := deadEndpoint(t)
	tr, err := sqstransport.New(ctx, sqstransport.Options{
		Endpoint: l, Region: "us-east-1", AccessKeyID: "AKIDPING", SecretAccessKey: "ping-secret-value",
		Mode: sqstransport.ModeSNS, Goaws: true,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	pctx, pcancel := context.WithTimeout(ctx, 10*time.Second)
	defer pcancel()
	err = tr.Ping(pctx)
	if err == nil {
		t.Fatal("Ping of an endpoint where nothing listens: no error")
	}
	if pctx.Err() != nil {
		t.Fatalf("Ping of a closed port took the whole ctx: %v", err)
	}
	if s := err.Error(); strings.Contains(s, "ping-secret-value") {
		t.Fatalf("Ping's error shows the secret: %s", s)
	}
	t.Logf("dead endpoint: %v", err)
}

// deadEndpoint returns an http:// loopback endpoint where nothing listens.
func deadEndpoint(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	_ = l.Close()
	return "http://" + addr
}

// TestLagDelayedNack: a message nacked with a delay waits invisible, so
// Lag counts it as InFlight, not Pending (as the package doc says).
func TestLagDelayedNack(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	tr := open(t, sqstransport.ModeSQS, sqstransport.Options{})
	topic := name(t)
	so := transport.SubscribeOptions{Group: "g", Concurrency: 1, MaxInFlight: 1}
	if err := tr.Declare(ctx, topic, so); err != nil {
		t.Fatal(err)
	}
	if err := tr.Publish(ctx, topic, message.New([]byte("later"))); err != nil {
		t.Fatal(err)
	}
	nacked := make(chan struct{}, 1)
	sctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- tr.Subscribe(sctx, topic, message.HandlerFunc(func(context.Context, *message.Message) error {
			select {
			case nacked <- struct{}{}:
			default:
			}
			return message.RetryAfter(errors.New("not yet"), time.Minute)
		}), so)
	}()
	select {
	case <-nacked:
	case <-time.After(15 * time.Second):
		t.Fatal("no delivery")
	}
	// Stop before looking, so nothing but the nack holds the message.
	cancel()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatal("Subscribe did not return")
	}
	waitLag(t, tr, topic, "g", 0, 1, 10*time.Second)
}
