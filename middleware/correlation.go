package middleware

import (
	"context"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/router"
)

type correlationKey struct{}

// ContextWithCorrelationID returns ctx carrying a correlation ID for
// PropagateCorrelation (outside a Router, or to override it).
func ContextWithCorrelationID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, correlationKey{}, id)
}

// CorrelationIDFrom returns the correlation ID in ctx: one set with
// ContextWithCorrelationID, else that of the message the Router is
// delivering (its correlation ID, or its ID when it has none), else "".
func CorrelationIDFrom(ctx context.Context) string {
	if id, ok := ctx.Value(correlationKey{}).(string); ok && id != "" {
		return id
	}
	if d := router.FromContext(ctx); d != nil && d.Message != nil {
		if c := d.Message.CorrelationID(); c != "" {
			return c
		}
		return d.Message.ID
	}
	return ""
}

// CorrelationOptions configure CorrelationID.
type CorrelationOptions struct {
	// New makes a correlation ID for a consumed message that has none.
	// Default: the message's own ID (it starts the chain, as
	// message.FollowUp does).
	New func(*message.Message) string
}

// CorrelationID makes sure every consumed message carries a correlation
// ID (message.HeaderCorrelationID), setting one on the handler's copy of
// the headers when it has none, so logs and follow-up messages have it.
// Under a Router, the ID reaches publishes through the Delivery; outside
// one, CorrelationID also puts it in the context (one allocation). Pair
// it with PropagateCorrelation on the publisher (or publish through
// router.PublisherFrom) so every produced message carries it too. Place
// it first, so Logging and the rest see the ID.
func CorrelationID(opts CorrelationOptions) message.Middleware {
	return func(next message.Handler) message.Handler {
		return message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			id := m.Headers[message.HeaderCorrelationID]
			if id == "" {
				if opts.New != nil {
					id = opts.New(m)
				}
				if id == "" {
					id = m.ID
				}
				m.SetHeader(message.HeaderCorrelationID, id)
			}
			if d := router.FromContext(ctx); d == nil || d.Message != m {
				ctx = ContextWithCorrelationID(ctx, id)
			}
			return next.Handle(ctx, m)
		})
	}
}
