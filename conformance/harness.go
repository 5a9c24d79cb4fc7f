package conformance

import (
	"context"
	"time"

	"github.com/courierkit/courier/transport"
)

// Harness connects the suite to one transport.
type Harness struct {
	// Open returns a new connection to the broker under test. The suite
	// calls it several times per case (a publisher and subscribers on
	// separate connections, as separate services would have) and closes
	// what it opened. Required.
	Open func(ctx context.Context) (transport.Conn, error)
	// Restart stops the broker and starts it again on the same address
	// and storage while connections stay open. Nil skips the
	// broker-restart case ("harness cannot restart the broker").
	Restart func(ctx context.Context) error
	// Prefix starts every topic and group name the suite makes, which are
	// otherwise unique per run and case. Default "conf".
	Prefix string
	// Timeout bounds each wait for a delivery. Default 30s.
	Timeout time.Duration
	// RedeliveryTimeout bounds waits for a nacked message to come back.
	// Default Timeout.
	RedeliveryTimeout time.Duration
	// MaxPayloadTested caps the payload of the maximum-size round trip,
	// for brokers whose maximum is too large to move quickly. Default 16
	// MiB (1 MiB under -short).
	MaxPayloadTested int
	// SubscribeOptions are merged into every subscription the suite makes
	// (fields it sets itself win), e.g. a short AckWait for a broker that
	// redelivers only after it.
	SubscribeOptions transport.SubscribeOptions
	// Settle is how long the suite waits after Declare or the start of a
	// subscription before publishing, for brokers whose subscriptions
	// become active asynchronously (Kafka group joins). Default 0.
	Settle time.Duration
}
