package courierotel

import (
	"context"
	"errors"
	"log/slog"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/semconv/v1.43.0/messagingconv"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// ScopeName is the instrumentation scope of the tracer and meter.
const ScopeName = "github.com/courierkit/courier/contrib/otel"

// Version is the instrumentation scope version.
const Version = "0.1.0"

// Attribute keys courier adds beside the semantic conventions' own.
const (
	// AttemptKey is the delivery attempt (Message.Attempt, 1 for the
	// first delivery) on process spans and on retry, redelivery and
	// dead-letter events; for OnRetry events, the in-process attempt that
	// failed.
	AttemptKey = attribute.Key("courier.message.attempt")
	// RetryWaitKey is the wait before the next in-process attempt, in
	// seconds (retry events).
	RetryWaitKey = attribute.Key("courier.retry.wait")
	// DeadLetterTopicKey is the topic a message was dead-lettered to.
	DeadLetterTopicKey = attribute.Key("courier.dead_letter.topic")
	// OutcomeKey tells what became of a processed message that was not
	// acked: "nack" (redelivery) or "dead_letter" (process spans); under a
	// Conn, where the transport reports the settlement, also "terminate"
	// (the broker's native never-redeliver) or "drop" (no dead-letter
	// path: acked and logged), which are also on those messages'
	// courier.messaging.dead_lettered points and on
	// courier.messaging.settle_failures. An acked message's span has no
	// OutcomeKey and an Unset status; the
	// attribute is not written for it because adding an attribute after
	// the span started costs the SDK a copy of all of them.
	OutcomeKey = attribute.Key("courier.outcome")
	// BreakerNameKey names a circuit breaker (breaker metrics).
	BreakerNameKey = attribute.Key("courier.breaker.name")
	// BreakerStateKey is a breaker's state: closed, half-open or open.
	BreakerStateKey = attribute.Key("courier.breaker.state")
)

// Span event names.
const (
	EventRedelivered  = "courier.redelivered"
	EventRetry        = "courier.retry"
	EventDeadLettered = "courier.dead_lettered"
	EventDuplicate    = "courier.duplicate"
	// EventSettled is added under a Conn when the transport settled a
	// message other than by a plain ack (a nack, dead letter, terminate or
	// drop) or a settle call failed; it carries OutcomeKey, RetryWaitKey
	// for a nack's delay, DeadLetterTopicKey and the settle error.
	EventSettled = "courier.settled"
)

// ErrNoLag is returned by ObserveLag for a transport that does not
// implement transport.LagReporter.
var ErrNoLag = errors.New("courierotel: transport does not report lag (transport.LagReporter)")

// Options configure an Instrumentation. The zero value uses the global
// providers and the W3C trace context propagator.
type Options struct {
	// TracerProvider makes the tracer. Default: otel.GetTracerProvider()
	// at the time New is called (the global provider delegates to one set
	// later with otel.SetTracerProvider).
	TracerProvider trace.TracerProvider
	// MeterProvider makes the meter. Default: otel.GetMeterProvider().
	MeterProvider metric.MeterProvider
	// Propagator writes and reads trace context in message headers.
	// Default: propagation.TraceContext{} (W3C traceparent and
	// tracestate), not the global propagator, which is a no-op unless the
	// program sets one: messaging is where trace context must travel. Pass
	// otel.GetTextMapPropagator() to follow the global setting, or a
	// composite with propagation.Baggage{} to carry baggage (one more
	// header: mind transports with few headers, such as SQS's 10 message
	// attributes).
	Propagator propagation.TextMapPropagator
	// System is the messaging.system attribute. Default: derived from the
	// wrapped transport's package by SystemOf (kafka, rabbitmq, nats,
	// aws_sqs, gcp_pubsub, mem), "courier" where it cannot tell.
	System string
	// Attributes adds span attributes of your own to every process span,
	// typically the broker-specific ones read from the native message:
	// otelkafka.Attributes (partition, offset) and otelamqp.Attributes
	// (routing key, delivery tag) in the subpackages. A middleware's
	// ConsumerOptions.Attributes takes precedence. Default: nil.
	Attributes func(ctx context.Context, m *message.Message) []attribute.KeyValue
	// Logger receives lag polling failures (Warn, once per target until it
	// recovers). Nothing is logged per message. Default: nil, which
	// discards.
	Logger *slog.Logger
}

// Instrumentation holds the tracer, the instruments and the propagator
// shared by the publisher decorator, the consumer middleware, the hooks
// and the lag gauges. Make one per process (or per transport) with New; it
// is safe for concurrent use.
type Instrumentation struct {
	tracer trace.Tracer
	// tp is the provider given in Options (checked once), or nil when
	// the tracer came from the global provider, which is checked per
	// call: unsetGlobal is the global provider as it is before any
	// otel.SetTracerProvider, when that could be recognised.
	tpNoop      bool
	global      bool
	unsetGlobal trace.TracerProvider
	// The same for the MeterProvider.
	mpNoop       bool
	mglobal      bool
	unsetMGlobal metric.MeterProvider
	prop         propagation.TextMapPropagator
	system       string
	attrs        func(context.Context, *message.Message) []attribute.KeyValue
	log          *slog.Logger
	meter        metric.Meter

	sent        metric.Int64Counter
	consumed    metric.Int64Counter
	processDur  metric.Float64Histogram
	opDur       metric.Float64Histogram
	retries     metric.Int64Counter
	redelivered metric.Int64Counter
	deadLetters metric.Int64Counter
	settleFails metric.Int64Counter
	duplicates  metric.Int64Counter
	breaker     metric.Int64Gauge
	transitions metric.Int64Counter
	lag         metric.Int64ObservableGauge
	inFlight    metric.Int64ObservableGauge
	dlqDepth    metric.Int64ObservableGauge

	sets attrCache
}

// durationBuckets are the explicit histogram boundaries the messaging
// semantic conventions advise for duration metrics, in seconds.
var durationBuckets = []float64{0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10}

// New returns an Instrumentation. It fails only when the meter refuses to
// create an instrument; the returned Instrumentation is usable then too
// (the failed instruments record nothing), as otel instrumentations are.
func New(opts Options) (*Instrumentation, error) {
	tp := opts.TracerProvider
	global := tp == nil
	if global {
		tp = otel.GetTracerProvider()
	}
	mp := opts.MeterProvider
	mglobal := mp == nil
	if mglobal {
		mp = otel.GetMeterProvider()
	}
	i := &Instrumentation{
		tracer: tp.Tracer(ScopeName, trace.WithInstrumentationVersion(Version), trace.WithSchemaURL(semconv.SchemaURL)),
		prop:   opts.Propagator,
		system: opts.System,
		attrs:  opts.Attributes,
		log:    opts.Logger,
		meter:  mp.Meter(ScopeName, metric.WithInstrumentationVersion(Version), metric.WithSchemaURL(semconv.SchemaURL)),
	}
	if i.prop == nil {
		i.prop = propagation.TraceContext{}
	}
	if global {
		i.global = true
		if reflect.TypeOf(tp).String() == "*global.tracerProvider" {
			// The API's own placeholder: no SDK has been installed (yet).
			i.unsetGlobal = tp
		}
	} else {
		_, i.tpNoop = tp.(tracenoop.TracerProvider)
	}
	if mglobal {
		i.mglobal = true
		if reflect.TypeOf(mp).String() == "*global.meterProvider" {
			i.unsetMGlobal = mp
		}
	} else {
		_, i.mpNoop = mp.(metricnoop.MeterProvider)
	}
	if i.log == nil {
		i.log = slog.New(slog.DiscardHandler)
	}
	m := i.meter
	var errs []error
	add := func(err error) {
		if err != nil {
			errs = append(errs, err)
		}
	}
	// The semconv constructors give the conventional names, units and
	// descriptions; recording goes through the plain instruments with
	// cached attribute sets (cheaper than the convenience methods).
	sent, err := messagingconv.NewClientSentMessages(m)
	add(err)
	i.sent = sent.Inst()
	consumed, err := messagingconv.NewClientConsumedMessages(m)
	add(err)
	i.consumed = consumed.Inst()
	pd, err := messagingconv.NewProcessDuration(m, metric.WithExplicitBucketBoundaries(durationBuckets...))
	add(err)
	i.processDur = pd.Inst()
	od, err := messagingconv.NewClientOperationDuration(m, metric.WithExplicitBucketBoundaries(durationBuckets...))
	add(err)
	i.opDur = od.Inst()
	i.retries, err = m.Int64Counter("courier.messaging.retries", metric.WithUnit("{retry}"),
		metric.WithDescription("In-process retries of a handler (one per wait before another attempt)."))
	add(err)
	i.redelivered, err = m.Int64Counter("courier.messaging.redeliveries", metric.WithUnit("{message}"),
		metric.WithDescription("Messages delivered again by the broker (delivery attempt > 1)."))
	add(err)
	i.deadLetters, err = m.Int64Counter("courier.messaging.dead_lettered", metric.WithUnit("{message}"),
		metric.WithDescription("Messages given up on and sent to the dead-letter path."))
	add(err)
	i.settleFails, err = m.Int64Counter("courier.messaging.settle_failures", metric.WithUnit("{message}"),
		metric.WithDescription("Messages whose settle (ack, nack, dead-letter publish, terminate) failed, as reported by the transport."))
	add(err)
	i.duplicates, err = m.Int64Counter("courier.messaging.duplicates", metric.WithUnit("{message}"),
		metric.WithDescription("Messages skipped by idempotency because they were processed before."))
	add(err)
	i.breaker, err = m.Int64Gauge("courier.breaker.state", metric.WithUnit("1"),
		metric.WithDescription("Circuit breaker state: 0 closed, 1 half-open, 2 open."))
	add(err)
	i.transitions, err = m.Int64Counter("courier.breaker.transitions", metric.WithUnit("{transition}"),
		metric.WithDescription("Circuit breaker state changes, by the state entered."))
	add(err)
	i.lag, err = m.Int64ObservableGauge("courier.messaging.consumer.lag", metric.WithUnit("{message}"),
		metric.WithDescription("Messages stored for a consumer group and not yet delivered (per partition where the broker has partitions)."))
	add(err)
	i.inFlight, err = m.Int64ObservableGauge("courier.messaging.consumer.in_flight", metric.WithUnit("{message}"),
		metric.WithDescription("Messages delivered to a consumer group and not yet acknowledged."))
	add(err)
	i.dlqDepth, err = m.Int64ObservableGauge("courier.messaging.dead_letter.depth", metric.WithUnit("{message}"),
		metric.WithDescription("Messages waiting on a dead-letter topic for a group."))
	add(err)
	return i, errors.Join(errs...)
}

// tracing reports whether spans can be recorded: false with a no-op
// TracerProvider, or with the global one while no SDK was installed. Then
// no span is started at all (a no-op span still costs two allocations);
// trace context present in ctx or in a message still passes through, as
// it would through no-op spans.
func (i *Instrumentation) tracing() bool {
	if !i.global {
		return !i.tpNoop
	}
	tp := otel.GetTracerProvider()
	if i.unsetGlobal != nil && tp == i.unsetGlobal {
		return false
	}
	_, isNoop := tp.(tracenoop.TracerProvider)
	return !isNoop
}

// metering reports whether metrics can be recorded: false with a no-op
// MeterProvider, or with the global one while no SDK was installed, so the
// hot path neither reads the clock nor looks up attribute sets. (The
// instruments' own Enabled would tell as much, one call per instrument.)
func (i *Instrumentation) metering() bool {
	if !i.mglobal {
		return !i.mpNoop
	}
	mp := otel.GetMeterProvider()
	if i.unsetMGlobal != nil && mp == i.unsetMGlobal {
		return false
	}
	_, isNoop := mp.(metricnoop.MeterProvider)
	return !isNoop
}

// Span kinds as start options, made once (each conversion to the option
// interface would be an allocation per span).
var (
	producerKind = trace.WithSpanKind(trace.SpanKindProducer)
	consumerKind = trace.WithSpanKind(trace.SpanKindConsumer)
)

// unsampled reports whether ctx holds a valid span context that is not
// sampled: a child started there is not recorded by a ParentBased
// sampler, the usual one.
func unsampled(ctx context.Context) bool {
	sc := trace.SpanContextFromContext(ctx)
	return sc.IsValid() && !sc.IsSampled()
}

// Tracer is the Instrumentation's tracer, for spans of your own in the
// same scope.
func (i *Instrumentation) Tracer() trace.Tracer { return i.tracer }

// Propagator is the propagator used for message headers.
func (i *Instrumentation) Propagator() propagation.TextMapPropagator { return i.prop }

// Inject writes the trace context of ctx into m's headers (traceparent,
// tracestate). The publisher decorator does this itself; Inject is for
// code that builds messages for another path (an outbox row).
func (i *Instrumentation) Inject(ctx context.Context, m *message.Message) {
	if m.Headers == nil {
		m.Headers = make(message.Header, 2)
	}
	i.prop.Inject(ctx, HeaderCarrier(m.Headers))
}

// Extract returns ctx with the remote span context carried in m's headers.
func (i *Instrumentation) Extract(ctx context.Context, m *message.Message) context.Context {
	return i.prop.Extract(ctx, HeaderCarrier(m.Headers))
}

func (i *Instrumentation) systemFor(v any) string {
	if i.system != "" {
		return i.system
	}
	return SystemOf(v)
}

// SystemOf returns the messaging.system value for a courier transport (or
// a value wrapping one, see Conn): "kafka", "rabbitmq", "nats", "aws_sqs",
// "gcp_pubsub" or "mem", from the package of its concrete type; "courier"
// for anything else.
func SystemOf(v any) string {
	for range 8 { // unwrap decorators
		u, ok := v.(interface{ Unwrap() transport.Conn })
		if !ok {
			break
		}
		v = u.Unwrap()
	}
	if v == nil {
		return "courier"
	}
	t := reflect.TypeOf(v)
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	p := t.PkgPath()
	const prefix = "github.com/courierkit/courier/transport/"
	if !strings.HasPrefix(p, prefix) {
		return "courier"
	}
	switch p[len(prefix):] {
	case "kafka":
		return string(messagingconv.SystemKafka)
	case "amqp":
		return string(messagingconv.SystemRabbitMQ)
	case "nats":
		return "nats"
	case "sqs":
		return string(messagingconv.SystemAWSSQS)
	case "gcppubsub":
		return string(messagingconv.SystemGCPPubSub)
	case "mem":
		return "mem"
	}
	return "courier"
}

// attrCache keeps metric attribute sets per (system, operation, topic,
// group, error type) so the hot path neither sorts nor allocates them. It
// is bounded: past maxSets entries new sets are built per call.
type attrCache struct {
	m sync.Map // setKey → metric.MeasurementOption
	n sync.Mutex
	c int
}

const maxSets = 4096

type setKey struct {
	kind                                      uint8
	system, topic, group, errType, op, opType string
}

func (c *attrCache) get(k setKey, build func() attribute.Set) metric.MeasurementOption {
	if v, ok := c.m.Load(k); ok {
		return v.(metric.MeasurementOption)
	}
	opt := metric.WithAttributeSet(build())
	c.n.Lock()
	if c.c < maxSets {
		if _, loaded := c.m.LoadOrStore(k, opt); !loaded {
			c.c++
		}
	}
	c.n.Unlock()
	return opt
}

// baseAttrs are the attributes every messaging metric carries.
func baseAttrs(system, op, opType, topic, group, errType string) []attribute.KeyValue {
	kv := make([]attribute.KeyValue, 0, 6)
	kv = append(kv,
		semconv.MessagingSystemKey.String(system),
		semconv.MessagingOperationNameKey.String(op),
		semconv.MessagingDestinationNameKey.String(topic),
	)
	if opType != "" {
		kv = append(kv, semconv.MessagingOperationTypeKey.String(opType))
	}
	if group != "" {
		kv = append(kv, semconv.MessagingConsumerGroupNameKey.String(group))
	}
	if errType != "" {
		kv = append(kv, semconv.ErrorTypeKey.String(errType))
	}
	return kv
}

// opNames are what one (operation, topic, group) needs per message and
// would otherwise build or look up each time: the span name and the metric
// attribute option without error.type. A Publisher and each consumer
// middleware keep the last one they used (a producer or a subscription
// usually sticks to one topic), so the steady state makes no string and
// hashes no key.
type opNames struct {
	topic, group string
	span         string
	ok           metric.MeasurementOption
	// The arguments of the counter's Add (ok) and of the duration
	// histogram's Record (ok, plus messaging.operation.type for
	// messaging.client.operation.duration) as slices made once: passing a
	// slice that exists spares the allocation of one per call.
	add []metric.AddOption
	rec []metric.RecordOption
}

// namesFor returns last's names when they are for topic and group, else
// builds them and stores them in last.
func (i *Instrumentation) namesFor(last *atomic.Pointer[opNames], system, op, topic, group string) *opNames {
	if n := last.Load(); n != nil && n.topic == topic && n.group == group {
		return n
	}
	n := &opNames{topic: topic, group: group, span: op + " " + topic,
		ok: i.metricOpt(system, op, "", topic, group, "")}
	dur := n.ok
	if op == "send" { // messaging.client.operation.duration
		dur = i.metricOpt(system, op, op, topic, group, "")
	}
	n.add, n.rec = []metric.AddOption{n.ok}, []metric.RecordOption{dur}
	last.Store(n)
	return n
}

// metricOpt returns the cached attribute option for an operation metric.
// opType is set only for messaging.client.operation.duration, the one
// messaging metric the conventions give messaging.operation.type (every
// attribute costs the metric SDK time per measurement).
func (i *Instrumentation) metricOpt(system, op, opType, topic, group, errType string) metric.MeasurementOption {
	return i.sets.get(setKey{kind: 1, system: system, op: op, opType: opType, topic: topic, group: group, errType: errType}, func() attribute.Set {
		return attribute.NewSet(baseAttrs(system, op, opType, topic, group, errType)...)
	})
}

// errorType is a low-cardinality description of err for error.type.
func errorType(err error) string {
	if err == nil {
		return ""
	}
	var le *transport.LimitError
	var ne *transport.NameError
	switch {
	case errors.Is(err, context.Canceled):
		return "context.canceled"
	case errors.Is(err, context.DeadlineExceeded):
		return "context.deadline_exceeded"
	case errors.Is(err, transport.ErrClosed):
		return "courier.closed"
	case errors.As(err, &le), errors.Is(err, transport.ErrLimit):
		return "courier.limit"
	case errors.As(err, &ne), errors.Is(err, transport.ErrInvalidName):
		return "courier.invalid_name"
	case errors.Is(err, transport.ErrUnsupported):
		return "courier.unsupported"
	case message.IsPermanent(err):
		return "courier.permanent"
	}
	return "_OTHER"
}

// spanArgs is a reusable buffer for span start attributes and options.
// Tracers copy both during Start (the SDK's NewSpanStartConfig appends the
// attributes to a config of its own), so the buffer goes back to the pool
// when Start returns.
type spanArgs struct {
	attrs []attribute.KeyValue
	opts  []trace.SpanStartOption
}

var spanArgsPool = sync.Pool{New: func() any {
	return &spanArgs{attrs: make([]attribute.KeyValue, 0, 16), opts: make([]trace.SpanStartOption, 0, 4)}
}}

func getSpanArgs() *spanArgs { return spanArgsPool.Get().(*spanArgs) }

func putSpanArgs(a *spanArgs) {
	if cap(a.attrs) > 64 { // grown by user attributes: let it go
		return
	}
	clear(a.attrs) // the used part: drop references for the GC
	clear(a.opts)
	a.attrs, a.opts = a.attrs[:0], a.opts[:0]
	spanArgsPool.Put(a)
}
