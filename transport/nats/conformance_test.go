package natstransport_test

import (
	"context"
	"testing"
	"time"

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
			return natstransport.New(ctx, natstransport.Options{URL: srv.URL(), ReconnectWait: 100 * time.Millisecond})
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
