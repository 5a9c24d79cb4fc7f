package courierotel_test

import (
	"context"
	"testing"
	"time"

	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/courierkit/courier/conformance"
	courierotel "github.com/courierkit/courier/contrib/otel"
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
