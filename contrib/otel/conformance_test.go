package courierotel_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/courierkit/courier/conformance"
	courierotel "github.com/courierkit/courier/contrib/otel"
	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	memtransport "github.com/courierkit/courier/transport/mem"
)

// A traced Conn keeps every promise of the transport it wraps: the
// conformance suite passes on the mem transport behind Instrumentation.Conn
// (with the SDK recording, so the decorator's copies, header injection and
// consumer spans are all in play).
func TestConformanceThroughConn(t *testing.T) {
	inst, _ := newInst(t, tracetest.NewSpanRecorder(), courierotel.Options{})
	b := memtransport.NewBroker()
	conformance.Run(t, conformance.Harness{
		Open: func(ctx context.Context) (transport.Conn, error) {
			c, err := memtransport.New(ctx, memtransport.Options{Broker: b})
			if err != nil {
				return nil, err
			}
			return inst.Conn(c), nil
		},
		Timeout: 10 * time.Second,
	})
}

// The traced Conn forwards Lag and Ping to the transport it wraps.
func TestConnForwardsLagAndPing(t *testing.T) {
	inst, _ := newInst(t, tracetest.NewSpanRecorder(), courierotel.Options{})
	c, err := memtransport.New(context.Background(), memtransport.Options{})
	if err != nil {
		t.Fatal(err)
	}
	tc := inst.Conn(c)
	ctx := context.Background()
	if err := tc.Declare(ctx, "orders", transport.SubscribeOptions{Group: "g"}); err != nil {
		t.Fatal(err)
	}
	if err := tc.Publish(ctx, "orders", &message.Message{Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	if l, err := tc.Lag(ctx, "orders", "g"); err != nil || l.Pending != 1 {
		t.Fatalf("Lag = %+v, %v", l, err)
	}
	if err := tc.Ping(ctx); err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := tc.Ping(ctx); !errors.Is(err, transport.ErrClosed) {
		t.Fatalf("Ping after Close = %v", err)
	}
}
