package courierotel_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/goleak"

	courierotel "github.com/courierkit/courier/contrib/otel"
	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// Background goroutines of the broker SDKs the adapter tests link in,
// ignored by their top function only:
//   - sarama (Kafka) starts go-metrics' meter arbiter with its first
//     client; it never stops;
//   - go.opencensus.io's init (imported by the Pub/Sub client) starts its
//     view worker for the life of the process;
//   - pubsub/v2 v2.8.1: a stopped stream's keep-alive goroutine notices
//     the stop only at its next ping tick, then exits.
//
// The in-process goaws (SQS/SNS), started by the first test that needs it,
// is stopped before the leak check.
func TestMain(m *testing.M) {
	code := m.Run()
	stopGoaws()
	if code == 0 {
		if err := goleak.Find(
			goleak.IgnoreTopFunction("github.com/rcrowley/go-metrics.(*meterArbiter).tick"),
			goleak.IgnoreTopFunction("go.opencensus.io/stats/view.(*worker).start"),
			goleak.IgnoreTopFunction("cloud.google.com/go/pubsub/v2.(*messageIterator).streamKeepAliveHandler"),
		); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// newInst returns an Instrumentation recording spans into sr and metrics
// into a ManualReader.
func newInst(t testing.TB, sr *tracetest.SpanRecorder, o courierotel.Options) (*courierotel.Instrumentation, *sdkmetric.ManualReader) {
	t.Helper()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr), sdktrace.WithSampler(sdktrace.AlwaysSample()))
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() {
		_ = tp.Shutdown(context.Background())
		_ = mp.Shutdown(context.Background())
	})
	o.TracerProvider, o.MeterProvider = tp, mp
	inst, err := courierotel.New(o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return inst, reader
}

// waitSpans polls sr until pred holds for the ended spans or the deadline
// passes.
func waitSpans(t testing.TB, sr *tracetest.SpanRecorder, d time.Duration, what string, pred func([]sdktrace.ReadOnlySpan) bool) []sdktrace.ReadOnlySpan {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		spans := sr.Ended()
		if pred(spans) {
			return spans
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s; ended spans:\n%s", d, what, dumpSpans(spans))
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func dumpSpans(spans []sdktrace.ReadOnlySpan) string {
	s := ""
	for _, sp := range spans {
		s += fmt.Sprintf("  %q kind=%s trace=%s span=%s parent=%s attrs=%v\n", sp.Name(), sp.SpanKind(),
			sp.SpanContext().TraceID(), sp.SpanContext().SpanID(), sp.Parent().SpanID(), sp.Attributes())
	}
	return s
}

func countNamed(spans []sdktrace.ReadOnlySpan, names ...string) bool {
	for _, n := range names {
		if findSpan(spans, n) == nil {
			return false
		}
	}
	return true
}

func findSpan(spans []sdktrace.ReadOnlySpan, name string) sdktrace.ReadOnlySpan {
	for _, s := range spans {
		if s.Name() == name {
			return s
		}
	}
	return nil
}

func attrOf(s sdktrace.ReadOnlySpan, key string) (attribute.Value, bool) {
	for _, kv := range s.Attributes() {
		if string(kv.Key) == key {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}

func wantAttr(t testing.TB, s sdktrace.ReadOnlySpan, key string, want any) {
	t.Helper()
	v, ok := attrOf(s, key)
	if !ok {
		t.Errorf("span %q: no attribute %s (have %v)", s.Name(), key, s.Attributes())
		return
	}
	if got := v.AsInterface(); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("span %q: %s = %v, want %v", s.Name(), key, got, want)
	}
}

func wantNoAttr(t testing.TB, s sdktrace.ReadOnlySpan, key string) {
	t.Helper()
	if v, ok := attrOf(s, key); ok {
		t.Errorf("span %q: unexpected attribute %s = %v", s.Name(), key, v.AsInterface())
	}
}

func wantChild(t testing.TB, child, parent sdktrace.ReadOnlySpan) {
	t.Helper()
	if child.Parent().SpanID() != parent.SpanContext().SpanID() {
		t.Errorf("span %q: parent span %s, want %q (%s)", child.Name(), child.Parent().SpanID(), parent.Name(), parent.SpanContext().SpanID())
	}
	if child.SpanContext().TraceID() != parent.SpanContext().TraceID() {
		t.Errorf("span %q: trace %s, want %s (trace of %q)", child.Name(), child.SpanContext().TraceID(), parent.SpanContext().TraceID(), parent.Name())
	}
}

func hasEvent(s sdktrace.ReadOnlySpan, name string) (sdktrace.Event, bool) {
	for _, e := range s.Events() {
		if e.Name == name {
			return e, true
		}
	}
	return sdktrace.Event{}, false
}

func eventAttr(e sdktrace.Event, key string) (attribute.Value, bool) {
	for _, kv := range e.Attributes {
		if string(kv.Key) == key {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}

// collect reads every metric of the reader.
func collect(t testing.TB, r *sdkmetric.ManualReader) metricdata.ResourceMetrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(context.Background(), &rm); err != nil {
		t.Fatalf("collect: %v", err)
	}
	return rm
}

func findMetric(rm metricdata.ResourceMetrics, name string) (metricdata.Metrics, bool) {
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == name {
				return m, true
			}
		}
	}
	return metricdata.Metrics{}, false
}

func setHas(set attribute.Set, want map[string]string) bool {
	for k, v := range want {
		got, ok := set.Value(attribute.Key(k))
		if !ok || got.Emit() != v {
			return false
		}
	}
	return true
}

// sumInt returns the sum of int64 sum/gauge points whose attributes include
// want, and how many points matched.
func sumInt(t testing.TB, rm metricdata.ResourceMetrics, name string, want map[string]string) (int64, int) {
	t.Helper()
	m, ok := findMetric(rm, name)
	if !ok {
		return 0, 0
	}
	var total int64
	n := 0
	switch d := m.Data.(type) {
	case metricdata.Sum[int64]:
		for _, p := range d.DataPoints {
			if setHas(p.Attributes, want) {
				total += p.Value
				n++
			}
		}
	case metricdata.Gauge[int64]:
		for _, p := range d.DataPoints {
			if setHas(p.Attributes, want) {
				total += p.Value
				n++
			}
		}
	default:
		t.Fatalf("metric %s: unexpected data %T", name, m.Data)
	}
	return total, n
}

// histCount returns the count of float64 histogram points matching want.
func histCount(t testing.TB, rm metricdata.ResourceMetrics, name string, want map[string]string) uint64 {
	t.Helper()
	m, ok := findMetric(rm, name)
	if !ok {
		return 0
	}
	d, ok := m.Data.(metricdata.Histogram[float64])
	if !ok {
		t.Fatalf("metric %s: data %T, want Histogram[float64]", name, m.Data)
	}
	var n uint64
	for _, p := range d.DataPoints {
		if setHas(p.Attributes, want) {
			n += p.Count
		}
	}
	return n
}

// chainResult is what one run of the three-service flow produced.
type chainResult struct {
	spans                        []sdktrace.ReadOnlySpan
	orderID, paymentID, traceHex string
}

// runChain runs the order flow of the tests and the example over conns made
// by open: service A (the checkout) publishes an order to topic orders;
// service B (billing, group billing) handles it and publishes a payment to
// topic payments; service C (shipping, group shipping) handles that. Each
// service has its own TracerProvider (one shared recorder), so trace
// context can only travel in message headers.
func runChain(t *testing.T, system string, open func(t *testing.T) transport.Conn, orders, payments string, opts ...courierotel.Options) chainResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	sr := tracetest.NewSpanRecorder()
	var o courierotel.Options
	if len(opts) > 0 {
		o = opts[0]
	}
	instA, _ := newInst(t, sr, o)
	instB, _ := newInst(t, sr, o)
	instC, _ := newInst(t, sr, o)

	connA := instA.Conn(open(t))
	connB := instB.Conn(open(t))
	connC := instC.Conn(open(t))
	for _, c := range []*courierotel.Conn{connA, connB, connC} {
		t.Cleanup(func() { _ = c.Close() })
	}
	if got := courierotel.SystemOf(connA); got != system {
		t.Errorf("SystemOf = %q, want %q", got, system)
	}
	if err := connB.Declare(ctx, orders, transport.SubscribeOptions{Group: "billing"}); err != nil {
		t.Fatalf("declare %s/billing: %v", orders, err)
	}
	if err := connC.Declare(ctx, payments, transport.SubscribeOptions{Group: "shipping"}); err != nil {
		t.Fatalf("declare %s/shipping: %v", payments, err)
	}

	subCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan *message.Message, 1)
	errs := make(chan error, 2)
	paymentID := make(chan string, 1)
	go func() {
		errs <- connB.Subscribe(subCtx, orders, message.HandlerFunc(func(hctx context.Context, m *message.Message) error {
			p := m.FollowUp([]byte(`{"order":"` + string(m.Payload) + `","amount":42}`))
			if err := connB.Publish(hctx, payments, p); err != nil {
				return err
			}
			select {
			case paymentID <- p.ID:
			default:
			}
			return nil
		}), transport.SubscribeOptions{Group: "billing"})
	}()
	go func() {
		errs <- connC.Subscribe(subCtx, payments, message.HandlerFunc(func(hctx context.Context, m *message.Message) error {
			select {
			case done <- m:
			default:
			}
			return nil
		}), transport.SubscribeOptions{Group: "shipping"})
	}()

	// Service A: an HTTP request's span, then the publish.
	actx, root := instA.Tracer().Start(ctx, "POST /checkout", trace.WithSpanKind(trace.SpanKindServer))
	order := message.New([]byte("order-1"))
	order.Key = "customer-7"
	if err := connA.Publish(actx, orders, order); err != nil {
		t.Fatalf("publish order: %v", err)
	}
	root.End()
	if order.ID == "" {
		t.Fatal("Publish did not give the order an ID")
	}
	if _, ok := order.Headers[message.HeaderTraceParent]; ok {
		t.Error("Publish changed the caller's headers; it must inject into a copy")
	}

	var got *message.Message
	select {
	case got = <-done:
	case err := <-errs:
		t.Fatalf("a subscription ended early: %v", err)
	case <-ctx.Done():
		t.Fatal("timed out waiting for service C")
	}
	if got.Headers[message.HeaderTraceParent] == "" {
		t.Errorf("the payment reached C without traceparent: %v", got.Headers)
	}
	pid := <-paymentID
	sendOrders, processOrders := "send "+orders, "process "+orders
	sendPayments, processPayments := "send "+payments, "process "+payments
	spans := waitSpans(t, sr, 20*time.Second, "the five spans of the flow", func(s []sdktrace.ReadOnlySpan) bool {
		return countNamed(s, "POST /checkout", sendOrders, processOrders, sendPayments, processPayments)
	})
	stop()
	for range 2 {
		if err := <-errs; err != nil && err != context.Canceled {
			t.Errorf("Subscribe returned %v, want context.Canceled", err)
		}
	}
	return chainResult{spans: spans, orderID: order.ID, paymentID: pid, traceHex: root.SpanContext().TraceID().String()}
}

// checkChain asserts the shape and attributes of runChain's trace.
func checkChain(t *testing.T, system string, r chainResult, orders, payments string) {
	t.Helper()
	spans := r.spans
	root := findSpan(spans, "POST /checkout")
	so := findSpan(spans, "send "+orders)
	po := findSpan(spans, "process "+orders)
	sp := findSpan(spans, "send "+payments)
	pp := findSpan(spans, "process "+payments)

	// One trace: checkout → send orders → process orders → send payments → process payments.
	wantChild(t, so, root)
	wantChild(t, po, so)
	wantChild(t, sp, po)
	wantChild(t, pp, sp)
	for _, s := range []sdktrace.ReadOnlySpan{so, po, sp, pp} {
		if got := s.SpanContext().TraceID().String(); got != r.traceHex {
			t.Errorf("span %q in trace %s, want %s", s.Name(), got, r.traceHex)
		}
	}
	if so.SpanKind() != trace.SpanKindProducer || sp.SpanKind() != trace.SpanKindProducer {
		t.Errorf("send spans: kinds %s, %s, want producer", so.SpanKind(), sp.SpanKind())
	}
	if po.SpanKind() != trace.SpanKindConsumer || pp.SpanKind() != trace.SpanKindConsumer {
		t.Errorf("process spans: kinds %s, %s, want consumer", po.SpanKind(), pp.SpanKind())
	}

	wantAttr(t, so, "messaging.system", system)
	wantAttr(t, so, "messaging.operation.name", "send")
	wantAttr(t, so, "messaging.operation.type", "send")
	wantAttr(t, so, "messaging.destination.name", orders)
	wantAttr(t, so, "messaging.message.id", r.orderID)
	wantAttr(t, so, "messaging.message.body.size", len("order-1"))
	wantNoAttr(t, so, "messaging.consumer.group.name")

	wantAttr(t, po, "messaging.system", system)
	wantAttr(t, po, "messaging.operation.name", "process")
	wantAttr(t, po, "messaging.operation.type", "process")
	wantAttr(t, po, "messaging.destination.name", orders)
	wantAttr(t, po, "messaging.consumer.group.name", "billing")
	wantAttr(t, po, "messaging.message.id", r.orderID)
	wantNoAttr(t, po, "courier.outcome") // acked: no outcome attribute

	wantAttr(t, sp, "messaging.message.id", r.paymentID)
	wantAttr(t, sp, "messaging.message.conversation_id", r.orderID) // the correlation ID FollowUp set

	wantAttr(t, pp, "messaging.destination.name", payments)
	wantAttr(t, pp, "messaging.consumer.group.name", "shipping")
	wantAttr(t, pp, "messaging.message.id", r.paymentID)
	wantAttr(t, pp, "messaging.message.conversation_id", r.orderID)
	wantNoAttr(t, pp, "courier.outcome") // acked: no outcome attribute
	if v, ok := attrOf(pp, "courier.message.attempt"); ok && v.AsInt64() != 1 {
		t.Errorf("process %s: attempt %d, want 1", payments, v.AsInt64())
	}
	for _, s := range []sdktrace.ReadOnlySpan{so, po, sp, pp} {
		if s.Status().Code == codes.Error {
			t.Errorf("span %q has error status %q", s.Name(), s.Status().Description)
		}
	}
}

func countProcess(spans []sdktrace.ReadOnlySpan, name string) int {
	n := 0
	for _, s := range spans {
		if s.Name() == name {
			n++
		}
	}
	return n
}
