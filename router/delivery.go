package router

import (
	"context"
	"unsafe"

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
	route   any // *route
}

// A Delivery is the router's message.Bound seen through its own type: the
// router binds each message with its route as the Bound's Value, and
// FromContext converts the *message.Bound the message holds into a
// *Delivery, so that building a handler's context allocates nothing. The
// two types must keep the same layout (TestDeliveryLayout).
func asDelivery(b *message.Bound) *Delivery { return (*Delivery)(unsafe.Pointer(b)) }

type deliveryKey struct{}

// FromContext returns the Delivery of the message whose handler ctx
// belongs to, or nil outside a Router.
func FromContext(ctx context.Context) *Delivery {
	b := message.BoundFrom(ctx, deliveryKey{})
	if b == nil {
		return nil
	}
	return asDelivery(b)
}

// NewContext returns ctx carrying a Delivery of m for a route with the given
// topic, group and publisher, as the Router makes for each message. It is
// for tests of middleware and for code that runs handlers outside a Router.
func NewContext(ctx context.Context, m *message.Message, topic, group string, pub transport.Publisher) context.Context {
	rt := &route{name: routeName(topic, group), topic: topic, group: group, pub: pub, draining: make(chan struct{}), id: newRouteID()}
	return bind(ctx, m, rt)
}

// bind is the handler's context of m on rt.
func bind(ctx context.Context, m *message.Message, rt *route) context.Context {
	if m == nil { // a transport's bug, for the handler chain to report
		c := new(message.Message).Bind(ctx, deliveryKey{}, rt)
		message.BoundFrom(c, deliveryKey{}).Message = nil
		return c
	}
	return m.Bind(ctx, deliveryKey{}, rt)
}

func (d *Delivery) rt() *route { return d.route.(*route) }

// Route is the route's name (Route.Name).
func (d *Delivery) Route() string { return d.rt().name }

// RouteID is unique to this route of this Router in this process (a random
// per-process prefix and a counter, made when the route was added): what
// middleware scopes per-subscription state by where no consumer group
// does (a private subscription, which every process receives in full).
func (d *Delivery) RouteID() string { return d.rt().id }

// Topic is the route's topic.
func (d *Delivery) Topic() string { return d.rt().topic }

// Group is the route's consumer group ("" for a private subscription).
func (d *Delivery) Group() string { return d.rt().group }

// Publisher is the router's publisher as configured (Options.Publisher),
// without the correlation decoration of PublisherFrom: dead-letter and
// redelivery copies go through it unchanged. Nil when the router has none.
// It is the application's connection: do not Close it.
func (d *Delivery) Publisher() transport.Publisher { return d.rt().pub }

// Capabilities are the subscriber's capabilities, when it declares them
// (it implements transport.Conn or a Capabilities method); ok is false
// otherwise.
func (d *Delivery) Capabilities() (caps transport.Capabilities, ok bool) {
	return d.rt().caps, d.rt().hasCaps
}

// Draining is closed once the router began a graceful shutdown: a handler
// that is waiting (a backoff between retries, a rate limit) should stop
// waiting and return its error so the message is nacked and redelivered
// later, instead of holding the shutdown up.
func (d *Delivery) Draining() <-chan struct{} { return d.rt().draining }

// IsDraining reports whether Draining is closed.
func (d *Delivery) IsDraining() bool {
	select {
	case <-d.rt().draining:
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
	if d == nil || d.rt().pub == nil {
		return nil
	}
	return followUpPublisher{d.rt().pub}
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
