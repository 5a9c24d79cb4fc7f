package sqstransport_test

import (
	"context"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/courierkit/courier/conformance"
	"github.com/courierkit/courier/transport"
	sqstransport "github.com/courierkit/courier/transport/sqs"
)

func harness(t testing.TB, mode sqstransport.Mode) conformance.Harness {
	return harnessWith(t, mode, sqstransport.Options{})
}

func harnessWith(t testing.TB, mode sqstransport.Mode, base sqstransport.Options) conformance.Harness {
	h := conformance.Harness{
		Open: func(ctx context.Context) (transport.Conn, error) {
			o := base
			if os.Getenv("SQS_DEBUG") != "" {
				o.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
			}
			return open(t, mode, o), nil
		},
		Timeout:           30 * time.Second,
		RedeliveryTimeout: 10 * time.Second,
		// A short visibility timeout: messages whose ReceiveMessage was
		// cut off by a stopping subscriber come back quickly.
		SubscribeOptions: transport.SubscribeOptions{AckWait: 2 * time.Second},
	}
	if emu != nil {
		// goaws keeps its state in memory: a restart drops every
		// connection and listener while queues and messages stay.
		h.Restart = emu.Restart
	}
	return h
}

// TestConformanceSNS runs the whole suite on sns:// (SNS topics, a queue
// per group) against goaws.
func TestConformanceSNS(t *testing.T) {
	t.Parallel()
	runConformance(t, sqstransport.ModeSNS)
}

// TestConformanceSQS runs the suite on sqs:// (a topic is one queue that
// every subscriber competes for, whatever its group). The transport
// declares PointToPoint, so the suite skips GroupsFanOut by capability.
func TestConformanceSQS(t *testing.T) {
	t.Parallel()
	runConformance(t, sqstransport.ModeSQS)
}

// TestConformanceSQSFIFO runs the suite on sqs:// with FIFO queues, where
// OrderedByKey is declared. One receiver per subscription: goaws's FIFO
// group lock holds one group per queue, so parallel receivers could take
// two messages of one group at once there (AWS does not).
func TestConformanceSQSFIFO(t *testing.T) {
	t.Parallel()
	runConformanceWith(t, sqstransport.ModeSQS, sqstransport.Options{FIFO: true, Receivers: 1})
}

func runConformance(t *testing.T, mode sqstransport.Mode) {
	runConformanceWith(t, mode, sqstransport.Options{})
}

// suites runs the conformance suites one at a time (beside the package's
// other parallel tests). They share the one goaws of the binary, whose
// messages live in this process's heap: BoundedMemory measures the
// process's heap growth, and another suite publishing its own 8 MB
// backlog at that moment made it fail (heap grew by 6 MB, the adapter's
// own share being ~0.2 MB); and BrokerRestart restarts that goaws under
// every other suite.
var suites sync.Mutex

func runConformanceWith(t *testing.T, mode sqstransport.Mode, o sqstransport.Options) {
	suites.Lock()
	defer suites.Unlock()
	conformance.Run(t, harnessWith(t, mode, o))
}
