package conformance_test

import (
	"context"
	"flag"
	"testing"

	"github.com/courierkit/courier/conformance"
	"github.com/courierkit/courier/transport"
	_ "github.com/courierkit/courier/transport/mem"
)

var url = flag.String("url", "mem://conformance", "transport URL to run the suite against")

// TestURL runs the suite against -url: how users check their own broker.
//
//	go test ./conformance -run TestURL -args -url=nats://127.0.0.1:4222
func TestURL(t *testing.T) {
	conformance.Run(t, conformance.Harness{
		Open: func(ctx context.Context) (transport.Conn, error) { return transport.Open(ctx, *url) },
	})
}
