package courierotel_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	courierotel "github.com/courierkit/courier/contrib/otel"
	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	memtransport "github.com/courierkit/courier/transport/mem"
)

// A handler that panics ends its process span (error status, the panic as
// its error, error.type "panic") and records its processing duration, and
// the panic still reaches whoever recovers it.
func TestPanickingHandlerEndsItsSpan(t *testing.T) {
	sr := tracetest.NewSpanRecorder()
	inst, reader := newInst(t, sr, courierotel.Options{})
	h := inst.Middleware(courierotel.ConsumerOptions{Group: "g"})(message.HandlerFunc(func(context.Context, *message.Message) error {
		panic("boom")
	}))
	var recovered any
	func() {
		defer func() { recovered = recover() }()
		_ = h.Handle(context.Background(), &message.Message{ID: "m1", Topic: "t", Attempt: 1})
	}()
	if recovered != "boom" {
		t.Fatalf("recovered %v, want the handler's panic value", recovered)
	}
	s := findSpan(sr.Ended(), "process t")
	if s == nil {
		t.Fatalf("no ended process span; ended:\n%s", dumpSpans(sr.Ended()))
	}
	if s.Status().Code != codes.Error || !strings.Contains(s.Status().Description, "boom") {
		t.Errorf("span status %v %q, want Error mentioning the panic", s.Status().Code, s.Status().Description)
	}
	wantAttr(t, s, "error.type", "panic")
	if n := histCount(t, collect(t, reader), "messaging.process.duration", map[string]string{"error.type": "panic"}); n != 1 {
		t.Errorf("process.duration with error.type=panic counted %d, want 1", n)
	}
}

// Through an instrumented Conn (where process spans stay open until the
// transport settles the message), a panicking handler's message is nacked
// by the Dispatcher and redelivered, and every process span ends: the
// panicking one and the one of the attempt that succeeds.
func TestPanickingHandlerOnConnEndsEverySpan(t *testing.T) {
	sr := tracetest.NewSpanRecorder()
	inst, _ := newInst(t, sr, courierotel.Options{})
	raw := newMem(t, memtransport.NewBroker(), memtransport.Options{})
	conn := inst.Conn(raw)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	o := transport.SubscribeOptions{Group: "g"}
	if err := conn.Declare(ctx, "panics", o); err != nil {
		t.Fatal(err)
	}
	if err := conn.Publish(ctx, "panics", &message.Message{ID: "p1"}); err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	done := make(chan struct{})
	sctx, stop := context.WithCancel(ctx)
	subErr := make(chan error, 1)
	go func() {
		subErr <- conn.Subscribe(sctx, "panics", message.HandlerFunc(func(context.Context, *message.Message) error {
			if calls.Add(1) == 1 {
				panic("first attempt panics")
			}
			close(done)
			return nil
		}), o)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		t.Fatal("the message was not redelivered after the panic")
	}
	spans := waitSpans(t, sr, 5*time.Second, "two ended process spans", func(ss []sdktrace.ReadOnlySpan) bool {
		return countProcess(ss, "process panics") == 2
	})
	stop()
	<-subErr
	var panicked int
	for _, s := range spans {
		if s.Name() == "process panics" && s.Status().Code == codes.Error && strings.Contains(s.Status().Description, "first attempt panics") {
			panicked++
		}
	}
	if panicked != 1 {
		t.Errorf("%d ended process spans carry the panic, want 1:\n%s", panicked, dumpSpans(spans))
	}
}
