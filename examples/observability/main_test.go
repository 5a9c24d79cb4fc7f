package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// The Pub/Sub SDK, linked in for gcppubsub:// URLs, starts OpenCensus's
// view worker at init; it is the only goroutine expected to outlive the
// tests.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"))
}

// The example's flow on mem:// is one trace of five spans over three
// services, in the expected shape, and the exporters write spans and the
// messaging metrics.
func TestOneTraceAcrossThreeServices(t *testing.T) {
	var stdout, stderr bytes.Buffer
	tree, err := run(context.Background(), config{URL: "mem://example-test", Export: true, Timeout: 30 * time.Second}, &stdout, &stderr)
	if err != nil {
		t.Fatalf("run: %v\n%s", err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(tree), "\n")
	want := []string{
		": 5 spans, 3 services",
		"POST /checkout  (checkout, server)",
		"└─ send orders  (checkout, producer)",
		"   └─ process orders  (billing, consumer)",
		"      └─ send payments  (billing, producer)",
		"         └─ process payments  (shipping, consumer)",
	}
	if len(lines) != len(want) {
		t.Fatalf("summary:\n%s\nwant %d lines", tree, len(want))
	}
	if !strings.HasPrefix(lines[0], "trace ") || !strings.HasSuffix(lines[0], want[0]) {
		t.Errorf("first line %q", lines[0])
	}
	for i := 1; i < len(want); i++ {
		if lines[i] != want[i] {
			t.Errorf("line %d: %q, want %q", i, lines[i], want[i])
		}
	}
	// Every span and metric the exporters wrote is valid JSON; the
	// messaging metrics are among them.
	dec := json.NewDecoder(&stdout)
	spans, metrics := 0, map[string]bool{}
	for {
		var v map[string]any
		if err := dec.Decode(&v); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("exporter output is not JSON: %v", err)
		}
		if _, ok := v["SpanContext"]; ok {
			spans++
		}
		if sms, ok := v["ScopeMetrics"].([]any); ok {
			for _, sm := range sms {
				for _, m := range sm.(map[string]any)["Metrics"].([]any) {
					metrics[m.(map[string]any)["Name"].(string)] = true
				}
			}
		}
	}
	if spans != 5 {
		t.Errorf("exported %d spans, want 5", spans)
	}
	for _, name := range []string{"messaging.client.sent.messages", "messaging.client.consumed.messages",
		"messaging.process.duration", "messaging.client.operation.duration", "courier.messaging.consumer.lag", "courier.breaker.state"} {
		if !metrics[name] {
			t.Errorf("metric %s not exported (got %v)", name, metrics)
		}
	}
}
