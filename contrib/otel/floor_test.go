package courierotel_test

import (
	"context"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/exemplar"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	courierotel "github.com/courierkit/courier/contrib/otel"
	"github.com/courierkit/courier/message"
)

// BenchmarkSDKParts splits BenchmarkSDKFloor into its parts, so the
// budget can be read part by part: each sub-benchmark does one piece of
// the per-message work the floor does (two spans, inject and extract, four
// metric records) with the SDK alone, no courier code.
//
//	spans/*       the send and process spans with their attributes (as the
//	              floor), by span processor: a synchronous discarding
//	              exporter, a batch processor, no processor at all
//	spans-bare    the two spans without attributes (synchronous exporter)
//	propagation   W3C inject into a header map and extract from it
//	metrics/*     two counter adds and two histogram records with cached
//	              attribute sets, from a context holding a sampled span
//	              (as a publish inside a handler has), with the default
//	              exemplar filter (trace_based) and with exemplars off
//	clock         the four time.Now calls the floor makes itself
func BenchmarkSDKParts(b *testing.B) {
	ctx := context.Background()
	sendAttrs := []attribute.KeyValue{
		attribute.String("messaging.system", "mem"), attribute.String("messaging.operation.name", "send"),
		attribute.String("messaging.operation.type", "send"), attribute.String("messaging.destination.name", "orders"),
		attribute.String("messaging.message.id", "0190b3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b"), attribute.Int("messaging.message.body.size", 7),
		attribute.String("messaging.message.conversation_id", "c1"),
	}
	procAttrs := []attribute.KeyValue{
		attribute.String("messaging.system", "mem"), attribute.String("messaging.operation.name", "process"),
		attribute.String("messaging.operation.type", "process"), attribute.String("messaging.destination.name", "orders"),
		attribute.String("messaging.consumer.group.name", "g"),
		attribute.String("messaging.message.id", "0190b3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b"), attribute.Int("messaging.message.body.size", 7),
		attribute.String("messaging.message.conversation_id", "c1"), attribute.Int("courier.message.attempt", 1),
	}
	spans := func(b *testing.B, tp *sdktrace.TracerProvider, attrs bool) {
		b.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
		tr := tp.Tracer("parts")
		so := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindProducer)}
		co := []trace.SpanStartOption{trace.WithSpanKind(trace.SpanKindConsumer)}
		if attrs {
			so = append(so, trace.WithAttributes(sendAttrs...))
			co = append(co, trace.WithAttributes(procAttrs...))
		}
		b.ReportAllocs()
		cpu0, n := cpuTime(), 0
		for b.Loop() {
			n++
			pctx, ps := tr.Start(ctx, "send orders", so...)
			_, cs := tr.Start(pctx, "process orders", co...)
			cs.End()
			ps.End()
		}
		reportCPU(b, cpu0, n)
	}
	always := sdktrace.WithSampler(sdktrace.AlwaysSample())
	b.Run("spans/sync", func(b *testing.B) {
		spans(b, sdktrace.NewTracerProvider(always, sdktrace.WithSyncer(discardExporter{})), true)
	})
	b.Run("spans/batch", func(b *testing.B) {
		spans(b, sdktrace.NewTracerProvider(always, sdktrace.WithBatcher(discardExporter{})), true)
	})
	b.Run("spans/no-processor", func(b *testing.B) {
		spans(b, sdktrace.NewTracerProvider(always), true)
	})
	b.Run("spans-bare/sync", func(b *testing.B) {
		spans(b, sdktrace.NewTracerProvider(always, sdktrace.WithSyncer(discardExporter{})), false)
	})
	b.Run("propagation", func(b *testing.B) {
		tp := sdktrace.NewTracerProvider(always)
		defer func() { _ = tp.Shutdown(context.Background()) }()
		sctx, span := tp.Tracer("parts").Start(ctx, "s")
		defer span.End()
		prop := propagation.TraceContext{}
		b.ReportAllocs()
		cpu0, n := cpuTime(), 0
		for b.Loop() {
			n++
			h := message.Header{message.HeaderCorrelationID: "c1"}
			prop.Inject(sctx, courierotel.HeaderCarrier(h))
			_ = prop.Extract(ctx, courierotel.HeaderCarrier(h))
		}
		reportCPU(b, cpu0, n)
	})
	metrics := func(b *testing.B, opts ...sdkmetric.Option) {
		tp := sdktrace.NewTracerProvider(always)
		mp := sdkmetric.NewMeterProvider(append(opts, sdkmetric.WithReader(sdkmetric.NewManualReader()))...)
		defer func() {
			_ = tp.Shutdown(context.Background())
			_ = mp.Shutdown(context.Background())
		}()
		sctx, span := tp.Tracer("parts").Start(ctx, "s")
		defer span.End()
		meter := mp.Meter("parts")
		sent, _ := meter.Int64Counter("sent")
		consumed, _ := meter.Int64Counter("consumed")
		opDur, _ := meter.Float64Histogram("op")
		procDur, _ := meter.Float64Histogram("proc")
		set := metric.WithAttributeSet(attribute.NewSet(attribute.String("messaging.system", "mem"), attribute.String("messaging.destination.name", "orders")))
		b.ReportAllocs()
		cpu0, n := cpuTime(), 0
		for b.Loop() {
			n++
			sent.Add(sctx, 1, set)
			consumed.Add(sctx, 1, set)
			opDur.Record(sctx, 0.001, set)
			procDur.Record(sctx, 0.001, set)
		}
		reportCPU(b, cpu0, n)
	}
	b.Run("metrics/exemplars-default", func(b *testing.B) { metrics(b) })
	b.Run("metrics/exemplars-off", func(b *testing.B) { metrics(b, sdkmetric.WithExemplarFilter(exemplar.AlwaysOffFilter)) })
	b.Run("clock", func(b *testing.B) {
		var d time.Duration
		for b.Loop() {
			t0 := time.Now()
			t1 := time.Now()
			d += time.Since(t0) + time.Since(t1)
		}
		_ = d
	})
}
