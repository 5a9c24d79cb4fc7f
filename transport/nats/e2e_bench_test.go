package natstransport_test

import (
	"context"
	"testing"

	"github.com/courierkit/courier/conformance"
	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	natstransport "github.com/courierkit/courier/transport/nats"
)

// freshIDs gives every published message whose ID is conformance.Bench's
// fixed "bench" a new ID: JetStream de-duplicates on Nats-Msg-Id, so with
// one ID for all it would store only the first message. The figure thus
// includes ID generation (about 0.1 µs a message), which the mem figure
// does not.
type freshIDs struct{ transport.Conn }

func (c freshIDs) Publish(ctx context.Context, topic string, msgs ...*message.Message) error {
	for _, m := range msgs {
		if m.ID == "bench" {
			m.ID = message.NewID()
		}
	}
	return c.Conn.Publish(ctx, topic, msgs...)
}

// BenchmarkEndToEnd is the shared conformance.Bench (publish → handler →
// ack, one op is one message) on the embedded server (file storage).
func BenchmarkEndToEnd(b *testing.B) {
	srv := newServer(b, nil)
	harness := func() conformance.Harness {
		return conformance.Harness{Open: func(ctx context.Context) (transport.Conn, error) {
			t, err := natstransport.New(ctx, natstransport.Options{URL: srv.URL()})
			if err != nil {
				return nil, err
			}
			return freshIDs{t}, nil
		}}
	}
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
		b.Run("jetstream/"+bc.name, func(b *testing.B) { conformance.Bench(b, harness(), bc.o) })
	}
	// Core mode is not benchmarked here: conformance.Bench Declares the
	// group first, which core NATS cannot honour (ErrUnsupported).
}
