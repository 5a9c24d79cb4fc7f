package courierotel_test

import (
	"context"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	courierotel "github.com/courierkit/courier/contrib/otel"
	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	memtransport "github.com/courierkit/courier/transport/mem"
)

// cpuTime is the process's user plus system CPU time. The benchmarks
// report it per message ("cpu-ns/op") beside the wall-clock ns/op: on a
// machine shared with other work, wall time per op includes the time the
// process waited for a core, CPU time does not (it includes GC and the
// SDK's background goroutines, which are part of the cost).
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func reportCPU(b *testing.B, start time.Duration, n int) {
	if n > 0 {
		b.ReportMetric(float64(cpuTime()-start)/float64(n), "cpu-ns/op")
	}
}

// discardExporter is the no-op span exporter of the overhead budget.
type discardExporter struct{}

func (discardExporter) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discardExporter) Shutdown(context.Context) error                             { return nil }

type benchSetup struct {
	name string
	inst func(b *testing.B) *courierotel.Instrumentation // nil: no instrumentation
}

// setups: without instrumentation; with the global providers as a program
// that never configured OpenTelemetry has them (no-op); with the SDK
// (always sampling, a discarding exporter behind a batching processor,
// sdk-batch, or called synchronously, sdk; a metric SDK whose reader is
// never collected).
func setups() []benchSetup {
	return []benchSetup{
		{"bare", nil},
		{"global-noop", func(b *testing.B) *courierotel.Instrumentation {
			inst, err := courierotel.New(courierotel.Options{})
			if err != nil {
				b.Fatal(err)
			}
			return inst
		}},
		// The production shape: spans handed to a batching processor (its
		// queue drops when full, as in production under load).
		{"sdk-batch", sdkSetup(true, sdktrace.AlwaysSample())},
		{"sdk", sdkSetup(false, sdktrace.AlwaysSample())},
		// Not the budget's configuration (it samples): what a production
		// deployment that keeps one trace in ten pays per message on
		// average, root spans sampled by trace ID, children following
		// their parent.
		{"sdk-batch-sample10", sdkSetup(true, sdktrace.ParentBased(sdktrace.TraceIDRatioBased(0.1)))},
		// Metrics from the SDK, no tracing (no-op TracerProvider).
		{"sdk-metrics-only", func(b *testing.B) *courierotel.Instrumentation {
			mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
			b.Cleanup(func() { _ = mp.Shutdown(context.Background()) })
			inst, err := courierotel.New(courierotel.Options{TracerProvider: tracenoop.NewTracerProvider(), MeterProvider: mp})
			if err != nil {
				b.Fatal(err)
			}
			return inst
		}},
	}
}

// sdkSetup instruments with the SDK: spans chosen by sampler handed to a
// discarding exporter through a batching processor (batch) or called
// synchronously, metrics read by a manual reader that is never collected.
// The processor is made when the benchmark runs (a batching one starts a
// goroutine).
func sdkSetup(batch bool, sampler sdktrace.Sampler) func(b *testing.B) *courierotel.Instrumentation {
	return func(b *testing.B) *courierotel.Instrumentation {
		proc := sdktrace.WithSyncer(discardExporter{})
		if batch {
			proc = sdktrace.WithBatcher(discardExporter{})
		}
		tp := sdktrace.NewTracerProvider(proc, sdktrace.WithSampler(sampler))
		mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
		b.Cleanup(func() {
			_ = tp.Shutdown(context.Background())
			_ = mp.Shutdown(context.Background())
		})
		inst, err := courierotel.New(courierotel.Options{TracerProvider: tp, MeterProvider: mp})
		if err != nil {
			b.Fatal(err)
		}
		return inst
	}
}

// directConn delivers a published message straight to a handler on the
// caller's goroutine: the cost of the instrumentation alone, without a
// transport's own work.
type directConn struct{ h message.Handler }

func (d *directConn) Publish(ctx context.Context, topic string, msgs ...*message.Message) error {
	for _, m := range msgs {
		r := *m // the "received" copy a transport would make
		r.Topic, r.Attempt = topic, 1
		if err := d.h.Handle(context.Background(), &r); err != nil {
			return err
		}
	}
	return nil
}
func (d *directConn) Close() error { return nil }

// BenchmarkOverhead is the per-message cost of the publisher decorator plus
// the consumer middleware (one send span, one process span, trace context
// injected and extracted, four metric records), measured without a
// transport: compare each setup's ns/op with "bare".
func BenchmarkOverhead(b *testing.B) {
	for _, s := range setups() {
		b.Run(s.name, func(b *testing.B) {
			var h message.Handler = message.HandlerFunc(func(context.Context, *message.Message) error { return nil })
			dc := &directConn{}
			var pub transport.Publisher = dc
			if s.inst != nil {
				inst := s.inst(b)
				h = inst.Middleware(courierotel.ConsumerOptions{Group: "g", System: "mem"})(h)
				pub = inst.Publisher(dc)
			}
			dc.h = h
			ctx := context.Background()
			m := &message.Message{ID: "0190b3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b", Payload: []byte("payload"),
				Headers: message.Header{message.HeaderCorrelationID: "c1"}}
			b.ReportAllocs()
			cpu0, n := cpuTime(), 0
			for b.Loop() {
				n++
				if err := pub.Publish(ctx, "orders", m); err != nil {
					b.Fatal(err)
				}
			}
			reportCPU(b, cpu0, n)
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msg/s")
		})
	}
}

// BenchmarkMem publishes messages one by one on the mem transport and
// consumes them with one handler: the instrumented end-to-end cost on the
// reference transport.
func BenchmarkMem(b *testing.B) {
	for _, s := range setups() {
		b.Run(s.name, func(b *testing.B) {
			raw, err := memtransport.New(context.Background(), memtransport.Options{MaxBacklog: 1 << 20})
			if err != nil {
				b.Fatal(err)
			}
			defer raw.Close()
			var conn transport.Conn = raw
			if s.inst != nil {
				conn = s.inst(b).Conn(raw)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			o := transport.SubscribeOptions{Group: "g", MaxInFlight: 256}
			if err := conn.Declare(ctx, "bench", o); err != nil {
				b.Fatal(err)
			}
			var got atomic.Int64
			done := make(chan error, 1)
			go func() {
				done <- conn.Subscribe(ctx, "bench", message.HandlerFunc(func(context.Context, *message.Message) error {
					got.Add(1)
					return nil
				}), o)
			}()
			payload := []byte("payload")
			b.ReportAllocs()
			cpu0, n := cpuTime(), 0
			for b.Loop() {
				n++
				if err := conn.Publish(ctx, "bench", &message.Message{Payload: payload}); err != nil {
					b.Fatal(err)
				}
			}
			deadline := time.Now().Add(time.Minute)
			for got.Load() < int64(n) {
				if time.Now().After(deadline) {
					b.Fatalf("%d of %d messages consumed within a minute", got.Load(), n)
				}
				time.Sleep(100 * time.Microsecond)
			}
			b.StopTimer()
			reportCPU(b, cpu0, n)
			b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "msg/s")
			cancel()
			<-done
		})
	}
}

// BenchmarkSDKFloor is what the OpenTelemetry SDK itself costs for the
// same per-message work with no courier code around it: a producer span
// and a consumer span with the same attributes, W3C inject and extract
// through a map, two counter adds and two histogram records with the
// attribute sets courier records with, made once. BenchmarkOverhead/sdk
// minus this is the cost courier adds on top of the SDK; on a loaded
// machine compare the two from the same run.
func BenchmarkSDKFloor(b *testing.B) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(discardExporter{}), sdktrace.WithSampler(sdktrace.AlwaysSample()))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	defer func() {
		_ = tp.Shutdown(context.Background())
		_ = mp.Shutdown(context.Background())
	}()
	tr := tp.Tracer("floor")
	meter := mp.Meter("floor")
	sent, _ := meter.Int64Counter("sent")
	consumed, _ := meter.Int64Counter("consumed")
	opDur, _ := meter.Float64Histogram("op")
	procDur, _ := meter.Float64Histogram("proc")
	// The attribute sets courier records with (the conventions' for each
	// metric), made once.
	sendSet := metric.WithAttributeSet(attribute.NewSet(attribute.String("messaging.system", "mem"),
		attribute.String("messaging.operation.name", "send"), attribute.String("messaging.destination.name", "orders")))
	opDurSet := metric.WithAttributeSet(attribute.NewSet(attribute.String("messaging.system", "mem"),
		attribute.String("messaging.operation.name", "send"), attribute.String("messaging.operation.type", "send"),
		attribute.String("messaging.destination.name", "orders")))
	procSet := metric.WithAttributeSet(attribute.NewSet(attribute.String("messaging.system", "mem"),
		attribute.String("messaging.operation.name", "process"), attribute.String("messaging.destination.name", "orders"),
		attribute.String("messaging.consumer.group.name", "g")))
	prop := propagation.TraceContext{}
	ctx := context.Background()
	b.ReportAllocs()
	cpu0, n := cpuTime(), 0
	defer func() { reportCPU(b, cpu0, n) }()
	for b.Loop() {
		n++
		start := time.Now()
		pctx, ps := tr.Start(ctx, "send orders", trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(
			attribute.String("messaging.system", "mem"), attribute.String("messaging.operation.name", "send"),
			attribute.String("messaging.operation.type", "send"), attribute.String("messaging.destination.name", "orders"),
			attribute.String("messaging.message.id", "0190b3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b"), attribute.Int("messaging.message.body.size", 7),
			attribute.String("messaging.message.conversation_id", "c1")))
		h := message.Header{message.HeaderCorrelationID: "c1"}
		prop.Inject(pctx, courierotel.HeaderCarrier(h))
		cstart := time.Now()
		rctx := prop.Extract(ctx, courierotel.HeaderCarrier(h))
		_, cs := tr.Start(rctx, "process orders", trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(
			attribute.String("messaging.system", "mem"), attribute.String("messaging.operation.name", "process"),
			attribute.String("messaging.operation.type", "process"), attribute.String("messaging.destination.name", "orders"),
			attribute.String("messaging.consumer.group.name", "g"),
			attribute.String("messaging.message.id", "0190b3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b"), attribute.Int("messaging.message.body.size", 7),
			attribute.String("messaging.message.conversation_id", "c1"), attribute.Int("courier.message.attempt", 1)))
		consumed.Add(ctx, 1, procSet)
		procDur.Record(ctx, time.Since(cstart).Seconds(), procSet)
		cs.End()
		ps.End()
		sent.Add(ctx, 1, sendSet)
		opDur.Record(ctx, time.Since(start).Seconds(), opDurSet)
	}
}

// The no-op path allocates nothing beyond what the transport does: the
// budget of "≤ 100 ns with the global no-op provider" is kept by starting
// no span and recording nothing, which this pins down deterministically
// (timings on a shared machine are not).
func TestNoopPathAllocatesNothing(t *testing.T) {
	for name, mk := range map[string]func() (*courierotel.Instrumentation, error){
		"global unset": func() (*courierotel.Instrumentation, error) { return courierotel.New(courierotel.Options{}) },
		"noop providers": func() (*courierotel.Instrumentation, error) {
			return courierotel.New(courierotel.Options{TracerProvider: tracenoop.NewTracerProvider(), MeterProvider: metricnoop.NewMeterProvider()})
		},
	} {
		t.Run(name, func(t *testing.T) {
			inst, err := mk()
			if err != nil {
				t.Fatal(err)
			}
			noop := func(context.Context, *message.Message) error { return nil }
			var bare transport.Publisher = &directConn{h: message.HandlerFunc(noop)} // both through the interface
			dc := &directConn{h: inst.Middleware(courierotel.ConsumerOptions{Group: "g"})(message.HandlerFunc(noop))}
			var pub transport.Publisher = inst.Publisher(dc)
			m := &message.Message{ID: "id-1", Payload: []byte("p")}
			ctx := context.Background()
			want := testing.AllocsPerRun(200, func() { publishVia(ctx, bare, m) })
			got := testing.AllocsPerRun(200, func() { publishVia(ctx, pub, m) })
			if got != want {
				t.Errorf("instrumented publish+process allocates %.0f times, bare %.0f", got, want)
			}
		})
	}
}

// publishVia publishes through the interface, as applications do (the
// compiler cannot see the concrete type, so the variadic slice is on the
// heap for both the bare and the instrumented publisher).
//
//go:noinline
func publishVia(ctx context.Context, p transport.Publisher, m *message.Message) {
	_ = p.Publish(ctx, "t", m)
}
