package sqstransport_test

import (
	"context"
	"log/slog"
	"os"
	"os/exec"
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
		h.Restart = emu.restart
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
// every subscriber competes for, whatever its group). GroupsFanOut cannot
// hold there by design and the contract has no capability to gate it yet,
// so it is skipped by name; every other case must pass.
func TestConformanceSQS(t *testing.T) {
	t.Parallel()
	runConformance(t, sqstransport.ModeSQS, "GroupsFanOut")
}

// TestConformanceSQSFIFO runs the suite on sqs:// with FIFO queues, where
// OrderedByKey is declared. One receiver per subscription: goaws's FIFO
// group lock holds one group per queue, so parallel receivers could take
// two messages of one group at once there (AWS does not).
func TestConformanceSQSFIFO(t *testing.T) {
	t.Parallel()
	runConformanceWith(t, sqstransport.ModeSQS, sqstransport.Options{FIFO: true, Receivers: 1}, "GroupsFanOut")
}

// childEnv marks the child test process that runs one suite.
const childEnv = "COURIER_SQS_CONFORMANCE_CHILD"

// runConformance runs the suite for mode. Cases to skip are skipped with
// go test -skip in a child run of this test binary (the suite has no
// per-case switch), and named in the log.
func runConformance(t *testing.T, mode sqstransport.Mode, skip ...string) {
	runConformanceWith(t, mode, sqstransport.Options{}, skip...)
}

func runConformanceWith(t *testing.T, mode sqstransport.Mode, o sqstransport.Options, skip ...string) {
	if os.Getenv(childEnv) == t.Name() || len(skip) == 0 && os.Getenv(childEnv) == "" {
		conformance.Run(t, harnessWith(t, mode, o))
		return
	}
	if os.Getenv(childEnv) != "" {
		t.Skip("child run of another suite")
	}
	pattern := ""
	for i, c := range skip {
		if i > 0 {
			pattern += "|"
		}
		pattern += "^" + c + "$"
	}
	if len(skip) > 0 {
		t.Logf("%s: skipping %v (see the comment on TestConformanceSQS)", mode, skip)
	}
	args := []string{"-test.run=^" + t.Name() + "$", "-test.count=1"}
	if pattern != "" {
		args = append(args, "-test.skip=^"+t.Name()+"$/"+pattern)
	}
	if testing.Verbose() {
		args = append(args, "-test.v")
	}
	if testing.Short() {
		args = append(args, "-test.short")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], args...)
	cmd.Env = append(os.Environ(), childEnv+"="+t.Name())
	out, err := cmd.CombinedOutput()
	if err != nil || testing.Verbose() {
		t.Logf("child test process:\n%s", out)
	}
	if err != nil {
		t.Fatalf("%s conformance failed: %v", mode, err)
	}
}
