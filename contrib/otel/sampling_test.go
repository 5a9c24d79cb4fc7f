package courierotel_test

import (
	"context"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	courierotel "github.com/courierkit/courier/contrib/otel"
	"github.com/courierkit/courier/message"
)

// Under an unsampled parent the per-message attributes are given to the
// span after it started, and only when it records: a sampler that records
// there anyway (AlwaysSample ignores the parent) still gets spans with
// every attribute, user attributes included; ParentBased records nothing,
// and the unsampled decision travels on in traceparent.
func TestUnsampledParent(t *testing.T) {
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	up := trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, Remote: true}) // not sampled
	for _, tc := range []struct {
		name    string
		sampler sdktrace.Sampler
		records bool
	}{
		{"always", sdktrace.AlwaysSample(), true},
		{"parent-based", sdktrace.ParentBased(sdktrace.AlwaysSample()), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			sr := tracetest.NewSpanRecorder()
			tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr), sdktrace.WithSampler(tc.sampler))
			t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
			inst, err := courierotel.New(courierotel.Options{TracerProvider: tp, System: "mem",
				Attributes: func(context.Context, *message.Message) []attribute.KeyValue {
					return []attribute.KeyValue{attribute.String("app.tenant", "t1")}
				}})
			if err != nil {
				t.Fatal(err)
			}
			var got *message.Message
			dc := &directConn{h: inst.Middleware(courierotel.ConsumerOptions{Group: "g"})(
				message.HandlerFunc(func(_ context.Context, m *message.Message) error { got = m; return nil }))}
			m := message.New([]byte("p"))
			m.Headers = message.Header{message.HeaderCorrelationID: "c1"}
			if err := inst.Publisher(dc).Publish(trace.ContextWithRemoteSpanContext(context.Background(), up), "orders", m); err != nil {
				t.Fatal(err)
			}
			flags := "00" // the decision travels on
			if tc.records {
				flags = "01"
			}
			if tp := got.Headers[message.HeaderTraceParent]; len(tp) != 55 || tp[3:35] != tid.String() || tp[53:] != flags {
				t.Errorf("traceparent %q: want trace %s, flags %s", tp, tid, flags)
			}
			spans := sr.Ended()
			if !tc.records {
				if len(spans) != 0 {
					t.Fatalf("%d spans recorded under an unsampled parent:\n%s", len(spans), dumpSpans(spans))
				}
				return
			}
			send, proc := findSpan(spans, "send orders"), findSpan(spans, "process orders")
			if send == nil || proc == nil {
				t.Fatalf("spans:\n%s", dumpSpans(spans))
			}
			for _, s := range []sdktrace.ReadOnlySpan{send, proc} {
				wantAttr(t, s, "messaging.system", "mem")
				wantAttr(t, s, "messaging.destination.name", "orders")
				wantAttr(t, s, "messaging.message.id", m.ID)
				wantAttr(t, s, "messaging.message.conversation_id", "c1")
				wantAttr(t, s, "messaging.message.body.size", int64(1))
			}
			wantAttr(t, proc, "messaging.consumer.group.name", "g")
			wantAttr(t, proc, "courier.message.attempt", int64(1))
			wantAttr(t, proc, "app.tenant", "t1")
			wantChild(t, proc, send)
		})
	}
}

// The consumer side's measurements are taken in the process span's
// context, so with the SDK's default exemplar filter (trace_based) the
// exemplars of messaging.process.duration and
// messaging.client.consumed.messages point at the process span of a
// sampled message; the publish side's point at the caller's span.
func TestExemplarsPointAtSpans(t *testing.T) {
	sr := tracetest.NewSpanRecorder()
	inst, reader := newInst(t, sr, courierotel.Options{System: "mem"})
	dc := &directConn{h: inst.Middleware(courierotel.ConsumerOptions{Group: "g"})(
		message.HandlerFunc(func(context.Context, *message.Message) error { return nil }))}
	ctx, req := inst.Tracer().Start(context.Background(), "request")
	if err := inst.Publisher(dc).Publish(ctx, "orders", message.New([]byte("p"))); err != nil {
		t.Fatal(err)
	}
	req.End()
	proc := findSpan(sr.Ended(), "process orders")
	if proc == nil {
		t.Fatalf("no process span:\n%s", dumpSpans(sr.Ended()))
	}
	rm := collect(t, reader)
	exemplarSpans := func(name string) []trace.SpanID {
		m, ok := findMetric(rm, name)
		if !ok {
			t.Fatalf("no %s", name)
		}
		var ids []trace.SpanID
		switch d := m.Data.(type) {
		case metricdata.Histogram[float64]:
			for _, p := range d.DataPoints {
				for _, e := range p.Exemplars {
					ids = append(ids, trace.SpanID(e.SpanID))
				}
			}
		case metricdata.Sum[int64]:
			for _, p := range d.DataPoints {
				for _, e := range p.Exemplars {
					ids = append(ids, trace.SpanID(e.SpanID))
				}
			}
		}
		return ids
	}
	for name, want := range map[string]trace.SpanID{
		"messaging.process.duration":          proc.SpanContext().SpanID(),
		"messaging.client.consumed.messages":  proc.SpanContext().SpanID(),
		"messaging.client.operation.duration": req.SpanContext().SpanID(),
	} {
		ids := exemplarSpans(name)
		if len(ids) != 1 || ids[0] != want {
			t.Errorf("%s: exemplar spans %v, want [%s]", name, ids, want)
		}
	}
}
