package main

import (
	"fmt"
	"os"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/courierkit/courier/internal/goawstest"
	"github.com/courierkit/courier/internal/testenv"
)

// goaws keeps global state: one emulator for the test binary.
var goaws *goawstest.Server

func TestMain(m *testing.M) {
	var stop func()
	if os.Getenv(testenv.SQSEnvVar) == "" {
		g, s, err := goawstest.Start()
		if err != nil {
			fmt.Fprintln(os.Stderr, "goaws:", err)
			os.Exit(1)
		}
		goaws, stop = g, s
	}
	code := m.Run()
	if stop != nil {
		stop()
	}
	if code == 0 {
		if err := goleak.Find(
			// Started by go.opencensus.io's init (imported by the Pub/Sub
			// client for its legacy metrics); it lives for the process.
			goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
			// pubsub/v2 v2.8.1: a stopped stream's keep-alive goroutine
			// exits at its next ping tick, after Receive returned.
			goleak.IgnoreTopFunction("cloud.google.com/go/pubsub/v2.(*messageIterator).streamKeepAliveHandler"),
			// sarama's process-wide go-metrics meter ticker.
			goleak.IgnoreTopFunction("github.com/rcrowley/go-metrics.(*meterArbiter).tick"),
		); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
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
