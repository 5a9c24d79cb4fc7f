package amqptransport

import (
	"context"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"
	"go.uber.org/goleak"

	"github.com/courierkit/courier/internal/testenv"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

var nameSeq atomic.Uint64

// uniq returns a name unique to this test run.
func uniq(prefix string) string {
	return prefix + "-" + strings.ReplaceAll(time.Now().UTC().Format("150405.000000"), ".", "") + "-" + itoa(nameSeq.Add(1))
}

func itoa(n uint64) string {
	const digits = "0123456789"
	if n == 0 {
		return "0"
	}
	var b []byte
	for n > 0 {
		b = append([]byte{digits[n%10]}, b...)
		n /= 10
	}
	return string(b)
}

// brokerURL finds the broker by the testenv rule.
func brokerURL(t testing.TB) string {
	t.Helper()
	return testenv.FindRabbitMQ(t)
}

// open returns a Transport closed at cleanup.
func openT(t testing.TB, o Options) *Transport {
	t.Helper()
	if o.URL == "" {
		o.URL = brokerURL(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tr, err := New(ctx, o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

// rawChannel opens a plain amqp091 connection and channel, closed at
// cleanup.
func rawChannel(t testing.TB, url string) (*amqp.Connection, *amqp.Channel) {
	t.Helper()
	c, err := amqp.Dial(url)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	ch, err := c.Channel()
	if err != nil {
		c.Close()
		t.Fatalf("channel: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c, ch
}

// cleanupTopology deletes, at cleanup, the exchange topic, the queues of
// groups and every retry queue of those queues that delays lists.
func cleanupTopology(t testing.TB, url, topic string, groups []string, retryMs ...int64) {
	t.Helper()
	t.Cleanup(func() {
		c, err := amqp.Dial(url)
		if err != nil {
			t.Logf("cleanup dial: %v", err)
			return
		}
		defer c.Close()
		del := func(f func(ch *amqp.Channel) error) {
			ch, err := c.Channel()
			if err != nil {
				return
			}
			_ = f(ch)
			_ = ch.Close()
		}
		for _, g := range groups {
			q := QueueName(topic, g)
			del(func(ch *amqp.Channel) error { _, err := ch.QueueDelete(q, false, false, false); return err })
			for _, ms := range retryMs {
				rq := RetryQueueName(q, ms)
				del(func(ch *amqp.Channel) error { _, err := ch.QueueDelete(rq, false, false, false); return err })
			}
		}
		del(func(ch *amqp.Channel) error { return ch.ExchangeDelete(topic, false, false) })
	})
}

// eventually polls cond every 10ms until it holds or d passes.
func eventually(d time.Duration, cond func() bool) bool {
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

// cleanupPrefix deletes, at cleanup, every queue and exchange whose name
// starts with prefix, for topology made by code that does not tell its
// names (the shared conformance helpers). It lists names with the local
// rabbitmqctl, so it only runs against the machine's node at
// testenv.RabbitMQ.Default.
func cleanupPrefix(t testing.TB, url, prefix string) {
	t.Helper()
	if url != testenv.RabbitMQ.Default {
		return
	}
	t.Cleanup(func() {
		list := func(what string) []string {
			out, err := exec.Command("rabbitmqctl", "-q", "--no-table-headers", "list_"+what, "name").Output()
			if err != nil {
				t.Logf("cleanup: rabbitmqctl list_%s: %v", what, err)
				return nil
			}
			var names []string
			for _, n := range strings.Split(string(out), "\n") {
				if n = strings.TrimSpace(n); strings.HasPrefix(n, prefix) || strings.HasPrefix(n, "courier-retry."+prefix) {
					names = append(names, n)
				}
			}
			return names
		}
		c, err := amqp.Dial(url)
		if err != nil {
			return
		}
		defer c.Close()
		for _, q := range list("queues") {
			if ch, err := c.Channel(); err == nil {
				_, _ = ch.QueueDelete(q, false, false, false)
				_ = ch.Close()
			}
		}
		for _, x := range list("exchanges") {
			if ch, err := c.Channel(); err == nil {
				_ = ch.ExchangeDelete(x, false, false)
				_ = ch.Close()
			}
		}
	})
}
