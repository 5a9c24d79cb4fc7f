package memtransport_test

import (
	"context"
	"testing"

	"github.com/courierkit/courier/conformance"
	"github.com/courierkit/courier/transport"
	memtransport "github.com/courierkit/courier/transport/mem"
)

func benchHarness() conformance.Harness {
	b := memtransport.NewBroker()
	return conformance.Harness{Open: func(ctx context.Context) (transport.Conn, error) {
		return memtransport.New(ctx, memtransport.Options{Broker: b})
	}}
}

// BenchmarkEndToEnd is publish → handler → ack; one op is one message.
func BenchmarkEndToEnd(b *testing.B) {
	for _, bc := range []struct {
		name string
		o    conformance.BenchOptions
	}{
		{"16B/1pub", conformance.BenchOptions{PayloadSize: 16, Publishers: 1}},
		{"16B/4pub", conformance.BenchOptions{PayloadSize: 16, Publishers: 4}},
		{"16B/4pub/batch16", conformance.BenchOptions{PayloadSize: 16, Publishers: 4, Batch: 16}},
		{"1KiB/1pub", conformance.BenchOptions{PayloadSize: 1024, Publishers: 1}},
		{"1KiB/4pub", conformance.BenchOptions{PayloadSize: 1024, Publishers: 4}},
		{"16B/4pub/conc4", conformance.BenchOptions{PayloadSize: 16, Publishers: 4, Concurrency: 4}},
	} {
		b.Run(bc.name, func(b *testing.B) { conformance.Bench(b, benchHarness(), bc.o) })
	}
}
