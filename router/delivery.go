package router

import (
	"context"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// Delivery describes the message a handler is running for. The Router puts
// one in every handler's context; FromContext returns it. Middleware uses it
// to learn the consumer group (dead-letter headers, idempotency scope),
// the transport's capabilities (delayed nack) and whether the router is
// draining (Retry stops waiting and hands the message back).
type Delivery struct {
	// Message is the message being handled.
	Message *message.Message
	route   *route
}

type deliveryKey struct{}

// deliveryCtx carries a Delivery in one allocation (a context.WithValue
// plus a separate Delivery would be two).
type deliveryCtx struct {
	context.Context
	d Delivery
}

func (c *deliveryCtx) Value(key any) any {
	if key == (deliveryKey{}) {
		return &c.d
	}
	return c.Context.Value(key)
}

// FromContext returns the Delivery of the message whose handler ctx
// belongs to, or nil outside a Router.
func FromContext(ctx context.Context) *Delivery {
	d, _ := ctx.Value(deliveryKey{}).(*Delivery)
	return d
}

// NewContext returns ctx carrying a Delivery of m for a route with the given
// topic, group and publisher, as the Router makes for each message. It is
// for tests of middleware and for code that runs handlers outside a Router.
func NewContext(ctx context.Context, m *message.Message, topic, group string, pub transport.Publisher) context.Context {
	rt := &route{name: routeName(topic, group), topic: topic, group: group, pub: pub, draining: make(chan struct{})}
	return &deliveryCtx{Context: ctx, d: Delivery{Message: m, route: rt}}
}

// Route is the route's name (Route.Name).
func (d *Delivery) Route() string { return d.route.name }

// Topic is the route's topic.
func (d *Delivery) Topic() string { return d.route.topic }

// Group is the route's consumer group ("" for a private subscription).
func (d *Delivery) Group() string { return d.route.group }

// Publisher is the router's publisher as configured (Options.Publisher),
// without the correlation decoration of PublisherFrom: dead-letter and
// redelivery copies go through it unchanged. Nil when the router has none.
// It is the application's connection: do not Close it.
func (d *Delivery) Publisher() transport.Publisher { return d.route.pub }

// Capabilities are the subscriber's capabilities, when it declares them
// (it implements transport.Conn or a Capabilities method); ok is false
// otherwise.
func (d *Delivery) Capabilities() (caps transport.Capabilities, ok bool) {
	return d.route.caps, d.route.hasCaps
}

// Draining is closed once the router began a graceful shutdown: a handler
// that is waiting (a backoff between retries, a rate limit) should stop
// waiting and return its error so the message is nacked and redelivered
// later, instead of holding the shutdown up.
func (d *Delivery) Draining() <-chan struct{} { return d.route.draining }

// IsDraining reports whether Draining is closed.
func (d *Delivery) IsDraining() bool {
	select {
	case <-d.route.draining:
		return true
	default:
		return false
	}
}

// PublisherFrom returns a Publisher for follow-up messages of the delivery
// in ctx: each message it publishes without a correlation ID gets the
// consumed message's (or, when that has none, its ID), and each without a
// causation ID gets the consumed message's ID. Its Close does nothing.
// Outside a Router (no Delivery in ctx), or when the router has no
// publisher, it returns nil.
func PublisherFrom(ctx context.Context) transport.Publisher {
	d := FromContext(ctx)
	if d == nil || d.route.pub == nil {
		return nil
	}
	return followUpPublisher{d.route.pub}
}

// followUpPublisher stamps correlation and causation from the delivery in
// the Publish ctx.
type followUpPublisher struct{ next transport.Publisher }

func (p followUpPublisher) Publish(ctx context.Context, topic string, msgs ...*message.Message) error {
	if d := FromContext(ctx); d != nil && d.Message != nil {
		Stamp(d.Message, msgs...)
	}
	return p.next.Publish(ctx, topic, msgs...)
}

// Close does nothing: the connection belongs to the application, not to
// the handler that publishes through it.
func (p followUpPublisher) Close() error { return nil }

// Stamp copies the correlation of consumed onto each of msgs that lacks one
// (consumed's correlation ID, or its ID when it has none) and sets the
// causation ID to consumed's ID where it is not set. Nil messages are left
// for the transport to reject.
func Stamp(consumed *message.Message, msgs ...*message.Message) {
	corr := consumed.CorrelationID()
	if corr == "" {
		corr = consumed.ID
	}
	for _, m := range msgs {
		if m == nil {
			continue
		}
		if m.Headers[message.HeaderCorrelationID] == "" && corr != "" {
			m.SetHeader(message.HeaderCorrelationID, corr)
		}
		if m.Headers[message.HeaderCausationID] == "" && consumed.ID != "" {
			m.SetHeader(message.HeaderCausationID, consumed.ID)
		}
	}
}
