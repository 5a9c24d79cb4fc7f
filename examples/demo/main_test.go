package main

import (
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// Started by go.opencensus.io's init (imported by the Pub/Sub
		// client for its legacy metrics); it lives for the process.
		goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
		// pubsub/v2 v2.8.1: a stopped stream's keep-alive goroutine exits
		// at its next ping tick, after Receive returned.
		goleak.IgnoreTopFunction("cloud.google.com/go/pubsub/v2.(*messageIterator).streamKeepAliveHandler"),
		// sarama's process-wide go-metrics meter ticker.
		goleak.IgnoreTopFunction("github.com/rcrowley/go-metrics.(*meterArbiter).tick"),
	)
}

// The demo's whole flow completes on the embedded broker well inside the
// 3 s the README promises (the timeout here is generous for -race).
func TestDemoOnMem(t *testing.T) {
	start := time.Now()
	if err := run("mem://demo-test", 20*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("flow completed in %v", time.Since(start))
}
