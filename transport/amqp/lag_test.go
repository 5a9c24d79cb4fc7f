package amqptransport

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/courierkit/courier/internal/testenv"
	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// TestLag: Pending is the ready count of the group's queue before, while
// and after a subscriber holds messages; InFlight is always -1.
func TestLag(t *testing.T) {
	url := brokerURL(t)
	tr := openT(t, Options{URL: url})
	ctx := ctxT(t)
	topic, group := uniq("lag"), "g"
	cleanupTopology(t, url, topic, []string{group})
	const n = 6
	o := transport.SubscribeOptions{Group: group, Concurrency: 1, MaxInFlight: 2}
	if err := tr.Declare(ctx, topic, o); err != nil {
		t.Fatal(err)
	}
	lagIs := func(what string, pending int64) {
		t.Helper()
		var lag transport.Lag
		var err error
		if !eventually(10*time.Second, func() bool {
			lag, err = tr.Lag(ctx, topic, group)
			return err == nil && lag.Pending == pending
		}) {
			t.Fatalf("%s: Lag = %+v, %v; want Pending %d", what, lag, err, pending)
		}
		if lag.Topic != topic || lag.Group != group || lag.InFlight != -1 || lag.Partitions != nil {
			t.Fatalf("%s: Lag = %+v", what, lag)
		}
	}
	lagIs("empty queue", 0)
	msgs := make([]*message.Message, n)
	for i := range msgs {
		msgs[i] = message.New([]byte("x"))
	}
	if err := tr.Publish(ctx, topic, msgs...); err != nil {
		t.Fatal(err)
	}
	lagIs("before consuming", n)

	// basic.qos 2: two messages delivered and held unacked, the rest
	// ready.
	release := make(chan struct{})
	var handled atomic.Int32
	subscribe(t, tr, topic, o, message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		select {
		case <-release:
		case <-ctx.Done():
			return ctx.Err()
		}
		handled.Add(1)
		return nil
	}))
	lagIs("while two are held", n-2)
	close(release)
	if !eventually(10*time.Second, func() bool { return handled.Load() == n }) {
		t.Fatalf("handled %d of %d", handled.Load(), n)
	}
	lagIs("after consuming", 0)
}

// TestLagUnknownGroup: a missing queue is ErrUnknownGroup naming topic and
// group with the 404 reachable; nothing is created, and the failed passive
// declares leave the shared connections and a running subscription alone.
func TestLagUnknownGroup(t *testing.T) {
	url := brokerURL(t)
	tr := openT(t, Options{URL: url})
	ctx := ctxT(t)
	topic := uniq("lagmissing")
	cleanupTopology(t, url, topic, []string{"g", "nobody"})
	o := transport.SubscribeOptions{Group: "g"}
	if err := tr.Declare(ctx, topic, o); err != nil {
		t.Fatal(err)
	}
	col := newCollector()
	subscribe(t, tr, topic, o, col)
	var before Connections
	if !tr.As(&before) {
		t.Fatal("As(*Connections) = false")
	}
	if err := tr.Publish(ctx, topic, &message.Message{ID: "before"}); err != nil {
		t.Fatal(err)
	}
	if !eventually(10*time.Second, func() bool { return col.has("before") }) {
		t.Fatal("subscription not running")
	}

	_, err := tr.Lag(ctx, topic, "nobody")
	var ae *amqp.Error
	if !errors.Is(err, ErrUnknownGroup) || !errors.As(err, &ae) || ae.Code != amqp.NotFound {
		t.Fatalf("missing group: %v; want ErrUnknownGroup wrapping a 404", err)
	}
	if s := err.Error(); !strings.Contains(s, `"nobody"`) || !strings.Contains(s, `"`+topic+`"`) {
		t.Errorf("error does not name group and topic: %v", err)
	}
	// Many at once, alongside the subscription.
	var wg sync.WaitGroup
	for range 10 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := tr.Lag(ctx, uniq("nothing"), "g"); !errors.Is(err, ErrUnknownGroup) {
				t.Errorf("missing topic: %v, want ErrUnknownGroup", err)
			}
		}()
	}
	wg.Wait()
	if _, err := tr.Lag(ctx, topic, "bad group"); !errors.Is(err, transport.ErrInvalidName) {
		t.Errorf("invalid group: %v, want ErrInvalidName", err)
	}

	// Nothing created.
	_, ch := rawChannel(t, url)
	if _, err := ch.QueueDeclarePassive(QueueName(topic, "nobody"), true, false, false, false, nil); err == nil {
		t.Error("Lag created the missing group's queue")
	}

	// The connections, the subscription and the transport still work.
	var after Connections
	if !tr.As(&after) || after != before || after.Consume.IsClosed() || after.Publish.IsClosed() {
		t.Fatalf("connections changed or closed after failed Lag calls: before %+v after %+v", before, after)
	}
	if err := tr.Publish(ctx, topic, &message.Message{ID: "after"}); err != nil {
		t.Fatal(err)
	}
	if !eventually(10*time.Second, func() bool { return col.has("after") }) {
		t.Fatal("subscription stopped receiving after failed Lag calls")
	}
	if err := tr.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	if lag, err := tr.Lag(ctx, topic, "g"); err != nil || lag.Pending != 0 {
		t.Fatalf("Lag of the live group: %+v, %v", lag, err)
	}
}

// TestPing: a round trip while connected, ctx errors unwrapped, ErrClosed
// after Close and after Shutdown.
func TestPing(t *testing.T) {
	url := brokerURL(t)
	tr := openT(t, Options{URL: url})
	ctx := ctxT(t)
	if err := tr.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tr.Ping(context.Background()); err != nil {
		t.Fatal(err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if err := tr.Ping(cctx); err != context.Canceled {
		t.Errorf("Ping with a cancelled ctx = %v", err)
	}
	if _, err := tr.Lag(cctx, "t", "g"); err != context.Canceled {
		t.Errorf("Lag with a cancelled ctx = %v", err)
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

	tr2 := openT(t, Options{URL: url})
	if err := tr2.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tr2.Ping(ctx); err != transport.ErrClosed {
		t.Errorf("Ping after Shutdown = %v, want ErrClosed", err)
	}
}

// TestPingAfterConnectionLoss: after the broker closes the connections,
// Ping reports the loss or succeeds on the new connection, and is healthy
// again once reconnected.
func TestPingAfterConnectionLoss(t *testing.T) {
	url := brokerURL(t)
	name := uniq("courier-pingloss")
	var kill func(ctx context.Context) error
	if url == testenv.RabbitMQ.Default {
		kill = func(ctx context.Context) error {
			_, err := testenv.CloseRabbitConnections(ctx, name)
			return err
		}
	} else {
		node, err := testenv.StartRabbitMQ(t)
		if err != nil {
			t.Skipf("no way to force-close connections on %s: %v", transport.Redact(url), err)
		}
		url, kill = node.URL(), node.CloseAllConnections
	}
	tr := openT(t, Options{URL: url, ConnectionName: name, ReconnectMax: 300 * time.Millisecond})
	ctx := ctxT(t)
	if err := tr.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	var before *amqp.Connection
	tr.As(&before)
	if err := kill(ctx); err != nil {
		t.Fatalf("force-close: %v", err)
	}
	if !eventually(20*time.Second, func() bool {
		var c *amqp.Connection
		return tr.As(&c) && c != before
	}) {
		t.Fatal("no reconnect")
	}
	if !eventually(20*time.Second, func() bool {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		return tr.Ping(pctx) == nil
	}) {
		t.Fatal("Ping not healthy after the reconnect")
	}
}

// BenchmarkLagPing: the cost of one Lag (channel open, passive declare,
// channel close) and one Ping (channel open and close).
func BenchmarkLagPing(b *testing.B) {
	url := brokerURL(b)
	tr := openT(b, Options{URL: url})
	ctx := context.Background()
	topic := uniq("benchlag")
	cleanupTopology(b, url, topic, []string{"g"})
	if err := tr.Declare(ctx, topic, transport.SubscribeOptions{Group: "g"}); err != nil {
		b.Fatal(err)
	}
	b.Run("Lag", func(b *testing.B) {
		for b.Loop() {
			if _, err := tr.Lag(ctx, topic, "g"); err != nil {
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
