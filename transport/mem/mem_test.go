package memtransport_test

import (
	"context"
	"testing"

	"go.uber.org/goleak"

	"github.com/courierkit/courier/conformance"
	"github.com/courierkit/courier/transport"
	memtransport "github.com/courierkit/courier/transport/mem"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestConformance(t *testing.T) {
	b := memtransport.NewBroker()
	conformance.Run(t, conformance.Harness{
		Open: func(ctx context.Context) (transport.Conn, error) {
			return memtransport.New(ctx, memtransport.Options{Broker: b})
		},
		Timeout: 10 * 1e9,
	})
}
