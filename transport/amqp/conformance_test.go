package amqptransport

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/courierkit/courier/conformance"
	"github.com/courierkit/courier/internal/testenv"
	"github.com/courierkit/courier/transport"
)

// TestConformance runs the whole suite against a private node this test
// starts (so the broker-restart case can stop and start it), or, where no
// node can be started, against the broker testenv finds (the restart case
// then skips). COURIER_AMQP_CONFORMANCE_SHARED=1 runs it against the
// broker testenv finds; COURIER_AMQP_QUEUE_TYPE=quorum with quorum group
// queues (default classic).
func TestConformance(t *testing.T) {
	url, prefix := "", "conf"
	var restart func(ctx context.Context) error
	if os.Getenv("COURIER_AMQP_CONFORMANCE_SHARED") != "" {
		url = brokerURL(t)
		prefix = uniq("amqpconf")
		cleanupPrefix(t, url, prefix)
	} else if n, err := testenv.StartRabbitMQ(t); err == nil {
		url, restart = n.URL(), n.Restart
	} else {
		t.Logf("no private node (%v); the broker-restart case will skip", err)
		url = brokerURL(t)
		prefix = uniq("amqpconf")
		cleanupPrefix(t, url, prefix)
	}
	conformance.Run(t, conformance.Harness{
		Open: func(ctx context.Context) (transport.Conn, error) {
			// The adapter defaults: unroutable publishes are errors (the
			// suite's no-group probes tolerate them).
			return New(ctx, Options{URL: url, ConnectionName: "courier-conformance", ReconnectMax: time.Second, QueueType: os.Getenv("COURIER_AMQP_QUEUE_TYPE")})
		},
		Restart:           restart,
		Prefix:            prefix,
		Timeout:           30 * time.Second,
		RedeliveryTimeout: 10 * time.Second,
	})
}
