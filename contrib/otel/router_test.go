package courierotel_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/sony/gobreaker/v2"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	courierotel "github.com/courierkit/courier/contrib/otel"
	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/middleware"
	"github.com/courierkit/courier/router"
	"github.com/courierkit/courier/transport"
	memtransport "github.com/courierkit/courier/transport/mem"
)

// Under a Router with the recommended middleware stack: in-process retries
// appear as events (OnRetry), follow-ups published with
// router.PublisherFrom continue the trace, and a poison message that
// middleware.DeadLetter publishes through the traced Conn is reported as
// dead-lettered on its process span and in the metric.
func TestRouterAndMiddlewareStack(t *testing.T) {
	sr := tracetest.NewSpanRecorder()
	inst, reader := newInst(t, sr, courierotel.Options{})
	conn := inst.Conn(newMem(t, memtransport.NewBroker(), memtransport.Options{}))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	stack := middleware.Recommended(middleware.StackOptions{
		Retry: middleware.RetryOptions{InitialInterval: time.Millisecond, MaxInterval: 2 * time.Millisecond, OnRetry: inst.OnRetry},
		BreakerOptions: middleware.BreakerOptions{Name: "billing", OnStateChange: func(name string, from, to gobreaker.State) {
			inst.BreakerStateChanged(name, from.String(), to.String())
		}},
	})
	r := router.New(conn, router.Options{Middleware: stack})
	var flakyCalls atomic.Int32
	shipped := make(chan string, 4)
	if err := r.Handle("orders", "billing", message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		switch string(m.Payload) {
		case "poison":
			return message.Permanent(errors.New("unknown product"))
		case "flaky":
			if flakyCalls.Add(1) == 1 {
				return errors.New("inventory timeout")
			}
		}
		return router.PublisherFrom(ctx).Publish(ctx, "payments", message.New(m.Payload))
	})); err != nil {
		t.Fatal(err)
	}
	if err := r.Handle("payments", "shipping", message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		shipped <- string(m.Payload)
		return nil
	})); err != nil {
		t.Fatal(err)
	}
	for _, d := range [][2]string{{"orders", "billing"}, {"payments", "shipping"}, {"orders.dlq", "ops"}} {
		if err := conn.Declare(ctx, d[0], transport.SubscribeOptions{Group: d[1]}); err != nil {
			t.Fatal(err)
		}
	}
	runErr := make(chan error, 1)
	go func() { runErr <- r.Run(ctx) }()
	defer func() {
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		if err := r.Shutdown(sctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		if err := <-runErr; !errors.Is(err, router.ErrClosed) {
			t.Errorf("Run: %v", err)
		}
	}()

	flaky, poison := message.New([]byte("flaky")), message.New([]byte("poison"))
	if err := conn.Publish(ctx, "orders", flaky, poison); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-shipped:
		if p != "flaky" {
			t.Fatalf("shipped %q", p)
		}
	case <-ctx.Done():
		t.Fatal("flaky order never shipped")
	}
	spans := waitSpans(t, sr, 10*time.Second, "process spans of both orders, the payment and the dead letter", func(s []sdktrace.ReadOnlySpan) bool {
		return countProcess(s, "process orders") == 2 && countNamed(s, "process payments", "send orders.dlq")
	})
	var pf, pp sdktrace.ReadOnlySpan
	for _, s := range spans {
		if s.Name() != "process orders" {
			continue
		}
		if id, _ := attrOf(s, "messaging.message.id"); id.AsString() == flaky.ID {
			pf = s
		} else {
			pp = s
		}
	}
	if pf == nil || pp == nil {
		t.Fatalf("process spans missing:\n%s", dumpSpans(spans))
	}
	wantAttr(t, pf, "messaging.consumer.group.name", "billing")
	wantNoAttr(t, pf, "courier.outcome") // acked: no outcome attribute
	if e, ok := hasEvent(pf, courierotel.EventRetry); !ok {
		t.Error("the flaky order's span has no retry event")
	} else if v, _ := eventAttr(e, "courier.message.attempt"); v.AsInt64() != 1 {
		t.Errorf("retry event attempt %d, want 1", v.AsInt64())
	}
	send := findSpan(spans, "send payments")
	wantChild(t, send, pf)
	wantChild(t, findSpan(spans, "process payments"), send)

	wantAttr(t, pp, "courier.outcome", "dead_letter")
	if e, ok := hasEvent(pp, courierotel.EventDeadLettered); !ok {
		t.Error("the poison order's span has no dead-lettered event")
	} else if v, _ := eventAttr(e, "courier.dead_letter.topic"); v.AsString() != "orders.dlq" {
		t.Errorf("dead-letter topic %q", v.AsString())
	}
	wantChild(t, findSpan(spans, "send orders.dlq"), pp)

	rm := collect(t, reader)
	if got, _ := sumInt(t, rm, "courier.messaging.dead_lettered", map[string]string{
		"messaging.destination.name": "orders", "messaging.consumer.group.name": "billing", "courier.dead_letter.topic": "orders.dlq",
	}); got != 1 {
		t.Errorf("dead_lettered = %d, want 1", got)
	}
	if got, _ := sumInt(t, rm, "courier.messaging.retries", map[string]string{"messaging.destination.name": "orders"}); got != 1 {
		t.Errorf("retries = %d, want 1", got)
	}
}
