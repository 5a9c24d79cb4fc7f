package kafkatransport_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"go.uber.org/goleak"

	"github.com/courierkit/courier/internal/testenv"
	kafkatransport "github.com/courierkit/courier/transport/kafka"
)

// One kfake cluster serves the whole test binary (started on first use);
// every test makes its own topics and groups.
var cluster struct {
	sync.Mutex
	c       *kfake.Cluster
	ports   []int
	dir     string
	addrs   string
	started bool
}

func TestMain(m *testing.M) {
	code := m.Run()
	stopCluster() // before the leak check: the cluster lives for the whole binary
	if code == 0 {
		if err := goleak.Find(
			// sarama's package-level metrics ticker (go-metrics' meter
			// arbiter) starts with the first client and never stops.
			goleak.IgnoreTopFunction("github.com/rcrowley/go-metrics.(*meterArbiter).tick"),
		); err != nil {
			fmt.Fprintf(os.Stderr, "goleak: %v\n", err)
			code = 1
		}
	}
	os.Exit(code)
}

func stopCluster() {
	cluster.Lock()
	defer cluster.Unlock()
	if cluster.c != nil {
		cluster.c.Close()
		cluster.c = nil
	}
	if cluster.dir != "" {
		os.RemoveAll(cluster.dir)
	}
}

func kfakeOpts() []kfake.Opt {
	return []kfake.Opt{
		kfake.NumBrokers(3),
		kfake.Ports(cluster.ports...),
		kfake.DataDir(cluster.dir),
		kfake.GroupMinSessionTimeout(time.Second),
	}
}

func startKfake(testing.TB) (string, func(), error) {
	cluster.Lock()
	defer cluster.Unlock()
	if cluster.started {
		return cluster.addrs, nil, nil
	}
	dir, err := os.MkdirTemp("", "courier-kfake-")
	if err != nil {
		return "", nil, err
	}
	cluster.dir = dir
	for range 3 {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return "", nil, err
		}
		cluster.ports = append(cluster.ports, l.Addr().(*net.TCPAddr).Port)
		l.Close()
	}
	c, err := kfake.NewCluster(kfakeOpts()...)
	if err != nil {
		return "", nil, err
	}
	cluster.c = c
	cluster.addrs = strings.Join(c.ListenAddrs(), ",")
	cluster.started = true
	return cluster.addrs, nil, nil
}

// restartKfake closes the cluster and starts it again on the same ports
// and data directory, as a broker restart does.
func restartKfake(ctx context.Context) error {
	if testenv.KafkaExternal() {
		return fmt.Errorf("cannot restart the cluster of $%s", testenv.KafkaEnvVar)
	}
	cluster.Lock()
	defer cluster.Unlock()
	if cluster.c == nil {
		return fmt.Errorf("no kfake cluster")
	}
	cluster.c.Close()
	cluster.c = nil
	var err error
	for i := 0; i < 50; i++ { // the ports may take a moment to free
		var c *kfake.Cluster
		if c, err = kfake.NewCluster(kfakeOpts()...); err == nil {
			cluster.c = c
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("restart kfake: %w", err)
}

// brokers returns the cluster's bootstrap addresses for t.
func brokers(t testing.TB) []string {
	t.Helper()
	return strings.Split(testenv.Kafka(t, startKfake), ",")
}

var seq atomic.Int64

// name returns a topic or group name unique in this test binary.
func name(t testing.TB, what string) string {
	n := strings.NewReplacer("/", "-", " ", "-", "#", "", "+", "-").Replace(t.Name())
	if len(n) > 60 {
		n = n[:60]
	}
	return fmt.Sprintf("%s-%s-%d-%d", what, n, os.Getpid(), seq.Add(1))
}

// testOptions are fast settings for kfake.
func testOptions(t testing.TB) kafkatransport.Options {
	return kafkatransport.Options{
		Brokers:           brokers(t),
		SessionTimeout:    6 * time.Second,
		HeartbeatInterval: 500 * time.Millisecond,
		CommitInterval:    200 * time.Millisecond,
		RetryBackoff:      20 * time.Millisecond,
		RetryBackoffMax:   500 * time.Millisecond,
		ReconnectBackoff:  100 * time.Millisecond,
		Logger:            testLogger(),
	}
}

func newTransport(t testing.TB, o kafkatransport.Options) *kafkatransport.Transport {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tr, err := kafkatransport.New(ctx, o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

// waitFor polls cond until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// testLogger logs to stderr when COURIER_KAFKA_DEBUG is set.
func testLogger() *slog.Logger {
	if os.Getenv("COURIER_KAFKA_DEBUG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
