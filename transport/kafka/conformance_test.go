package kafkatransport_test

import (
	"context"
	"testing"
	"time"

	"github.com/courierkit/courier/conformance"
	"github.com/courierkit/courier/internal/testenv"
	"github.com/courierkit/courier/transport"
	kafkatransport "github.com/courierkit/courier/transport/kafka"
)

// harness runs the suite on the shared kfake cluster (or $KAFKA_BROKERS),
// restarting kfake on the same ports and data directory for the
// broker-restart case.
func harness(t testing.TB) conformance.Harness {
	o := testOptions(t)
	h := conformance.Harness{
		Open: func(ctx context.Context) (transport.Conn, error) { return kafkatransport.New(ctx, o) },
		// A group join on kfake takes about a second; a group-less
		// subscription resolves its start offsets within milliseconds.
		Settle:            200 * time.Millisecond,
		Timeout:           30 * time.Second,
		RedeliveryTimeout: 30 * time.Second,
	}
	if !testenv.KafkaExternal() {
		h.Restart = restartKfake
	}
	return h
}

func TestConformance(t *testing.T) {
	conformance.Run(t, harness(t))
}
