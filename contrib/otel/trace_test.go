package courierotel_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/codes"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	courierotel "github.com/courierkit/courier/contrib/otel"
	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	memtransport "github.com/courierkit/courier/transport/mem"
)

func newMem(t testing.TB, b *memtransport.Broker, o memtransport.Options) *memtransport.Transport {
	t.Helper()
	o.Broker = b
	c, err := memtransport.New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// One order through three services is one trace on the mem transport.
func TestTraceAcrossThreeServicesMem(t *testing.T) {
	b := memtransport.NewBroker()
	r := runChain(t, "mem", func(t *testing.T) transport.Conn { return newMem(t, b, memtransport.Options{}) }, "orders", "payments")
	checkChain(t, "mem", r, "orders", "payments")
}

// subscribe runs conn.Subscribe in a goroutine until the test ends.
func subscribe(t *testing.T, conn transport.Subscriber, topic string, h message.Handler, o transport.SubscribeOptions) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- conn.Subscribe(ctx, topic, h, o) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, transport.ErrClosed) {
			t.Errorf("Subscribe %s: %v", topic, err)
		}
	})
}

// A batch publish gives each message its own creation span and links the
// send span to them; each consumer continues its message's creation span.
func TestBatchPublishLinks(t *testing.T) {
	sr := tracetest.NewSpanRecorder()
	inst, _ := newInst(t, sr, courierotel.Options{})
	conn := inst.Conn(newMem(t, memtransport.NewBroker(), memtransport.Options{}))
	ctx := context.Background()
	if err := conn.Declare(ctx, "batch", transport.SubscribeOptions{Group: "g"}); err != nil {
		t.Fatal(err)
	}
	msgs := []*message.Message{message.New([]byte("a")), message.New([]byte("b")), {Payload: []byte("c")}}
	if err := conn.Publish(ctx, "batch", msgs...); err != nil {
		t.Fatal(err)
	}
	if msgs[2].ID == "" {
		t.Error("empty ID not filled in the caller's message")
	}
	subscribe(t, conn, "batch", message.HandlerFunc(func(context.Context, *message.Message) error { return nil }), transport.SubscribeOptions{Group: "g"})
	spans := waitSpans(t, sr, 10*time.Second, "send, 3 create and 3 process spans", func(s []sdktrace.ReadOnlySpan) bool {
		n := 0
		for _, sp := range s {
			if sp.Name() == "process batch" {
				n++
			}
		}
		return n == 3
	})
	send := findSpan(spans, "send batch")
	if send == nil {
		t.Fatalf("no send span:\n%s", dumpSpans(spans))
	}
	wantAttr(t, send, "messaging.batch.message_count", 3)
	wantNoAttr(t, send, "messaging.message.id")
	creates := map[trace.SpanID]sdktrace.ReadOnlySpan{}
	for _, s := range spans {
		if s.Name() == "create batch" {
			creates[s.SpanContext().SpanID()] = s
			if s.SpanKind() != trace.SpanKindProducer {
				t.Errorf("create span kind %s", s.SpanKind())
			}
			wantAttr(t, s, "messaging.operation.type", "create")
		}
	}
	if len(creates) != 3 {
		t.Fatalf("%d create spans, want 3:\n%s", len(creates), dumpSpans(spans))
	}
	if len(send.Links()) != 3 {
		t.Fatalf("send span has %d links, want 3", len(send.Links()))
	}
	for _, l := range send.Links() {
		if creates[l.SpanContext.SpanID()] == nil {
			t.Errorf("send links to %s, not a create span", l.SpanContext.SpanID())
		}
	}
	ids := map[string]bool{}
	for _, s := range spans {
		if s.Name() != "process batch" {
			continue
		}
		c := creates[s.Parent().SpanID()]
		if c == nil {
			t.Errorf("process span's parent %s is not a create span", s.Parent().SpanID())
			continue
		}
		idv, _ := attrOf(s, "messaging.message.id")
		cid, _ := attrOf(c, "messaging.message.id")
		if idv.AsString() != cid.AsString() {
			t.Errorf("process of %s continues the create span of %s", idv.AsString(), cid.AsString())
		}
		ids[idv.AsString()] = true
	}
	for _, m := range msgs {
		if !ids[m.ID] {
			t.Errorf("no process span for message %s", m.ID)
		}
	}
}

// limitedPublisher records what it is given and declares tight limits.
type limitedPublisher struct {
	caps transport.Capabilities
	got  []*message.Message
	err  error
}

func (p *limitedPublisher) Publish(ctx context.Context, topic string, msgs ...*message.Message) error {
	if err := transport.PreparePublish(topic, msgs, p.caps.Limits); err != nil {
		return err
	}
	p.got = append(p.got, msgs...)
	return p.err
}
func (p *limitedPublisher) Close() error                         { return nil }
func (p *limitedPublisher) Capabilities() transport.Capabilities { return p.caps }

// Trace context never makes a publish fail: a message at the transport's
// header limit (SQS: 10 attributes) is sent without it, and the send span
// says so.
func TestTraceContextRespectsHeaderLimits(t *testing.T) {
	sr := tracetest.NewSpanRecorder()
	inst, _ := newInst(t, sr, courierotel.Options{})
	lp := &limitedPublisher{caps: transport.Capabilities{Limits: transport.Limits{MaxHeaders: 10}}}
	pub := inst.Publisher(lp)
	ctx, root := inst.Tracer().Start(context.Background(), "root",
		trace.WithLinks()) // a valid span context to inject
	defer root.End()

	full := message.New(nil)
	for i := range 10 {
		full.SetHeader("h"+string(rune('a'+i)), "v")
	}
	nine := message.New(nil)
	for i := range 9 {
		nine.SetHeader("h"+string(rune('a'+i)), "v")
	}
	roomy := message.New(nil)
	if err := pub.Publish(ctx, "t", full); err != nil {
		t.Fatalf("publish at the limit: %v", err)
	}
	if err := pub.Publish(ctx, "t", nine); err != nil {
		t.Fatalf("publish one below the limit: %v", err)
	}
	if err := pub.Publish(ctx, "t", roomy); err != nil {
		t.Fatal(err)
	}
	if _, ok := lp.got[0].Headers[message.HeaderTraceParent]; ok || len(lp.got[0].Headers) != 10 {
		t.Errorf("message at the limit: headers %v, want the 10 own ones only", lp.got[0].Headers)
	}
	if lp.got[1].Headers[message.HeaderTraceParent] == "" || len(lp.got[1].Headers) != 10 {
		t.Errorf("message one below: headers %v, want its 9 plus traceparent", lp.got[1].Headers)
	}
	if lp.got[2].Headers[message.HeaderTraceParent] == "" {
		t.Errorf("roomy message lacks traceparent: %v", lp.got[2].Headers)
	}
	spans := sr.Ended()
	n := 0
	for _, s := range spans {
		if _, ok := hasEvent(s, courierotel.EventTraceContextDropped); ok {
			n++
		}
	}
	if n != 1 {
		t.Errorf("%d spans with %s, want 1:\n%s", n, courierotel.EventTraceContextDropped, dumpSpans(spans))
	}
	// The traceparent of the message below the limit names its send span.
	sc := trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(), courierotel.HeaderCarrier(lp.got[1].Headers)))
	send := spans[1]
	if sc.SpanID() != send.SpanContext().SpanID() || sc.TraceID() != root.SpanContext().TraceID() {
		t.Errorf("traceparent %s/%s, want send span %s in trace %s", sc.TraceID(), sc.SpanID(), send.SpanContext().SpanID(), root.SpanContext().TraceID())
	}
}

// A failed publish marks the send span with the error and error.type.
func TestPublishErrorSpan(t *testing.T) {
	sr := tracetest.NewSpanRecorder()
	inst, _ := newInst(t, sr, courierotel.Options{})
	conn := inst.Conn(newMem(t, memtransport.NewBroker(), memtransport.Options{}))
	_ = conn.Close()
	err := conn.Publish(context.Background(), "t", message.New(nil))
	if !errors.Is(err, transport.ErrClosed) {
		t.Fatalf("publish after close: %v, want ErrClosed", err)
	}
	s := findSpan(sr.Ended(), "send t")
	if s == nil {
		t.Fatal("no send span")
	}
	if s.Status().Code != codes.Error {
		t.Errorf("status %v, want error", s.Status())
	}
	wantAttr(t, s, "error.type", "courier.closed")
	if _, ok := hasEvent(s, "exception"); !ok {
		t.Error("no exception event")
	}
}

// A nacked message comes back with attempt 2 and a redelivered event; a
// Permanent error is reported as dead-lettered to the subscription's
// dead-letter topic.
func TestProcessOutcomesAndEvents(t *testing.T) {
	sr := tracetest.NewSpanRecorder()
	inst, _ := newInst(t, sr, courierotel.Options{})
	conn := inst.Conn(newMem(t, memtransport.NewBroker(), memtransport.Options{}))
	ctx := context.Background()
	so := transport.SubscribeOptions{Group: "g", DeadLetterTopic: "work.dlq"}
	if err := conn.Declare(ctx, "work", so); err != nil {
		t.Fatal(err)
	}
	flaky := message.New([]byte("flaky"))
	poison := message.New([]byte("poison"))
	if err := conn.Publish(ctx, "work", flaky, poison); err != nil {
		t.Fatal(err)
	}
	subscribe(t, conn, "work", message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		switch {
		case m.ID == poison.ID:
			return message.Permanent(errors.New("cannot parse"))
		case m.Attempt == 1:
			return errors.New("database down")
		}
		return nil
	}), so)
	spans := waitSpans(t, sr, 10*time.Second, "three process spans", func(s []sdktrace.ReadOnlySpan) bool {
		n := 0
		for _, sp := range s {
			if sp.Name() == "process work" {
				n++
			}
		}
		return n == 3
	})
	var first, second, dead sdktrace.ReadOnlySpan
	for _, s := range spans {
		if s.Name() != "process work" {
			continue
		}
		id, _ := attrOf(s, "messaging.message.id")
		at, _ := attrOf(s, "courier.message.attempt")
		switch {
		case id.AsString() == poison.ID:
			dead = s
		case at.AsInt64() == 1:
			first = s
		case at.AsInt64() == 2:
			second = s
		}
	}
	if first == nil || second == nil || dead == nil {
		t.Fatalf("missing spans:\n%s", dumpSpans(spans))
	}
	wantAttr(t, first, "courier.outcome", "nack")
	wantAttr(t, first, "error.type", "_OTHER")
	if first.Status().Code != codes.Error || first.Status().Description != "database down" {
		t.Errorf("first attempt status %v", first.Status())
	}
	if _, ok := hasEvent(first, courierotel.EventRedelivered); ok {
		t.Error("first delivery has a redelivered event")
	}
	wantNoAttr(t, second, "courier.outcome") // acked: no outcome attribute
	e, ok := hasEvent(second, courierotel.EventRedelivered)
	if !ok {
		t.Error("second delivery has no redelivered event")
	} else if v, _ := eventAttr(e, "courier.message.attempt"); v.AsInt64() != 2 {
		t.Errorf("redelivered event attempt %v, want 2", v.AsInt64())
	}
	// Both deliveries of the flaky message continue the same send span.
	if first.Parent().SpanID() != second.Parent().SpanID() || !first.Parent().IsValid() {
		t.Errorf("deliveries of one message have parents %s and %s", first.Parent().SpanID(), second.Parent().SpanID())
	}
	wantAttr(t, dead, "courier.outcome", "dead_letter")
	wantAttr(t, dead, "error.type", "courier.permanent")
	e, ok = hasEvent(dead, courierotel.EventDeadLettered)
	if !ok {
		t.Fatal("poison message has no dead-lettered event")
	}
	if v, _ := eventAttr(e, "courier.dead_letter.topic"); v.AsString() != "work.dlq" {
		t.Errorf("dead-letter event topic %q", v.AsString())
	}
	if v, _ := eventAttr(e, "courier.message.attempt"); v.AsInt64() != 1 {
		t.Errorf("dead-letter event attempt %v", v.AsInt64())
	}
}

// The standalone middleware takes its group from GroupFunc, the hooks add
// events to the process span, LinkOnly links instead of parenting, and
// LogHandler stamps trace and span IDs on log lines.
func TestMiddlewareHooksAndLinkOnly(t *testing.T) {
	sr := tracetest.NewSpanRecorder()
	inst, _ := newInst(t, sr, courierotel.Options{System: "kafka"})
	var logs bytes.Buffer
	log := slog.New(courierotel.LogHandler(slog.NewJSONHandler(&logs, nil)))

	// A producer context to continue.
	pctx, ps := inst.Tracer().Start(context.Background(), "producer", trace.WithSpanKind(trace.SpanKindProducer))
	m := message.New([]byte("x"))
	m.Key = "k1"
	m.Topic = "orders"
	m.Attempt = 1
	inst.Inject(pctx, m)
	ps.End()

	type ctxKey struct{}
	h := message.Chain(message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		inst.OnRetry(ctx, m, 1, errors.New("timeout"), 250*time.Millisecond)
		inst.OnDuplicate(ctx, m)
		log.InfoContext(ctx, "handled", "message_id", m.ID)
		return nil
	}), inst.Middleware(courierotel.ConsumerOptions{GroupFunc: func(ctx context.Context) string {
		g, _ := ctx.Value(ctxKey{}).(string)
		return g
	}}))
	if err := h.Handle(context.WithValue(context.Background(), ctxKey{}, "billing"), m); err != nil {
		t.Fatal(err)
	}
	s := findSpan(sr.Ended(), "process orders")
	if s == nil {
		t.Fatalf("no process span:\n%s", dumpSpans(sr.Ended()))
	}
	if s.Parent().SpanID() != ps.SpanContext().SpanID() || s.SpanContext().TraceID() != ps.SpanContext().TraceID() {
		t.Errorf("process span does not continue the producer span")
	}
	wantAttr(t, s, "messaging.system", "kafka")
	wantAttr(t, s, "messaging.consumer.group.name", "billing")
	wantAttr(t, s, "messaging.kafka.message.key", "k1")
	e, ok := hasEvent(s, courierotel.EventRetry)
	if !ok {
		t.Error("no retry event")
	} else {
		if v, _ := eventAttr(e, "courier.message.attempt"); v.AsInt64() != 1 {
			t.Errorf("retry attempt %v", v.AsInt64())
		}
		if v, _ := eventAttr(e, "courier.retry.wait"); v.AsFloat64() != 0.25 {
			t.Errorf("retry wait %v", v.AsFloat64())
		}
	}
	if _, ok := hasEvent(s, courierotel.EventDuplicate); !ok {
		t.Error("no duplicate event")
	}
	line := logs.String()
	if !strings.Contains(line, `"trace_id":"`+s.SpanContext().TraceID().String()+`"`) ||
		!strings.Contains(line, `"span_id":"`+s.SpanContext().SpanID().String()+`"`) {
		t.Errorf("log line lacks the process span's IDs: %s", line)
	}

	// LinkOnly: a new trace linked to the producer.
	sr2 := tracetest.NewSpanRecorder()
	inst2, _ := newInst(t, sr2, courierotel.Options{})
	h2 := inst2.Middleware(courierotel.ConsumerOptions{LinkOnly: true, Group: "g"})(message.HandlerFunc(func(context.Context, *message.Message) error { return nil }))
	if err := h2.Handle(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	s2 := findSpan(sr2.Ended(), "process orders")
	if s2 == nil {
		t.Fatal("no LinkOnly process span")
	}
	if s2.Parent().IsValid() || s2.SpanContext().TraceID() == ps.SpanContext().TraceID() {
		t.Errorf("LinkOnly span has parent %s in trace %s; want a new root", s2.Parent().SpanID(), s2.SpanContext().TraceID())
	}
	if len(s2.Links()) != 1 || s2.Links()[0].SpanContext.SpanID() != ps.SpanContext().SpanID() {
		t.Errorf("LinkOnly links %v, want the producer span", s2.Links())
	}
	wantAttr(t, s2, "messaging.system", "courier")
}

// A message without trace context starts a new trace.
func TestProcessWithoutTraceContext(t *testing.T) {
	sr := tracetest.NewSpanRecorder()
	inst, _ := newInst(t, sr, courierotel.Options{})
	m := &message.Message{ID: "m1", Topic: "t"}
	h := inst.Middleware(courierotel.ConsumerOptions{})(message.HandlerFunc(func(ctx context.Context, _ *message.Message) error {
		if !trace.SpanContextFromContext(ctx).IsValid() {
			t.Error("handler context has no span")
		}
		return nil
	}))
	if err := h.Handle(context.Background(), m); err != nil {
		t.Fatal(err)
	}
	s := findSpan(sr.Ended(), "process t")
	if s == nil || s.Parent().IsValid() {
		t.Fatalf("want a root process span, got:\n%s", dumpSpans(sr.Ended()))
	}
}

// With tracing off (a no-op provider, or the global one before an SDK is
// installed) no span is made, but trace context a message carries still
// reaches what its handler publishes, as it would through no-op spans.
func TestNoopPassesTraceContextThrough(t *testing.T) {
	sr := tracetest.NewSpanRecorder()
	sdk, _ := newInst(t, sr, courierotel.Options{})
	pctx, ps := sdk.Tracer().Start(context.Background(), "upstream")
	in := message.New([]byte("x"))
	in.Topic = "in"
	sdk.Inject(pctx, in)
	ps.End()
	want := in.Headers[message.HeaderTraceParent]

	for name, inst := range map[string]func() (*courierotel.Instrumentation, error){
		"noop providers": func() (*courierotel.Instrumentation, error) {
			return courierotel.New(courierotel.Options{TracerProvider: tracenoop.NewTracerProvider(), MeterProvider: metricnoop.NewMeterProvider()})
		},
		"global unset": func() (*courierotel.Instrumentation, error) { return courierotel.New(courierotel.Options{}) },
	} {
		t.Run(name, func(t *testing.T) {
			inst, err := inst()
			if err != nil {
				t.Fatal(err)
			}
			lp := &limitedPublisher{}
			pub := inst.Publisher(lp)
			h := inst.Middleware(courierotel.ConsumerOptions{})(message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
				return pub.Publish(ctx, "out", message.New([]byte("y")))
			}))
			if err := h.Handle(context.Background(), in); err != nil {
				t.Fatal(err)
			}
			if got := lp.got[0].Headers[message.HeaderTraceParent]; got != want {
				t.Errorf("forwarded traceparent %q, want %q", got, want)
			}
			// Without trace context nothing is added.
			plain := message.New(nil)
			if err := pub.Publish(context.Background(), "out", plain); err != nil {
				t.Fatal(err)
			}
			if len(lp.got[1].Headers) != 0 || lp.got[1] != plain {
				t.Errorf("a publish without trace context was changed: %v", lp.got[1].Headers)
			}
		})
	}
	if n := len(sr.Ended()); n != 1 {
		t.Errorf("%d spans recorded, want only the upstream one", n)
	}
}

// An Instrumentation made before the program installs its SDK (otel.Set*
// after New, as happens with package-level setup) records once it is
// installed. This test sets the global providers; it restores no-op ones.
func TestGlobalProvidersInstalledLater(t *testing.T) {
	inst, err := courierotel.New(courierotel.Options{})
	if err != nil {
		t.Fatal(err)
	}
	sr := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr))
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	otel.SetTracerProvider(tp)
	otel.SetMeterProvider(mp)
	t.Cleanup(func() {
		otel.SetTracerProvider(tracenoop.NewTracerProvider())
		otel.SetMeterProvider(metricnoop.NewMeterProvider())
		_ = tp.Shutdown(context.Background())
		_ = mp.Shutdown(context.Background())
	})
	lp := &limitedPublisher{}
	if err := inst.Publisher(lp).Publish(context.Background(), "late", message.New(nil)); err != nil {
		t.Fatal(err)
	}
	if findSpan(sr.Ended(), "send late") == nil {
		t.Error("no span after the SDK was installed")
	}
	if lp.got[0].Headers[message.HeaderTraceParent] == "" {
		t.Error("no traceparent after the SDK was installed")
	}
	if got, _ := sumInt(t, collect(t, reader), "messaging.client.sent.messages", map[string]string{"messaging.destination.name": "late"}); got != 1 {
		t.Errorf("sent.messages = %d, want 1", got)
	}
}

// Inject and Extract round-trip the span context through a message's
// headers, and HeaderCarrier lists what it holds.
func TestInjectExtractAndCarrier(t *testing.T) {
	sr := tracetest.NewSpanRecorder()
	inst, _ := newInst(t, sr, courierotel.Options{})
	ctx, span := inst.Tracer().Start(context.Background(), "outbox write")
	defer span.End()
	m := &message.Message{ID: "m1"} // nil headers: Inject allocates them
	inst.Inject(ctx, m)
	keys := courierotel.HeaderCarrier(m.Headers).Keys()
	if len(keys) != 1 || keys[0] != message.HeaderTraceParent {
		t.Errorf("keys %v, want [traceparent] (no tracestate when empty)", keys)
	}
	got := trace.SpanContextFromContext(inst.Extract(context.Background(), m))
	if !got.IsRemote() || got.TraceID() != span.SpanContext().TraceID() || got.SpanID() != span.SpanContext().SpanID() {
		t.Errorf("extracted %v, want the span's context", got)
	}
	if sc := trace.SpanContextFromContext(inst.Extract(context.Background(), &message.Message{})); sc.IsValid() {
		t.Errorf("a message without headers yielded %v", sc)
	}
}
