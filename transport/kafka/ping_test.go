package kafkatransport_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/courierkit/courier/internal/testenv"
	"github.com/courierkit/courier/transport"
)

// TestPing: a round trip to the cluster, ctx errors unwrapped, ErrClosed
// after Close and after Shutdown.
func TestPing(t *testing.T) {
	tr := newTransport(t, testOptions(t))
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := tr.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tr.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
	cctx, ccancel := context.WithCancel(ctx)
	ccancel()
	if err := tr.Ping(cctx); err != context.Canceled {
		t.Errorf("Ping with a cancelled ctx = %v, want context.Canceled", err)
	}
	if _, err := tr.Lag(cctx, "t", "g"); err != context.Canceled {
		t.Errorf("Lag with a cancelled ctx = %v, want context.Canceled", err)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if err := tr.Ping(ctx); err != transport.ErrClosed {
		t.Errorf("Ping after Close = %v, want ErrClosed", err)
	}
	if _, err := tr.Lag(ctx, "t", "g"); err != transport.ErrClosed {
		t.Errorf("Lag after Close = %v, want ErrClosed", err)
	}
	tr2 := newTransport(t, testOptions(t))
	if err := tr2.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tr2.Ping(ctx); err != transport.ErrClosed {
		t.Errorf("Ping after Shutdown = %v, want ErrClosed", err)
	}
}

// TestPingBrokersDown: with every broker gone Ping fails within its ctx
// (and not with ErrClosed); once the brokers are back it succeeds again.
func TestPingBrokersDown(t *testing.T) {
	if testenv.KafkaExternal() {
		t.Skip("cannot stop the brokers of $" + testenv.KafkaEnvVar)
	}
	tr := newTransport(t, testOptions(t))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := tr.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	cluster.Lock()
	cluster.c.Close()
	cluster.c = nil
	cluster.Unlock()
	restarted := false
	restart := func() error {
		cluster.Lock()
		defer cluster.Unlock()
		var err error
		for range 50 { // the ports may take a moment to free
			var c *kfake.Cluster
			if c, err = kfake.NewCluster(kfakeOpts()...); err == nil {
				cluster.c = c
				restarted = true
				return nil
			}
			time.Sleep(100 * time.Millisecond)
		}
		return fmt.Errorf("restart kfake: %w", err)
	}
	defer func() {
		if !restarted {
			if err := restart(); err != nil {
				t.Error(err)
			}
		}
	}()
	pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
	start := time.Now()
	err := tr.Ping(pctx)
	pcancel()
	if err == nil {
		t.Fatal("Ping with every broker down = nil")
	}
	if errors.Is(err, transport.ErrClosed) {
		t.Fatalf("Ping with every broker down = %v; the transport is open", err)
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("Ping took %v, past its 2s ctx", d)
	}
	t.Logf("Ping with the brokers down: %v (after %v)", err, time.Since(start).Round(time.Millisecond))
	lctx, lcancel := context.WithTimeout(ctx, time.Second)
	start = time.Now()
	_, err = tr.Lag(lctx, "t", "g")
	lcancel()
	if err == nil || errors.Is(err, transport.ErrClosed) {
		t.Errorf("Lag with every broker down = %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Lag took %v, past its 1s ctx", d)
	}
	if err := restart(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "Ping after the brokers came back", func() bool {
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		defer pcancel()
		return tr.Ping(pctx) == nil
	})
}

// BenchmarkLagPing: the cost of one Lag (metadata, offset fetch, two list
// offsets per partition) and one Ping (ApiVersions to the controller).
func BenchmarkLagPing(b *testing.B) {
	o := testOptions(b)
	o.Partitions = 3
	tr := newTransport(b, o)
	ctx := context.Background()
	topic, group := name(b, "t"), name(b, "g")
	if err := tr.Declare(ctx, topic, transport.SubscribeOptions{Group: group}); err != nil {
		b.Fatal(err)
	}
	b.Run("Lag", func(b *testing.B) {
		for b.Loop() {
			if _, err := tr.Lag(ctx, topic, group); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Ping", func(b *testing.B) {
		for b.Loop() {
			if err := tr.Ping(ctx); err != nil {
				b.Fatal(err)
			}
		}
	})
}
