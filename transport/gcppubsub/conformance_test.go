package gcppubsubtransport_test

import (
	"context"
	"testing"
	"time"

	"github.com/courierkit/courier/conformance"
	"github.com/courierkit/courier/transport"
	gcppubsubtransport "github.com/courierkit/courier/transport/gcppubsub"
)

// TestConformance runs the suite on pstest (or $PUBSUB_EMULATOR_HOST).
//
// The transport runs with a native dead-letter policy (100 attempts, far
// above what any case reaches) so that Pub/Sub counts delivery attempts
// and the AttemptCount cases run too. AckWait is Pub/Sub's minimum ack
// deadline, 10s, so LeaseExtension really outlives a deadline.
// The suite runs on the default receive_goroutines (see below).
// Restart is nil: pstest keeps its state in memory and loses it when
// closed, so there is nothing to restart into.
func TestConformance(t *testing.T) {
	addr := emulator(t)
	o := testOptions(addr)
	o.DeadLetterTopic = "conf-native-dead-letter"
	o.MaxDeliveryAttempts = 100
	// The default 4 streams, not the 16 the other tests use: pstest
	// ignores StreamingPull flow control and keeps sending into every
	// open stream until gRPC's windows fill, so with 16 streams about 5 MB
	// of an 8 MB backlog sits in in-process gRPC buffers and BoundedMemory
	// fails; real Pub/Sub stops at MaxOutstandingMessages per stream.
	o.ReceiveGoroutines = 0
	if testing.Short() {
		// -short shrinks BoundedMemory's backlog to 800 KB with a 400 KB
		// bound; each of 4 streams then holds a gRPC window's worth of
		// messages pstest pushed regardless of flow control, which (with
		// per-stream buffers) crossed the bound in about 1 of 3 runs.
		// One stream stays well within it.
		o.ReceiveGoroutines = 1
	}
	conformance.Run(t, conformance.Harness{
		Open: func(ctx context.Context) (transport.Conn, error) {
			return gcppubsubtransport.New(ctx, o)
		},
		Timeout: 30 * time.Second,
		// pstest's gRPC server accepts requests of at most 4 MiB.
		MaxPayloadTested: 3 << 20,
		SubscribeOptions: transport.SubscribeOptions{AckWait: 10 * time.Second},
	})
}
