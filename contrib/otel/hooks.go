package courierotel

import (
	"context"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/courierkit/courier/message"
)

// The hooks below are for the reliability middleware (retry,
// dead-letter, idempotency, circuit breaker) and for code of your own that
// makes those decisions. Their signatures match function fields such as
// middleware.RetryOptions.OnRetry, so they can be assigned directly:
//
//	middleware.Retry(middleware.RetryOptions{OnRetry: inst.OnRetry})
//
// Called with a handler's context under the consumer middleware, they add
// an event to its process span and take the topic and group for their
// metrics from it; elsewhere they use m.Topic and no group.

// delivery is what the consumer middleware leaves in the handler's
// context for the hooks.
type delivery struct {
	system, topic, group string
	// span is the process span; deadLettered is set when the handler (or
	// middleware in it) published this delivery's dead letter through a
	// traced Publisher.
	span         trace.Span
	deadLettered atomic.Bool
}

type deliveryKey struct{}

// processCtx carries a delivery beside the span in one allocation.
type processCtx struct {
	context.Context
	d delivery
}

func (c *processCtx) Value(key any) any {
	if key == (deliveryKey{}) {
		return &c.d
	}
	return c.Context.Value(key)
}

func (i *Instrumentation) deliveryOf(ctx context.Context, m *message.Message) *delivery {
	if d, ok := ctx.Value(deliveryKey{}).(*delivery); ok {
		return d
	}
	d := &delivery{system: i.systemFor(nil)}
	if m != nil {
		d.topic = m.Topic
	}
	return d
}

// OnRetry records an in-process retry: the handler failed attempt
// (1 for the first) with err and runs again after wait. It adds an
// EventRetry event (with AttemptKey, RetryWaitKey and the error) to the
// span in ctx and counts courier.messaging.retries. Its signature is that
// of middleware.RetryOptions.OnRetry.
func (i *Instrumentation) OnRetry(ctx context.Context, m *message.Message, attempt int, err error, wait time.Duration) {
	d := i.deliveryOf(ctx, m)
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		kv := []attribute.KeyValue{AttemptKey.Int(attempt), RetryWaitKey.Float64(wait.Seconds())}
		if err != nil {
			kv = append(kv, attribute.String("exception.message", err.Error()), semconv.ErrorTypeKey.String(errorType(err)))
		}
		span.AddEvent(EventRetry, trace.WithAttributes(kv...))
	}
	if i.retries.Enabled(ctx) {
		i.retries.Add(ctx, 1, i.metricOpt(d.system, "process", "", d.topic, d.group, ""))
	}
}

// OnDeadLetter records that m was sent to the dead-letter topic dlq
// because of err, by code that dead-letters itself and returns nil. It
// adds an EventDeadLettered event to the span in ctx, marks the process
// span's outcome "dead_letter" and counts courier.messaging.dead_lettered.
//
// It is rarely needed: the consumer middleware reports what the transport
// dead-letters (a Permanent error or MaxAttempts reached), and a traced
// Publisher reports dead letters published with the handler's context (a
// message with the courier-dlq-reason header, as middleware.DeadLetter
// publishes through the Router's publisher). Wiring OnDeadLetter as well
// would count those twice.
func (i *Instrumentation) OnDeadLetter(ctx context.Context, m *message.Message, dlq string, err error) {
	d := i.deliveryOf(ctx, m)
	d.deadLettered.Store(true)
	attempt := 0
	if m != nil {
		attempt = m.Attempt
	}
	i.deadLettered(ctx, trace.SpanFromContext(ctx), d.system, d.topic, d.group, dlq, attempt, err)
}

func (i *Instrumentation) deadLettered(ctx context.Context, span trace.Span, system, topic, group, dlq string, attempt int, err error) {
	if span.IsRecording() {
		kv := make([]attribute.KeyValue, 0, 3)
		if attempt > 0 {
			kv = append(kv, AttemptKey.Int(attempt))
		}
		if dlq != "" {
			kv = append(kv, DeadLetterTopicKey.String(dlq))
		}
		if err != nil {
			kv = append(kv, attribute.String("exception.message", err.Error()))
		}
		span.AddEvent(EventDeadLettered, trace.WithAttributes(kv...))
	}
	if i.deadLetters.Enabled(ctx) {
		i.deadLetters.Add(ctx, 1, i.sets.get(setKey{kind: 2, system: system, topic: topic, group: group, op: dlq}, func() attribute.Set {
			kv := baseAttrs(system, "process", "", topic, group, "")
			if dlq != "" {
				kv = append(kv, DeadLetterTopicKey.String(dlq))
			}
			return attribute.NewSet(kv...)
		}))
	}
}

// OnDuplicate records that m was not processed because its ID was
// processed before (an idempotency hit). It adds an EventDuplicate event
// to the span in ctx and counts courier.messaging.duplicates.
func (i *Instrumentation) OnDuplicate(ctx context.Context, m *message.Message) {
	d := i.deliveryOf(ctx, m)
	if span := trace.SpanFromContext(ctx); span.IsRecording() {
		span.AddEvent(EventDuplicate)
	}
	if i.duplicates.Enabled(ctx) {
		i.duplicates.Add(ctx, 1, i.metricOpt(d.system, "process", "", d.topic, d.group, ""))
	}
}

// Breaker states as BreakerStateChanged takes them (gobreaker's
// State.String values).
const (
	BreakerClosed   = "closed"
	BreakerHalfOpen = "half-open"
	BreakerOpen     = "open"
)

// BreakerStateChanged records that the circuit breaker name entered state
// to (BreakerClosed, BreakerHalfOpen or BreakerOpen) from state from. It
// sets the gauge courier.breaker.state for the breaker (0 closed,
// 1 half-open, 2 open) and counts courier.breaker.transitions by the state
// entered. Wire it to gobreaker's OnStateChange with the states' String():
//
//	OnStateChange: func(name string, from, to gobreaker.State) {
//		inst.BreakerStateChanged(name, from.String(), to.String())
//	}
//
// Call it once with from "" and to BreakerClosed when a breaker is made, so
// the gauge exists before the first change.
func (i *Instrumentation) BreakerStateChanged(name, from, to string) {
	ctx := context.Background()
	var v int64
	switch to {
	case BreakerClosed:
		v = 0
	case BreakerHalfOpen:
		v = 1
	case BreakerOpen:
		v = 2
	default:
		return // not a state we know how to plot; leave the gauge as it was
	}
	i.breaker.Record(ctx, v, metric.WithAttributes(BreakerNameKey.String(name)))
	if from != "" {
		i.transitions.Add(ctx, 1, metric.WithAttributes(BreakerNameKey.String(name), BreakerStateKey.String(to)))
	}
}
