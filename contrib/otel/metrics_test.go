package courierotel_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	courierotel "github.com/courierkit/courier/contrib/otel"
	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	memtransport "github.com/courierkit/courier/transport/mem"
)

// Every instrument the package defines, read through a ManualReader.
func TestMetricsEveryInstrument(t *testing.T) {
	sr := tracetest.NewSpanRecorder()
	inst, reader := newInst(t, sr, courierotel.Options{})
	raw := newMem(t, memtransport.NewBroker(), memtransport.Options{})
	conn := inst.Conn(raw)
	ctx := context.Background()

	so := transport.SubscribeOptions{Group: "g", DeadLetterTopic: "work.dlq"}
	for _, d := range []struct {
		topic string
		o     transport.SubscribeOptions
	}{{"work", so}, {"work.dlq", transport.SubscribeOptions{Group: "ops"}}, {"idle", transport.SubscribeOptions{Group: "late"}}} {
		if err := conn.Declare(ctx, d.topic, d.o); err != nil {
			t.Fatal(err)
		}
	}
	reg, err := inst.ObserveLag(conn, courierotel.LagOptions{},
		courierotel.LagTarget{Topic: "idle", Group: "late"},
		courierotel.LagTarget{Topic: "work.dlq", Group: "ops", DeadLetter: true})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Unregister()

	// 3 messages nobody consumes yet: lag 3.
	if err := conn.Publish(ctx, "idle", message.New(nil), message.New(nil), message.New(nil)); err != nil {
		t.Fatal(err)
	}
	// work: one ok, one retried once in process then ok, one nacked once
	// then ok (a redelivery), one poison (dead-lettered by the transport),
	// one duplicate.
	ok, retried, flaky, poison, dup := message.New([]byte("ok")), message.New([]byte("retried")), message.New([]byte("flaky")), message.New([]byte("poison")), message.New([]byte("dup"))
	if err := conn.Publish(ctx, "work", ok, retried, flaky, poison, dup); err != nil {
		t.Fatal(err)
	}
	handled := make(chan string, 16)
	subscribe(t, conn, "work", message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		defer func() { handled <- m.ID }()
		switch m.ID {
		case retried.ID:
			inst.OnRetry(ctx, m, 1, errors.New("busy"), time.Millisecond)
		case flaky.ID:
			if m.Attempt == 1 {
				return errors.New("database down")
			}
		case poison.ID:
			return message.Permanent(errors.New("bad payload"))
		case dup.ID:
			inst.OnDuplicate(ctx, m)
		}
		return nil
	}), so)
	for seen := 0; seen < 6; seen++ { // 5 messages, flaky twice
		select {
		case <-handled:
		case <-time.After(10 * time.Second):
			t.Fatalf("only %d deliveries handled", seen)
		}
	}
	// Wait until the last process span ended (metrics are recorded
	// before it ends) and the dead letter reached its topic.
	waitSpans(t, sr, 10*time.Second, "6 process spans", func(s []sdktrace.ReadOnlySpan) bool { return countProcess(s, "process work") == 6 })
	lr := raw // the mem transport reports lag
	deadline := time.Now().Add(10 * time.Second)
	for {
		l, err := lr.Lag(ctx, "work.dlq", "ops")
		if err == nil && l.Pending == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("dead letter did not arrive: %+v %v", l, err)
		}
		time.Sleep(5 * time.Millisecond)
	}
	// One failing publish for error.type.
	_ = inst.Publisher(failingPublisher{}).Publish(ctx, "work", message.New(nil))

	inst.OnDeadLetter(ctx, &message.Message{ID: "x", Topic: "other", Attempt: 5}, "other.dlq", errors.New("gave up"))
	inst.BreakerStateChanged("payments-api", "", courierotel.BreakerClosed)
	inst.BreakerStateChanged("payments-api", courierotel.BreakerClosed, courierotel.BreakerOpen)
	inst.BreakerStateChanged("ledger", "", courierotel.BreakerClosed)
	inst.BreakerStateChanged("ledger", courierotel.BreakerClosed, "unknown state: 7") // ignored

	rm := collect(t, reader)
	base := map[string]string{"messaging.system": "mem", "messaging.destination.name": "work"}
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
	check := func(name string, want map[string]string, wantV int64) {
		t.Helper()
		got, n := sumInt(t, rm, name, want)
		if n == 0 || got != wantV {
			t.Errorf("%s%v = %d (%d points), want %d", name, want, got, n, wantV)
		}
	}
	check("messaging.client.sent.messages", with("messaging.operation.name", "send"), 5)
	if got, _ := sumInt(t, rm, "messaging.client.sent.messages", map[string]string{"messaging.system": "courier", "messaging.destination.name": "work", "error.type": "_OTHER"}); got != 1 {
		t.Errorf("failed sends counted %d, want 1", got)
	}
	check("messaging.client.sent.messages", map[string]string{"messaging.destination.name": "idle"}, 3)
	check("messaging.client.consumed.messages", with("messaging.consumer.group.name", "g", "messaging.operation.name", "process"), 6)
	check("courier.messaging.retries", with("messaging.consumer.group.name", "g"), 1)
	check("courier.messaging.redeliveries", with("messaging.consumer.group.name", "g"), 1)
	check("courier.messaging.dead_lettered", with("messaging.consumer.group.name", "g", "courier.dead_letter.topic", "work.dlq"), 1)
	check("courier.messaging.dead_lettered", map[string]string{"messaging.destination.name": "other", "courier.dead_letter.topic": "other.dlq"}, 1)
	check("courier.messaging.duplicates", with("messaging.consumer.group.name", "g"), 1)
	check("courier.breaker.state", map[string]string{"courier.breaker.name": "payments-api"}, 2)
	check("courier.breaker.state", map[string]string{"courier.breaker.name": "ledger"}, 0)
	check("courier.breaker.transitions", map[string]string{"courier.breaker.name": "payments-api", "courier.breaker.state": "open"}, 1)
	check("courier.messaging.consumer.lag", map[string]string{"messaging.system": "mem", "messaging.destination.name": "idle", "messaging.consumer.group.name": "late"}, 3)
	check("courier.messaging.consumer.in_flight", map[string]string{"messaging.destination.name": "idle", "messaging.consumer.group.name": "late"}, 0)
	check("courier.messaging.dead_letter.depth", map[string]string{"messaging.destination.name": "work.dlq", "messaging.consumer.group.name": "ops"}, 1)
	if _, n := sumInt(t, rm, "courier.messaging.consumer.lag", map[string]string{"messaging.destination.name": "work.dlq"}); n != 0 {
		t.Error("a dead-letter target was reported as consumer lag too")
	}

	if n := histCount(t, rm, "messaging.process.duration", with("messaging.consumer.group.name", "g")); n != 6 {
		t.Errorf("process.duration count %d, want 6", n)
	}
	if n := histCount(t, rm, "messaging.process.duration", with("error.type", "_OTHER")); n != 1 {
		t.Errorf("process.duration of failed deliveries %d, want 1", n)
	}
	if n := histCount(t, rm, "messaging.process.duration", with("error.type", "courier.permanent")); n != 1 {
		t.Errorf("process.duration of permanent failures %d, want 1", n)
	}
	if n := histCount(t, rm, "messaging.client.operation.duration", map[string]string{"messaging.destination.name": "work", "messaging.operation.name": "send", "messaging.operation.type": "send"}); n != 2 {
		t.Errorf("operation.duration count for work %d, want 2 (one publish call, one failed)", n)
	}
	// messaging.operation.type is on operation.duration only, as the
	// conventions list the metrics' attributes.
	for _, name := range []string{"messaging.client.sent.messages", "messaging.client.consumed.messages", "messaging.process.duration"} {
		m, _ := findMetric(rm, name)
		var sets []attribute.Set
		switch d := m.Data.(type) {
		case metricdata.Sum[int64]:
			for _, p := range d.DataPoints {
				sets = append(sets, p.Attributes)
			}
		case metricdata.Histogram[float64]:
			for _, p := range d.DataPoints {
				sets = append(sets, p.Attributes)
			}
		}
		if len(sets) == 0 {
			t.Errorf("%s: no points", name)
		}
		for _, set := range sets {
			if set.HasValue("messaging.operation.type") {
				t.Errorf("%s has messaging.operation.type: %v", name, set.ToSlice())
			}
		}
	}
	// Units and the advised buckets.
	for name, unit := range map[string]string{
		"messaging.client.sent.messages": "{message}", "messaging.client.consumed.messages": "{message}",
		"messaging.process.duration": "s", "messaging.client.operation.duration": "s",
		"courier.messaging.consumer.lag": "{message}",
	} {
		m, ok := findMetric(rm, name)
		if !ok {
			t.Errorf("no metric %s", name)
			continue
		}
		if m.Unit != unit {
			t.Errorf("%s unit %q, want %q", name, m.Unit, unit)
		}
	}
	if m, ok := findMetric(rm, "messaging.process.duration"); ok {
		h := m.Data.(metricdata.Histogram[float64])
		if b := h.DataPoints[0].Bounds; len(b) != 14 || b[0] != 0.005 || b[13] != 10 {
			t.Errorf("process.duration bounds %v, want the semconv advice", b)
		}
	}

	// After Unregister, lag is no longer observed.
	if err := reg.Unregister(); err != nil {
		t.Fatal(err)
	}
	rm = collect(t, reader)
	if _, n := sumInt(t, rm, "courier.messaging.consumer.lag", nil); n != 0 {
		t.Errorf("%d lag points after Unregister", n)
	}
}

type failingPublisher struct{}

func (failingPublisher) Publish(context.Context, string, ...*message.Message) error {
	return errors.New("broker unreachable")
}
func (failingPublisher) Close() error { return nil }

// ObserveLag refuses a transport without LagReporter, and a target whose
// Lag call fails is skipped and logged once, not at every collection.
func TestObserveLagUnsupportedAndFailing(t *testing.T) {
	var logs bytes.Buffer
	sr := tracetest.NewSpanRecorder()
	inst, reader := newInst(t, sr, courierotel.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if _, err := inst.ObserveLag(failingPublisher{}, courierotel.LagOptions{}, courierotel.LagTarget{Topic: "t", Group: "g"}); !errors.Is(err, courierotel.ErrNoLag) {
		t.Errorf("ObserveLag on a publisher without Lag: %v, want ErrNoLag", err)
	}
	conn := newMem(t, memtransport.NewBroker(), memtransport.Options{})
	if _, err := inst.ObserveLag(conn, courierotel.LagOptions{}, courierotel.LagTarget{Topic: "t"}); err == nil {
		t.Error("a target without group was accepted")
	}
	reg, err := inst.ObserveLag(conn, courierotel.LagOptions{Timeout: time.Second}, courierotel.LagTarget{Topic: "nope", Group: "g"})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Unregister()
	for range 3 {
		rm := collect(t, reader)
		if _, n := sumInt(t, rm, "courier.messaging.consumer.lag", nil); n != 0 {
			t.Errorf("%d lag points for a missing group", n)
		}
	}
	if n := strings.Count(logs.String(), "consumer lag unavailable"); n != 1 {
		t.Errorf("logged %d times, want once:\n%s", n, logs.String())
	}
	// It recovers once the group exists.
	if err := conn.Declare(context.Background(), "nope", transport.SubscribeOptions{Group: "g"}); err != nil {
		t.Fatal(err)
	}
	rm := collect(t, reader)
	if _, n := sumInt(t, rm, "courier.messaging.consumer.lag", map[string]string{"messaging.destination.name": "nope"}); n != 1 {
		t.Errorf("%d lag points after the group was declared, want 1", n)
	}
	if !strings.Contains(logs.String(), "available again") {
		t.Errorf("recovery not logged:\n%s", logs.String())
	}
}

// partitionedLag reports a Kafka-like per-partition lag.
type partitionedLag struct{ transport.Conn }

func (partitionedLag) Lag(_ context.Context, topic, group string) (transport.Lag, error) {
	return transport.Lag{Topic: topic, Group: group, Pending: 7, InFlight: -1, Partitions: []transport.PartitionLag{
		{Partition: 0, Committed: 10, HighWater: 13, Lag: 3}, {Partition: 1, Committed: 0, HighWater: 4, Lag: 4},
	}}, nil
}

// Partitioned lag is one point per partition; in-flight is left out when
// the broker does not say (-1).
func TestObserveLagPartitions(t *testing.T) {
	inst, reader := newInst(t, tracetest.NewSpanRecorder(), courierotel.Options{System: "kafka"})
	reg, err := inst.ObserveLag(partitionedLag{}, courierotel.LagOptions{}, courierotel.LagTarget{Topic: "orders", Group: "billing"})
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Unregister()
	rm := collect(t, reader)
	base := map[string]string{"messaging.system": "kafka", "messaging.destination.name": "orders", "messaging.consumer.group.name": "billing"}
	for p, want := range map[string]int64{"0": 3, "1": 4} {
		w := map[string]string{"messaging.destination.partition.id": p}
		for k, v := range base {
			w[k] = v
		}
		if got, n := sumInt(t, rm, "courier.messaging.consumer.lag", w); n != 1 || got != want {
			t.Errorf("partition %s lag %d (%d points), want %d", p, got, n, want)
		}
	}
	if total, n := sumInt(t, rm, "courier.messaging.consumer.lag", base); n != 2 || total != 7 {
		t.Errorf("lag points %d summing to %d, want 2 summing to 7", n, total)
	}
	if _, n := sumInt(t, rm, "courier.messaging.consumer.in_flight", nil); n != 0 {
		t.Errorf("in_flight reported %d points for a broker that does not say", n)
	}
}
