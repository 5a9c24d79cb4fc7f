package main

import (
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// The demo's whole flow completes on the embedded broker well inside the
// 3 s the README promises (the timeout here is generous for -race).
func TestDemoOnMem(t *testing.T) {
	start := time.Now()
	if err := run("mem://demo-test", 20*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("flow completed in %v", time.Since(start))
}
