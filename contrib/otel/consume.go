package courierotel

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/router"
	"github.com/courierkit/courier/transport"
)

// ConsumerOptions configure the consumer middleware. The zero value takes
// the topic from each message and reports no consumer group.
type ConsumerOptions struct {
	// Topic is messaging.destination.name when a message does not say
	// (Message.Topic is empty). Default: "".
	Topic string
	// Group is messaging.consumer.group.name. Default: GroupFunc's
	// answer; without GroupFunc, the group of the router.Route the
	// handler runs for (router.FromContext), else none.
	Group string
	// GroupFunc returns the consumer group for a handler's context when
	// Group is empty, for middleware installed once for many
	// subscriptions outside a Router. Default: nil.
	GroupFunc func(ctx context.Context) string
	// System overrides messaging.system for this middleware. Default: the
	// Instrumentation's Options.System, else "courier" (Conn fills it from
	// the transport).
	System string
	// MaxAttempts and DeadLetterTopic mirror the subscription's
	// (transport.SubscribeOptions): a failure at attempt MaxAttempts or
	// later is reported as dead-lettered, like a message.Permanent error
	// always is, with DeadLetterTopic as DeadLetterTopicKey. Conn fills
	// both. Default: 0 and "".
	MaxAttempts     int
	DeadLetterTopic string
	// Attributes adds span attributes of your own per message, such as
	// broker-specific ones read from the native message (m.As); see the
	// otelkafka and otelamqp subpackages. Default: Options.Attributes.
	Attributes func(ctx context.Context, m *message.Message) []attribute.KeyValue
	// LinkOnly starts each process span in the handler's own trace (or a
	// new one) with a link to the producer's span, instead of as its
	// child. Default: false: the process span continues the producer's
	// trace, so one request is one trace across services.
	LinkOnly bool

	// settle, set by Conn, receives the transport's settlements
	// (transport.SubscribeOptions.Settled): dead letters are then counted
	// from those instead of inferred here.
	settle *settleObserver
}

// Middleware returns consumer middleware that runs each message's handler
// in a consumer span "process {topic}" continuing the trace whose context
// the message carries in its headers (see Publisher), with
// messaging.system, messaging.operation.name and type "process",
// messaging.destination.name, messaging.consumer.group.name,
// messaging.message.id, messaging.message.conversation_id (the
// correlation ID), the body size, the delivery attempt (AttemptKey) and,
// on Kafka and Pub/Sub, the message key. The handler's context holds the
// span, so messages it publishes through a traced Publisher are its
// children, and the hooks (OnRetry, OnDeadLetter, OnDuplicate) add events
// to it.
//
// A redelivered message (Attempt > 1) gets an EventRedelivered event and
// counts in courier.messaging.redeliveries. A handler error sets the span's
// status, error.type and OutcomeKey "nack"; a message.Permanent error, or
// a failure at ConsumerOptions.MaxAttempts, is what the transport
// dead-letters: OutcomeKey "dead_letter", an EventDeadLettered event and
// courier.messaging.dead_lettered (inferred: under a Conn these come from
// the transport's settlement instead, see Instrumentation.Conn). Every message counts in
// messaging.client.consumed.messages and its handler time in
// messaging.process.duration.
//
// Put it first in the chain (outermost), so the span covers the other
// middleware and what it sees is what the transport gets.
func (i *Instrumentation) Middleware(o ConsumerOptions) message.Middleware {
	system := o.System
	if system == "" {
		system = i.systemFor(nil)
	}
	if o.Attributes == nil {
		o.Attributes = i.attrs
	}
	return func(next message.Handler) message.Handler {
		last := new(atomic.Pointer[opNames]) // per wrapped handler: usually one topic and group
		return message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			if !i.tracing() && !i.metering() {
				// Nothing to record: pass the trace context through,
				// as no-op spans would, and nothing else.
				if _, ok := m.Headers[message.HeaderTraceParent]; ok && !o.LinkOnly {
					ctx = i.prop.Extract(ctx, HeaderCarrier(m.Headers))
				}
				return next.Handle(ctx, m)
			}
			return i.process(ctx, next, m, system, &o, last)
		})
	}
}

func (i *Instrumentation) process(ctx context.Context, next message.Handler, m *message.Message, system string, o *ConsumerOptions, last *atomic.Pointer[opNames]) error {
	tracing := i.tracing()
	measure := i.metering()
	var start time.Time
	if measure {
		start = time.Now()
	}
	topic := m.Topic
	if topic == "" {
		topic = o.Topic
	}
	group := o.Group
	if group == "" {
		if o.GroupFunc != nil {
			group = o.GroupFunc(ctx)
		} else if d := router.FromContext(ctx); d != nil {
			group = d.Group()
			if topic == "" {
				topic = d.Topic()
			}
		}
	}

	names := i.namesFor(last, system, "process", topic, group)
	sctx := ctx
	var span trace.Span = tracenoop.Span{}
	if tracing {
		parent := ctx
		var link trace.Link
		if len(m.Headers) > 0 {
			if rctx := i.prop.Extract(ctx, HeaderCarrier(m.Headers)); o.LinkOnly {
				link.SpanContext = trace.SpanContextFromContext(rctx)
			} else {
				parent = rctx
			}
		}
		sa := getSpanArgs()
		attrs := append(sa.attrs,
			semconv.MessagingSystemKey.String(system),
			semconv.MessagingOperationNameKey.String("process"),
			semconv.MessagingOperationTypeKey.String("process"),
			semconv.MessagingDestinationNameKey.String(topic),
		)
		if group != "" {
			attrs = append(attrs, semconv.MessagingConsumerGroupNameKey.String(group))
		}
		// The rest is per message. Under a parent that was not sampled
		// (the usual sampler, ParentBased, records nothing there) it is
		// added only if the span turns out to record, sparing the
		// tracer a copy of attributes it would drop.
		lazy := unsampled(parent)
		nStart := len(attrs)
		attrs = messageAttrs(attrs, system, m)
		if m.Attempt > 0 {
			attrs = append(attrs, AttemptKey.Int(m.Attempt))
		}
		if o.Attributes != nil && !lazy {
			attrs = append(attrs, o.Attributes(ctx, m)...)
		}
		startAttrs := attrs
		if lazy {
			startAttrs = attrs[:nStart]
		}
		opts := append(sa.opts, consumerKind, trace.WithAttributes(startAttrs...))
		if link.SpanContext.IsValid() {
			opts = append(opts, trace.WithLinks(link))
		}
		sctx, span = i.tracer.Start(parent, names.span, opts...)
		if lazy && span.IsRecording() {
			if o.Attributes != nil {
				attrs = append(attrs, o.Attributes(ctx, m)...)
			}
			span.SetAttributes(attrs[nStart:]...)
		}
		sa.attrs, sa.opts = attrs, opts
		putSpanArgs(sa)
	} else if _, ok := m.Headers[message.HeaderTraceParent]; ok && !o.LinkOnly {
		sctx = i.prop.Extract(ctx, HeaderCarrier(m.Headers))
	}

	var okOpt metric.MeasurementOption // the attribute set without error.type
	if measure {
		okOpt = names.ok
		i.consumed.Add(sctx, 1, names.add...)
	}
	if m.Attempt > 1 {
		span.AddEvent(EventRedelivered, trace.WithAttributes(AttemptKey.Int(m.Attempt)))
		if measure {
			i.redelivered.Add(sctx, 1, okOpt)
		}
	}

	pc := &processCtx{Context: sctx, d: delivery{system: system, topic: topic, group: group, span: span}}
	// A panicking handler must not leave its span open: end it (and
	// record the processing) with the panic as its error, then let the
	// panic go on to whoever recovers it (middleware.Recover, the
	// router, the transport's Dispatcher). It is raised again from inside
	// this deferred call, so the recovering party's stack trace still
	// shows the frames of the original panic.
	defer func() {
		if p := recover(); p != nil {
			perr := fmt.Errorf("panic: %v", p)
			span.RecordError(perr)
			span.SetStatus(codes.Error, perr.Error())
			span.SetAttributes(semconv.ErrorTypeKey.String("panic"))
			i.recordProcess(sctx, measure, start, names, system, topic, group, "panic")
			span.End()
			panic(p)
		}
	}()
	err := next.Handle(pc, m)

	et := errorType(err)
	if o.settle != nil {
		// The transport reports how it settled the message (the
		// Settled hook): the span stays open until then.
		switch {
		case err == nil && pc.d.deadLettered.Load():
			span.SetAttributes(OutcomeKey.String("dead_letter"))
		case err != nil:
			span.RecordError(err)
			span.SetStatus(codes.Error, err.Error())
			span.SetAttributes(semconv.ErrorTypeKey.String(et))
		}
		i.recordProcess(sctx, measure, start, names, system, topic, group, et)
		if span.IsRecording() {
			o.settle.hold(m, span)
		} else {
			span.End()
		}
		return err
	}
	switch {
	case err == nil && pc.d.deadLettered.Load():
		span.SetAttributes(OutcomeKey.String("dead_letter"))
	case err == nil:
		// Acked: OutcomeKey is left out (the span's status is Unset),
		// which spares the SDK a copy of every attribute per message.
	case message.IsPermanent(err) || (o.MaxAttempts > 0 && m.Attempt >= o.MaxAttempts):
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		span.SetAttributes(OutcomeKey.String("dead_letter"), semconv.ErrorTypeKey.String(et))
		i.deadLettered(sctx, span, system, topic, group, o.DeadLetterTopic, m.Attempt, err)
	default:
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		span.SetAttributes(OutcomeKey.String("nack"), semconv.ErrorTypeKey.String(et))
	}
	i.recordProcess(sctx, measure, start, names, system, topic, group, et)
	span.End()
	return err
}

func (i *Instrumentation) recordProcess(ctx context.Context, measure bool, start time.Time, names *opNames, system, topic, group, et string) {
	if !measure {
		return
	}
	if et == "" {
		i.processDur.Record(ctx, time.Since(start).Seconds(), names.rec...)
	} else {
		i.processDur.Record(ctx, time.Since(start).Seconds(), i.metricOpt(system, "process", "", topic, group, et))
	}
}

// settleObserver is a Conn subscription's transport.SubscribeOptions.Settled:
// it counts dead letters and settle failures from what the transport did,
// adds EventSettled to the process span and ends it, then calls the
// subscriber's own hook.
type settleObserver struct {
	i                    *Instrumentation
	system, topic, group string
	user                 func(context.Context, *message.Message, transport.Settlement)

	mu   sync.Mutex
	open map[*message.Message]trace.Span // recording process spans awaiting their settlement
	n    atomic.Int64                    // len(open), read without mu
}

// hold keeps m's recording process span open until the transport
// reports its settlement.
func (s *settleObserver) hold(m *message.Message, span trace.Span) {
	s.mu.Lock()
	s.open[m] = span
	s.n.Store(int64(len(s.open)))
	s.mu.Unlock()
}

func (s *settleObserver) settled(ctx context.Context, m *message.Message, st transport.Settlement) {
	var span trace.Span
	var held bool
	if s.n.Load() > 0 { // hold for m, if any, happened before on the delivery's path
		s.mu.Lock()
		if span, held = s.open[m]; held {
			delete(s.open, m)
			s.n.Store(int64(len(s.open)))
		}
		s.mu.Unlock()
	}
	i := s.i
	if !held {
		if !i.metering() {
			// Nothing to record (no span kept, no meter).
			if s.user != nil {
				s.user(ctx, m, st)
			}
			return
		}
		span = tracenoop.Span{}
	}
	topic := m.Topic
	if topic == "" {
		topic = s.topic
	}
	switch st.Outcome {
	case transport.DeadLettered:
		i.deadLettered(ctx, span, s.system, topic, s.group, st.DeadLetterTopic, m.Attempt, st.HandlerErr)
	case transport.Terminated, transport.Dropped:
		i.givenUp(ctx, span, s.system, topic, s.group, st.Outcome.String(), m.Attempt, st.HandlerErr)
	}
	if st.SettleErr != nil && i.settleFails.Enabled(ctx) {
		outcome, et := st.Outcome.String(), errorType(st.SettleErr)
		i.settleFails.Add(ctx, 1, i.sets.get(setKey{kind: 4, system: s.system, topic: topic, group: s.group, op: outcome, errType: et}, func() attribute.Set {
			return attribute.NewSet(append(baseAttrs(s.system, "process", "", topic, s.group, et), OutcomeKey.String(outcome))...)
		}))
	}
	if held {
		if st.Outcome != transport.Acked || st.SettleErr != nil {
			kv := make([]attribute.KeyValue, 0, 4)
			kv = append(kv, OutcomeKey.String(st.Outcome.String()))
			if st.Outcome == transport.Nacked {
				kv = append(kv, RetryWaitKey.Float64(st.Delay.Seconds()))
			}
			if st.DeadLetterTopic != "" {
				kv = append(kv, DeadLetterTopicKey.String(st.DeadLetterTopic))
			}
			if st.SettleErr != nil {
				kv = append(kv, attribute.String("exception.message", st.SettleErr.Error()))
			}
			span.AddEvent(EventSettled, trace.WithAttributes(kv...))
			if st.Outcome != transport.Acked {
				span.SetAttributes(OutcomeKey.String(st.Outcome.String()))
			}
		}
		span.End()
	}
	if s.user != nil {
		s.user(ctx, m, st)
	}
}

// givenUp records a message the transport gave up on without a
// dead-letter topic (outcome "terminate" or "drop"): an EventDeadLettered
// event with OutcomeKey and a courier.messaging.dead_lettered point with
// OutcomeKey and no DeadLetterTopicKey.
func (i *Instrumentation) givenUp(ctx context.Context, span trace.Span, system, topic, group, outcome string, attempt int, err error) {
	if span.IsRecording() {
		kv := make([]attribute.KeyValue, 0, 3)
		kv = append(kv, OutcomeKey.String(outcome))
		if attempt > 0 {
			kv = append(kv, AttemptKey.Int(attempt))
		}
		if err != nil {
			kv = append(kv, attribute.String("exception.message", err.Error()))
		}
		span.AddEvent(EventDeadLettered, trace.WithAttributes(kv...))
	}
	if i.deadLetters.Enabled(ctx) {
		i.deadLetters.Add(ctx, 1, i.sets.get(setKey{kind: 3, system: system, topic: topic, group: group, op: outcome}, func() attribute.Set {
			return attribute.NewSet(append(baseAttrs(system, "process", "", topic, group, ""), OutcomeKey.String(outcome))...)
		}))
	}
}

// Conn returns c with Publish traced as by Publisher and every Subscribe's
// handler wrapped in Middleware, filled from the subscription: topic,
// group, MaxAttempts and DeadLetterTopic, and messaging.system from c
// (SystemOf) unless Options.System is set. Declare, Capabilities,
// Shutdown, Close and As go to c. The result's Unwrap returns c; ObserveLag
// and SystemOf see through it.
//
// When c is one of courier's adapters, Subscribe also sets the
// subscription's transport.SubscribeOptions.Settled (calling the one the
// caller set, if any, after its own): dead letters, terminated and dropped
// messages and settle failures are then counted from what the transport
// did, and each process span ends when its message is settled, with an
// EventSettled event unless it was a plain ack. See the package doc,
// "Dead letters that the transport makes".
func (i *Instrumentation) Conn(c transport.Conn) *Conn {
	pub := i.Publisher(c)
	// courier's own adapters settle through transport.Dispatcher, which
	// calls SubscribeOptions.Settled; for any other Conn the middleware
	// infers dead letters from the handler's result.
	return &Conn{Conn: c, i: i, pub: pub, settles: SystemOf(c) != "courier"}
}

// Conn is a transport.Conn traced and measured by an Instrumentation; see
// Instrumentation.Conn.
type Conn struct {
	transport.Conn
	i       *Instrumentation
	pub     *Publisher
	settles bool // c reports settlements (SubscribeOptions.Settled)
}

var _ transport.Conn = (*Conn)(nil)

// Unwrap returns the wrapped Conn.
func (c *Conn) Unwrap() transport.Conn { return c.Conn }

// Publish traces and measures the publish; see Instrumentation.Publisher.
func (c *Conn) Publish(ctx context.Context, topic string, msgs ...*message.Message) error {
	return c.pub.Publish(ctx, topic, msgs...)
}

// Subscribe subscribes h wrapped in the consumer middleware; see
// Instrumentation.Conn.
func (c *Conn) Subscribe(ctx context.Context, topic string, h message.Handler, opts transport.SubscribeOptions) error {
	co := ConsumerOptions{
		Topic: topic, Group: opts.Group, System: c.pub.system,
		MaxAttempts: opts.MaxAttempts, DeadLetterTopic: opts.DeadLetterTopic,
	}
	if c.settles {
		co.settle = &settleObserver{
			i: c.i, system: c.pub.system, topic: topic, group: opts.Group,
			user: opts.Settled, open: make(map[*message.Message]trace.Span),
		}
		opts.Settled = co.settle.settled
	}
	return c.Conn.Subscribe(ctx, topic, c.i.Middleware(co)(h), opts)
}

var (
	_ transport.LagReporter = (*Conn)(nil)
	_ transport.Pinger      = (*Conn)(nil)
)

// Lag forwards to the wrapped Conn's transport.LagReporter, so health checks
// and lag gauges see through the wrapper; it returns an error matching
// transport.ErrUnsupported when the wrapped Conn has none.
func (c *Conn) Lag(ctx context.Context, topic, group string) (transport.Lag, error) {
	if lr, ok := c.Conn.(transport.LagReporter); ok {
		return lr.Lag(ctx, topic, group)
	}
	return transport.Lag{}, fmt.Errorf("courierotel: %T reports no lag: %w", c.Conn, transport.ErrUnsupported)
}

// Ping forwards to the wrapped Conn's transport.Pinger (router health
// checks use it); it returns an error matching transport.ErrUnsupported
// when the wrapped Conn has none.
func (c *Conn) Ping(ctx context.Context) error {
	if p, ok := c.Conn.(transport.Pinger); ok {
		return p.Ping(ctx)
	}
	return fmt.Errorf("courierotel: %T cannot ping its broker: %w", c.Conn, transport.ErrUnsupported)
}
