package natstransport_test

import (
	"context"
	"log/slog"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/courierkit/courier/conformance"
	"github.com/courierkit/courier/internal/testenv"
	"github.com/courierkit/courier/transport"
	natstransport "github.com/courierkit/courier/transport/nats"
)

// TestConformance runs the suite against the embedded server, restart
// case included.
func TestConformance(t *testing.T) {
	srv := newServer(t, nil)
	conformance.Run(t, conformance.Harness{
		Open: func(ctx context.Context) (transport.Conn, error) {
			return natstransport.New(ctx, natstransport.Options{URL: srv.URL(), ReconnectWait: 100 * time.Millisecond, Logger: testLogger()})
		},
		Restart:           srv.Restart,
		Timeout:           20 * time.Second,
		RedeliveryTimeout: 10 * time.Second,
		SubscribeOptions:  transport.SubscribeOptions{AckWait: 2 * time.Second},
	})
}

// TestConformanceURL runs the suite by URL against the machine's NATS
// (127.0.0.1:4222 or $COURIER_NATS_URL), without the restart case.
func TestConformanceURL(t *testing.T) {
	if testing.Short() {
		t.Skip("the embedded-server run covers -short")
	}
	url := testenv.NATS(t)
	t.Cleanup(func() { deleteStreams(t, url, "COURIER_conf-nats-") })
	conformance.Run(t, conformance.Harness{
		Open: func(ctx context.Context) (transport.Conn, error) {
			return transport.Open(ctx, url+"?reconnect_wait=100ms")
		},
		Prefix:            "conf-nats",
		Timeout:           20 * time.Second,
		RedeliveryTimeout: 10 * time.Second,
		SubscribeOptions:  transport.SubscribeOptions{AckWait: 2 * time.Second},
	})
}

// testLogger logs to stderr when COURIER_TEST_LOG is set, else discards.
func testLogger() *slog.Logger {
	if os.Getenv("COURIER_TEST_LOG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// deleteStreams removes the streams a run left on a shared server.
func deleteStreams(t *testing.T, url, prefix string) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := natstransport.New(ctx, natstransport.Options{URL: url})
	if err != nil {
		t.Logf("cleanup: %v", err)
		return
	}
	defer c.Close()
	var js jetstream.JetStream
	c.As(&js)
	names := js.StreamNames(ctx)
	var del []string
	for n := range names.Name() {
		if strings.HasPrefix(n, prefix) {
			del = append(del, n)
		}
	}
	for _, n := range del {
		_ = js.DeleteStream(ctx, n)
	}
}
