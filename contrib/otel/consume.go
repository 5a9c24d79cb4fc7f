package courierotel

import (
	"context"
	"fmt"
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
// courier.messaging.dead_lettered. Every message counts in
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
	err := next.Handle(pc, m)

	et := errorType(err)
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
	if measure {
		if et == "" {
			i.processDur.Record(sctx, time.Since(start).Seconds(), names.rec...)
		} else {
			i.processDur.Record(sctx, time.Since(start).Seconds(), i.metricOpt(system, "process", "", topic, group, et))
		}
	}
	span.End()
	return err
}

// Conn returns c with Publish traced as by Publisher and every Subscribe's
// handler wrapped in Middleware, filled from the subscription: topic,
// group, MaxAttempts and DeadLetterTopic, and messaging.system from c
// (SystemOf) unless Options.System is set. Declare, Capabilities,
// Shutdown, Close and As go to c. The result's Unwrap returns c; ObserveLag
// and SystemOf see through it.
func (i *Instrumentation) Conn(c transport.Conn) *Conn {
	pub := i.Publisher(c)
	return &Conn{Conn: c, i: i, pub: pub}
}

// Conn is a transport.Conn traced and measured by an Instrumentation; see
// Instrumentation.Conn.
type Conn struct {
	transport.Conn
	i   *Instrumentation
	pub *Publisher
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
	mw := c.i.Middleware(ConsumerOptions{
		Topic: topic, Group: opts.Group, System: c.pub.system,
		MaxAttempts: opts.MaxAttempts, DeadLetterTopic: opts.DeadLetterTopic,
	})
	return c.Conn.Subscribe(ctx, topic, mw(h), opts)
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
