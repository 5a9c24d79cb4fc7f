package courierotel

import (
	"context"
	"errors"
	"strconv"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// EventTraceContextDropped is added to a send span when a message could
// not carry the trace context within the transport's header limits (see
// Publisher).
const EventTraceContextDropped = "courier.trace_context_dropped"

// Publisher is a transport.Publisher that traces and measures every
// Publish; Instrumentation.Publisher returns one.
type Publisher struct {
	i      *Instrumentation
	next   transport.Publisher
	system string
	limits transport.Limits
	last   atomic.Pointer[opNames] // span name and metric set of the last topic
}

var _ transport.Publisher = (*Publisher)(nil)

// Publisher wraps p so that every Publish
//
//   - runs in a producer span "send {topic}" (messaging.operation.name
//     and type "send", messaging.system, messaging.destination.name, and
//     for a single message messaging.message.id, its body size, its
//     correlation ID as messaging.message.conversation_id and, on Kafka
//     and Pub/Sub, its key; messaging.batch.message_count for a batch);
//   - writes the W3C trace context (traceparent, tracestate) into each
//     message's headers, so the consumer's process span continues the
//     trace. A batch of several messages gets one producer span "create
//     {topic}" per message, whose context each message carries, and the
//     send span links to all of them, as the messaging conventions
//     describe for batches;
//   - counts messaging.client.sent.messages and records
//     messaging.client.operation.duration, both with error.type when the
//     publish failed.
//
// Published from a context without a span (a relay, a forwarder), a
// message that already carries trace context continues that trace: its
// producer span (the send span of a single message, the message's create
// span in a batch) is a child of the span the message carries, whose
// context it then replaces. This is how a message written to an outbox
// inside a traced request (see OutboxHook) stays in that request's trace
// when the relay publishes it.
//
// Messages with an empty ID get one (message.NewID) before the span
// starts, as Publish promises; the caller's messages are not otherwise
// changed: p receives shallow copies with their own header maps.
//
// Header limits: when p declares Capabilities (every transport.Conn does)
// and adding the trace headers would take a message over MaxHeaders,
// MaxHeaderBytes or MaxMessage (SQS carries 10 message attributes), the
// message is sent without tracestate, or without trace context at all,
// rather than failing the publish; the send span then gets an event
// EventTraceContextDropped.
func (i *Instrumentation) Publisher(p transport.Publisher) *Publisher {
	pub := &Publisher{i: i, next: p, system: i.systemFor(p)}
	if c, ok := p.(interface {
		Capabilities() transport.Capabilities
	}); ok {
		pub.limits = c.Capabilities().Limits
	}
	return pub
}

// Unwrap returns the wrapped publisher.
func (p *Publisher) Unwrap() transport.Publisher { return p.next }

// Close closes the wrapped publisher.
func (p *Publisher) Close() error { return p.next.Close() }

// Publish traces, measures and forwards the publish; see
// Instrumentation.Publisher.
func (p *Publisher) Publish(ctx context.Context, topic string, msgs ...*message.Message) error {
	if !p.i.tracing() && !p.i.metering() && !trace.SpanContextFromContext(ctx).IsValid() {
		// Nothing to record and no trace context to carry: the
		// transport fills missing IDs itself.
		return p.next.Publish(ctx, topic, msgs...)
	}
	return p.i.publish(ctx, p, topic, msgs)
}

func (i *Instrumentation) publish(ctx context.Context, p *Publisher, topic string, msgs []*message.Message) error {
	next, system, limits := p.next, p.system, p.limits
	names := i.namesFor(&p.last, system, "send", topic, "")
	for _, m := range msgs {
		if m != nil && m.ID == "" {
			m.ID = message.NewID()
		}
	}
	measure := i.metering()
	var start time.Time
	if measure {
		start = time.Now()
	}
	if !i.tracing() {
		// No spans; trace context already in ctx still travels.
		out := msgs
		if trace.SpanContextFromContext(ctx).IsValid() {
			out = make([]*message.Message, len(msgs))
			for n, m := range msgs {
				out[n] = m
				if m != nil {
					out[n], _ = i.carry(ctx, m, limits)
				}
			}
		}
		err := next.Publish(ctx, topic, out...)
		if measure {
			if err == nil {
				i.noteDeadLetters(ctx, topic, msgs)
			}
			i.measureSend(ctx, start, names, system, topic, len(msgs), err)
		}
		return err
	}

	single := len(msgs) == 1 && msgs[0] != nil
	parent := ctx
	if single {
		parent = i.parentFor(ctx, msgs[0])
	}
	// As for process spans: under an unsampled parent the per-message
	// attributes are added only if the span records.
	lazy := single && unsampled(parent)
	sa := getSpanArgs()
	attrs := append(sa.attrs,
		semconv.MessagingSystemKey.String(system),
		semconv.MessagingOperationNameKey.String("send"),
		semconv.MessagingOperationTypeKey.String("send"),
		semconv.MessagingDestinationNameKey.String(topic),
	)
	nStart := len(attrs)
	if single {
		attrs = messageAttrs(attrs, system, msgs[0])
	} else if len(msgs) > 1 {
		attrs = append(attrs, semconv.MessagingBatchMessageCountKey.Int(len(msgs)))
	}

	out := msgs
	var links []trace.Link
	var dropped int
	if len(msgs) > 1 {
		// One create span per message: each message carries its own
		// creation context, and the send span links to them.
		out = make([]*message.Message, len(msgs))
		createName := "create " + topic
		for n, m := range msgs {
			if m == nil {
				continue // left for the transport to reject
			}
			cparent := i.parentFor(ctx, m)
			ca := getSpanArgs()
			cattrs := append(ca.attrs,
				semconv.MessagingSystemKey.String(system),
				semconv.MessagingOperationNameKey.String("create"),
				semconv.MessagingOperationTypeKey.String("create"),
				semconv.MessagingDestinationNameKey.String(topic),
			)
			cattrs = messageAttrs(cattrs, system, m)
			copts := append(ca.opts, producerKind, trace.WithAttributes(cattrs...))
			cctx, cs := i.tracer.Start(cparent, createName, copts...)
			ca.attrs, ca.opts = cattrs, copts
			putSpanArgs(ca)
			c, ok := i.carry(cctx, m, limits)
			if !ok {
				cs.AddEvent(EventTraceContextDropped)
				dropped++
			}
			out[n] = c
			if sc := cs.SpanContext(); sc.IsValid() {
				links = append(links, trace.Link{SpanContext: sc})
			}
			cs.End()
		}
	}

	startAttrs := attrs
	if lazy {
		startAttrs = attrs[:nStart]
	}
	opts := append(sa.opts, producerKind, trace.WithAttributes(startAttrs...))
	if len(links) > 0 {
		opts = append(opts, trace.WithLinks(links...))
	}
	sctx, span := i.tracer.Start(parent, names.span, opts...)
	if lazy && span.IsRecording() {
		span.SetAttributes(attrs[nStart:]...)
	}
	sa.attrs, sa.opts = attrs, opts
	putSpanArgs(sa)
	if single {
		c, ok := i.carry(sctx, msgs[0], limits)
		if !ok {
			dropped++
		}
		if c != msgs[0] {
			out = []*message.Message{c}
		}
	}
	if dropped > 0 {
		span.AddEvent(EventTraceContextDropped, trace.WithAttributes(attribute.Int("courier.messages", dropped)))
	}

	err := next.Publish(sctx, topic, out...)

	if err == nil {
		i.noteDeadLetters(ctx, topic, msgs)
	} else {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
		span.SetAttributes(semconv.ErrorTypeKey.String(errorType(err)))
	}
	span.End()
	if measure {
		i.measureSend(ctx, start, names, system, topic, len(msgs), err)
	}
	return err
}

// parentFor is the parent of m's producer span: ctx's span; or, when ctx
// has none and m already carries trace context (a message written to an
// outbox inside a traced request, or forwarded), the span m carries, so
// the publish continues the trace m was made in.
func (i *Instrumentation) parentFor(ctx context.Context, m *message.Message) context.Context {
	if trace.SpanContextFromContext(ctx).IsValid() {
		return ctx
	}
	if _, ok := m.Headers[message.HeaderTraceParent]; !ok {
		return ctx
	}
	return i.prop.Extract(ctx, HeaderCarrier(m.Headers))
}

func (i *Instrumentation) measureSend(ctx context.Context, start time.Time, names *opNames, system, topic string, n int, err error) {
	if err == nil {
		i.sent.Add(ctx, int64(n), names.add...)
		i.opDur.Record(ctx, time.Since(start).Seconds(), names.rec...)
		return
	}
	et := errorType(err)
	i.sent.Add(ctx, int64(n), i.metricOpt(system, "send", "", topic, "", et))
	i.opDur.Record(ctx, time.Since(start).Seconds(), i.metricOpt(system, "send", "send", topic, "", et))
}

// carry returns the message to hand to the transport: m itself when ctx
// has no span context to inject, else a shallow copy with its own header
// map holding the trace context. ok is false when the trace context had
// to be left out (or cut down) to stay within limits.
func (i *Instrumentation) carry(ctx context.Context, m *message.Message, l transport.Limits) (*message.Message, bool) {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return m, true
	}
	c := *m
	h := make(message.Header, len(m.Headers)+2)
	for k, v := range m.Headers {
		h[k] = v
	}
	c.Headers = h
	i.prop.Inject(ctx, HeaderCarrier(h))
	if fits(&c, l) {
		return &c, true
	}
	// Trace context must not make a publish fail: drop what we added,
	// tracestate first.
	delete(h, message.HeaderTraceState)
	if fits(&c, l) {
		return &c, false
	}
	delete(h, message.HeaderTraceState)
	delete(h, message.HeaderTraceParent)
	return &c, false
}

// fits reports whether m stays within the limits that headers count
// towards.
func fits(m *message.Message, l transport.Limits) bool {
	if l.MaxHeaders > 0 && len(m.Headers) > l.MaxHeaders {
		return false
	}
	if l.MaxHeaderBytes > 0 {
		for _, k := range [...]string{message.HeaderTraceParent, message.HeaderTraceState} {
			if v, ok := m.Headers[k]; ok && len(k)+len(v) > l.MaxHeaderBytes {
				return false
			}
		}
	}
	if l.MaxMessage > 0 && transport.Size(m) > l.MaxMessage {
		return false
	}
	return true
}

// messageAttrs appends the per-message span attributes.
func messageAttrs(attrs []attribute.KeyValue, system string, m *message.Message) []attribute.KeyValue {
	attrs = append(attrs,
		semconv.MessagingMessageIDKey.String(m.ID),
		semconv.MessagingMessageBodySizeKey.Int(len(m.Payload)),
	)
	if c := m.Headers[message.HeaderCorrelationID]; c != "" {
		attrs = append(attrs, semconv.MessagingMessageConversationIDKey.String(c))
	}
	if m.Key != "" {
		switch system {
		case "kafka":
			attrs = append(attrs, semconv.MessagingKafkaMessageKeyKey.String(m.Key))
		case "gcp_pubsub":
			attrs = append(attrs, semconv.MessagingGCPPubSubMessageOrderingKeyKey.String(m.Key))
		}
	}
	return attrs
}

// noteDeadLetters reports messages published to a dead-letter topic (they
// carry message.HeaderDeadLetterReason) from a handler's context: on the
// process span, as its outcome, and in courier.messaging.dead_lettered.
func (i *Instrumentation) noteDeadLetters(ctx context.Context, dlq string, msgs []*message.Message) {
	var d *delivery
	for _, m := range msgs {
		if m == nil {
			continue
		}
		reason, ok := m.Headers[message.HeaderDeadLetterReason]
		if !ok {
			continue
		}
		if d == nil {
			if d, _ = ctx.Value(deliveryKey{}).(*delivery); d == nil {
				return // not under the consumer middleware
			}
		}
		d.deadLettered.Store(true)
		attempt, _ := strconv.Atoi(m.Headers[message.HeaderDeadLetterAttempts])
		i.deadLettered(ctx, d.span, d.system, d.topic, d.group, dlq, attempt, errors.New(reason))
	}
}

// OutboxHook returns a function for outbox.Options.BeforeWrite that writes
// the trace context of the writing request's ctx (W3C traceparent and
// tracestate, through the Instrumentation's propagator) into each message
// stored in the outbox. When the relay publishes the row through a traced
// Publisher or Conn, the send span is a child of that request's span (see
// Publisher), so the consumer's process span joins the request's trace.
//
// limits are the relay transport's (the outbox's Options.Limits): as in
// Publisher, when the trace headers would take a message over them, the
// message is stored without tracestate, or without trace context, rather
// than failing the write. A ctx without a span context leaves the message
// as it is. The function never returns an error.
//
// It records nothing and starts no span, so it works whatever the
// providers are; with the unset global TracerProvider there is no span
// context to write unless one came from elsewhere.
func (i *Instrumentation) OutboxHook(limits transport.Limits) func(ctx context.Context, topic string, m *message.Message) error {
	return func(ctx context.Context, _ string, m *message.Message) error {
		if !trace.SpanContextFromContext(ctx).IsValid() {
			return nil
		}
		if m.Headers == nil {
			m.Headers = make(message.Header, 2)
		}
		i.prop.Inject(ctx, HeaderCarrier(m.Headers))
		if !fits(m, limits) {
			delete(m.Headers, message.HeaderTraceState)
			if !fits(m, limits) {
				delete(m.Headers, message.HeaderTraceParent)
			}
		}
		return nil
	}
}
