package courierotel_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	courierotel "github.com/courierkit/courier/contrib/otel"
	"github.com/courierkit/courier/internal/natstest"
	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	memtransport "github.com/courierkit/courier/transport/mem"
)

// settleLog records a subscriber's own Settled hook, which Conn must
// chain, not replace.
type settleLog struct {
	mu  sync.Mutex
	got []transport.Settlement
}

func (l *settleLog) hook(_ context.Context, _ *message.Message, s transport.Settlement) {
	l.mu.Lock()
	l.got = append(l.got, s)
	l.mu.Unlock()
}

func (l *settleLog) outcomes() []transport.Outcome {
	l.mu.Lock()
	defer l.mu.Unlock()
	var o []transport.Outcome
	for _, s := range l.got {
		o = append(o, s.Outcome)
	}
	return o
}

func (l *settleLog) wait(t *testing.T, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		l.mu.Lock()
		k := len(l.got)
		l.mu.Unlock()
		if k >= n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("subscriber's Settled hook called %d times, want %d", k, n)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// processSpans waits for n ended "process topic" spans and returns them
// in the order they ended.
func processSpans(t *testing.T, sr *tracetest.SpanRecorder, topic string, n int) []sdktrace.ReadOnlySpan {
	t.Helper()
	spans := waitSpans(t, sr, 10*time.Second, "process spans", func(s []sdktrace.ReadOnlySpan) bool { return countProcess(s, "process "+topic) >= n })
	var out []sdktrace.ReadOnlySpan
	for _, s := range spans {
		if s.Name() == "process "+topic {
			out = append(out, s)
		}
	}
	return out
}

// Under a Conn the dead-letter metrics come from the transport's
// settlement, not from the handler's result.
func TestSettledMem(t *testing.T) {
	ctx := context.Background()
	bad := message.Permanent(errors.New("bad payload"))

	t.Run("dead-letter publish fails: nacked, not dead-lettered", func(t *testing.T) {
		sr := tracetest.NewSpanRecorder()
		inst, reader := newInst(t, sr, courierotel.Options{})
		// The dead-letter copy adds five courier-dlq-* headers to the
		// traceparent: over MaxHeaders, so its publish fails.
		conn := inst.Conn(newMem(t, memtransport.NewBroker(), memtransport.Options{MaxHeaders: 3}))
		so := transport.SubscribeOptions{Group: "g", DeadLetterTopic: "work.dlq"}
		if err := conn.Declare(ctx, "work", so); err != nil {
			t.Fatal(err)
		}
		if err := conn.Publish(ctx, "work", message.New([]byte("poison"))); err != nil {
			t.Fatal(err)
		}
		var user settleLog
		so.Settled = user.hook
		subscribe(t, conn, "work", message.HandlerFunc(func(_ context.Context, m *message.Message) error {
			if m.Attempt == 1 {
				return bad // dead-lettering fails: nacked, comes back
			}
			return nil
		}), so)
		user.wait(t, 2)
		if got := user.outcomes(); len(got) != 2 || got[0] != transport.Nacked || got[1] != transport.Acked {
			t.Errorf("subscriber's hook saw %v, want [nack ack]", got)
		}
		spans := processSpans(t, sr, "work", 2)
		first := spans[0]
		wantAttr(t, first, "courier.outcome", "nack")
		e, ok := hasEvent(first, courierotel.EventSettled)
		if !ok {
			t.Fatalf("no %s event: %v", courierotel.EventSettled, first.Events())
		}
		if v, _ := eventAttr(e, "courier.dead_letter.topic"); v.AsString() != "work.dlq" {
			t.Errorf("settled event's dead-letter topic %q", v.AsString())
		}
		if v, _ := eventAttr(e, "exception.message"); v.AsString() == "" {
			t.Error("settled event without the publish error")
		}
		if _, ok := hasEvent(first, courierotel.EventDeadLettered); ok {
			t.Error("dead-lettered event for a message that was nacked")
		}
		wantNoAttr(t, spans[1], "courier.outcome")
		if _, ok := hasEvent(spans[1], courierotel.EventSettled); ok {
			t.Error("settled event on a plain ack")
		}

		rm := collect(t, reader)
		if got, n := sumInt(t, rm, "courier.messaging.dead_lettered", nil); got != 0 {
			t.Errorf("dead_lettered = %d (%d points), want 0", got, n)
		}
		want := map[string]string{"messaging.system": "mem", "messaging.destination.name": "work", "messaging.consumer.group.name": "g", "courier.outcome": "nack", "error.type": "courier.limit"}
		if got, _ := sumInt(t, rm, "courier.messaging.settle_failures", want); got != 1 {
			t.Errorf("settle_failures%v = %d, want 1", want, got)
		}
	})

	t.Run("no dead-letter topic: dropped", func(t *testing.T) {
		sr := tracetest.NewSpanRecorder()
		inst, reader := newInst(t, sr, courierotel.Options{})
		conn := inst.Conn(newMem(t, memtransport.NewBroker(), memtransport.Options{}))
		so := transport.SubscribeOptions{Group: "g"}
		if err := conn.Declare(ctx, "work", so); err != nil {
			t.Fatal(err)
		}
		if err := conn.Publish(ctx, "work", message.New(nil)); err != nil {
			t.Fatal(err)
		}
		subscribe(t, conn, "work", message.HandlerFunc(func(context.Context, *message.Message) error { return bad }), so)
		s := processSpans(t, sr, "work", 1)[0]
		wantAttr(t, s, "courier.outcome", "drop")
		e, ok := hasEvent(s, courierotel.EventDeadLettered)
		if !ok {
			t.Fatalf("no %s event", courierotel.EventDeadLettered)
		}
		if v, _ := eventAttr(e, "courier.outcome"); v.AsString() != "drop" {
			t.Errorf("dead-lettered event outcome %q", v.AsString())
		}
		rm := collect(t, reader)
		want := map[string]string{"messaging.destination.name": "work", "messaging.consumer.group.name": "g", "courier.outcome": "drop"}
		if got, _ := sumInt(t, rm, "courier.messaging.dead_lettered", want); got != 1 {
			t.Errorf("dead_lettered%v = %d, want 1", want, got)
		}
		if got, _ := sumInt(t, rm, "courier.messaging.dead_lettered", map[string]string{"courier.outcome": "dead_letter"}); got != 0 {
			t.Errorf("dead_lettered with a dead-letter outcome = %d, want 0", got)
		}
		if got, n := sumInt(t, rm, "courier.messaging.settle_failures", nil); got != 0 {
			t.Errorf("settle_failures = %d (%d points), want 0", got, n)
		}
	})

	t.Run("dead-lettered at MaxAttempts", func(t *testing.T) {
		sr := tracetest.NewSpanRecorder()
		inst, reader := newInst(t, sr, courierotel.Options{})
		conn := inst.Conn(newMem(t, memtransport.NewBroker(), memtransport.Options{}))
		so := transport.SubscribeOptions{Group: "g", DeadLetterTopic: "work.dlq", MaxAttempts: 2}
		if err := conn.Declare(ctx, "work", so); err != nil {
			t.Fatal(err)
		}
		if err := conn.Publish(ctx, "work", message.New(nil)); err != nil {
			t.Fatal(err)
		}
		subscribe(t, conn, "work", message.HandlerFunc(func(context.Context, *message.Message) error { return errors.New("still down") }), so)
		spans := processSpans(t, sr, "work", 2)
		wantAttr(t, spans[0], "courier.outcome", "nack")
		wantAttr(t, spans[1], "courier.outcome", "dead_letter")
		if _, ok := hasEvent(spans[1], courierotel.EventDeadLettered); !ok {
			t.Errorf("no %s event", courierotel.EventDeadLettered)
		}
		rm := collect(t, reader)
		want := map[string]string{"messaging.destination.name": "work", "courier.dead_letter.topic": "work.dlq"}
		if got, _ := sumInt(t, rm, "courier.messaging.dead_lettered", want); got != 1 {
			t.Errorf("dead_lettered%v = %d, want 1", want, got)
		}
	})

	t.Run("fallback: a Conn that is not a courier adapter", func(t *testing.T) {
		// Without the transport's report the middleware infers: a
		// Permanent error counts as dead-lettered even though the
		// dead-letter publish failed (the documented gap of the fallback).
		sr := tracetest.NewSpanRecorder()
		inst, reader := newInst(t, sr, courierotel.Options{})
		conn := inst.Conn(foreignConn{newMem(t, memtransport.NewBroker(), memtransport.Options{MaxHeaders: 3})})
		so := transport.SubscribeOptions{Group: "g", DeadLetterTopic: "work.dlq"}
		if err := conn.Declare(ctx, "work", so); err != nil {
			t.Fatal(err)
		}
		if err := conn.Publish(ctx, "work", message.New(nil)); err != nil {
			t.Fatal(err)
		}
		var user settleLog
		so.Settled = user.hook
		subscribe(t, conn, "work", message.HandlerFunc(func(_ context.Context, m *message.Message) error {
			if m.Attempt == 1 {
				return bad
			}
			return nil
		}), so)
		user.wait(t, 2) // the subscriber's own hook still reaches the transport
		processSpans(t, sr, "work", 2)
		rm := collect(t, reader)
		if got, _ := sumInt(t, rm, "courier.messaging.dead_lettered", map[string]string{"courier.dead_letter.topic": "work.dlq"}); got != 1 {
			t.Errorf("inferred dead_lettered = %d, want 1", got)
		}
	})
}

// foreignConn hides the adapter's type, as a Conn from outside courier
// would look to Conn.
type foreignConn struct{ transport.Conn }

// On NATS JetStream a permanent failure with no dead-letter topic is
// terminated natively (Term); a dead-lettered one is counted once.
func TestSettledNATS(t *testing.T) {
	ns := natstest.Start(t, nil)
	ctx := context.Background()
	sr := tracetest.NewSpanRecorder()
	inst, reader := newInst(t, sr, courierotel.Options{})
	conn := inst.Conn(openURL(ns.URL())(t))
	termSO := transport.SubscribeOptions{Group: "g"}
	dlqSO := transport.SubscribeOptions{Group: "g", DeadLetterTopic: "dl-dlq"}
	for topic, so := range map[string]transport.SubscribeOptions{"term": termSO, "dl": dlqSO, "dl-dlq": {Group: "ops"}} {
		if err := conn.Declare(ctx, topic, so); err != nil {
			t.Fatal(err)
		}
	}
	var user settleLog
	termSO.Settled = user.hook
	dlqSO.Settled = user.hook
	bad := message.Permanent(errors.New("bad payload"))
	h := message.HandlerFunc(func(context.Context, *message.Message) error { return bad })
	subscribe(t, conn, "term", h, termSO)
	subscribe(t, conn, "dl", h, dlqSO)
	if err := conn.Publish(ctx, "term", message.New(nil)); err != nil {
		t.Fatal(err)
	}
	if err := conn.Publish(ctx, "dl", message.New(nil)); err != nil {
		t.Fatal(err)
	}
	user.wait(t, 2)
	spans := waitSpans(t, sr, 10*time.Second, "process spans", func(s []sdktrace.ReadOnlySpan) bool {
		return countProcess(s, "process term") == 1 && countProcess(s, "process dl") == 1
	})
	wantAttr(t, findSpan(spans, "process term"), "courier.outcome", "terminate")
	wantAttr(t, findSpan(spans, "process dl"), "courier.outcome", "dead_letter")

	rm := collect(t, reader)
	base := map[string]string{"messaging.system": "nats", "messaging.consumer.group.name": "g"}
	with := func(kv ...string) map[string]string {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return m
	}
	for _, c := range []struct {
		want map[string]string
		n    int64
	}{
		{with("messaging.destination.name", "term", "courier.outcome", "terminate"), 1},
		{with("messaging.destination.name", "dl", "courier.dead_letter.topic", "dl-dlq"), 1},
		{with("messaging.destination.name", "term", "courier.dead_letter.topic", "dl-dlq"), 0},
	} {
		if got, _ := sumInt(t, rm, "courier.messaging.dead_lettered", c.want); got != c.n {
			t.Errorf("dead_lettered%v = %d, want %d", c.want, got, c.n)
		}
	}
	if got, n := sumInt(t, rm, "courier.messaging.settle_failures", nil); got != 0 {
		t.Errorf("settle_failures = %d (%d points), want 0", got, n)
	}
}

// With concurrent handlers every held process span is ended by its own
// settlement, and the counts are exact.
func TestSettledMemConcurrent(t *testing.T) {
	ctx := context.Background()
	sr := tracetest.NewSpanRecorder()
	inst, reader := newInst(t, sr, courierotel.Options{})
	conn := inst.Conn(newMem(t, memtransport.NewBroker(), memtransport.Options{}))
	so := transport.SubscribeOptions{Group: "g", DeadLetterTopic: "work.dlq", Concurrency: 4}
	if err := conn.Declare(ctx, "work", so); err != nil {
		t.Fatal(err)
	}
	const n = 60 // every third one permanent
	msgs := make([]*message.Message, n)
	for i := range msgs {
		msgs[i] = message.New([]byte{byte(i)})
	}
	if err := conn.Publish(ctx, "work", msgs...); err != nil {
		t.Fatal(err)
	}
	var user settleLog
	so.Settled = user.hook
	subscribe(t, conn, "work", message.HandlerFunc(func(_ context.Context, m *message.Message) error {
		if m.Payload[0]%3 == 0 {
			return message.Permanent(errors.New("bad"))
		}
		return nil
	}), so)
	user.wait(t, n)
	spans := processSpans(t, sr, "work", n)
	if len(spans) != n {
		t.Errorf("%d process spans ended, want %d", len(spans), n)
	}
	dead := 0
	for _, s := range spans {
		if v, ok := attrOf(s, "courier.outcome"); ok && v.AsString() == "dead_letter" {
			dead++
		}
	}
	if dead != n/3 {
		t.Errorf("%d spans with outcome dead_letter, want %d", dead, n/3)
	}
	rm := collect(t, reader)
	if got, _ := sumInt(t, rm, "courier.messaging.dead_lettered", map[string]string{"courier.dead_letter.topic": "work.dlq"}); got != n/3 {
		t.Errorf("dead_lettered = %d, want %d", got, n/3)
	}
}
