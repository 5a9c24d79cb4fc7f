package message

import (
	"context"
	"maps"
	"sync/atomic"
	"time"
)

// Header carries string metadata beside the payload. Keys are case-sensitive
// and travel byte-exact on every transport; a transport that cannot carry a
// header (too many, too large, a name its broker rejects) fails Publish with
// a clear error instead of dropping it.
type Header map[string]string

// Get returns the value of key, or "" when it is absent or h is nil.
func (h Header) Get(key string) string { return h[key] }

// Clone returns a copy of h (nil for nil).
func (h Header) Clone() Header { return maps.Clone(h) }

// Message is the unit every transport publishes and delivers.
//
// The first four fields are what a publisher sets; they round-trip
// byte-exact through every transport. The fields after them are filled in
// by a transport on a received message and ignored on publish.
//
// A received message's Payload may be shared with the transport's own
// bookkeeping (the in-memory transport keeps it for redelivery): treat it as
// read-only, and copy it before changing it. Headers of a received message
// are the handler's own copy.
type Message struct {
	// ID identifies the message across redeliveries and is the key of
	// de-duplication (idempotency stores, NATS Nats-Msg-Id, SQS FIFO
	// dedup id). Publish fills an empty ID with a new UUIDv7 (NewID).
	ID string
	// Key is the ordering and partition key: the Kafka record key, the
	// Pub/Sub ordering key, the SQS FIFO message group, and the unit of
	// per-key ordering on mem, NATS and RabbitMQ. Empty means unordered.
	Key string
	// Headers are string metadata. See the Header* constants for the
	// well-known names.
	Headers Header
	// Payload is the body, opaque to courier. Empty and nil are both
	// delivered as an empty payload.
	Payload []byte

	// Topic is the topic the message was received from.
	Topic string
	// Attempt is the delivery attempt, 1 for the first delivery, where
	// the transport counts deliveries; 0 when it cannot tell.
	Attempt int
	// Time is when the broker stored the message; zero when the broker
	// does not say.
	Time time.Time

	native Native
	bound  binding // see Bind
}

// New returns a message with a fresh ID and the given payload.
func New(payload []byte) *Message {
	return &Message{ID: NewID(), Payload: payload}
}

// Header returns the value of a header, or "".
func (m *Message) Header(key string) string { return m.Headers[key] }

// SetHeader sets a header, allocating the map when needed.
func (m *Message) SetHeader(key, value string) {
	if m.Headers == nil {
		m.Headers = make(Header, 4)
	}
	m.Headers[key] = value
}

// Copy returns a deep copy of the publishable part of m (ID, Key, Headers,
// Payload) plus the received fields; the copy has no native message.
func (m *Message) Copy() *Message {
	c := *m
	c.Headers = m.Headers.Clone()
	if m.Payload != nil {
		c.Payload = append([]byte(nil), m.Payload...)
	}
	c.native = nil
	c.bound = binding{}
	return &c
}

// As reaches the transport's native message behind a received message
// (go-cloud's As idiom): pass a pointer to the native type, e.g.
// *jetstream.Msg for NATS or *amqp091.Delivery for RabbitMQ; each
// transport's package doc lists its targets. It reports whether target was
// set.
func (m *Message) As(target any) bool {
	if m == nil || m.native == nil {
		return false
	}
	return m.native.As(target)
}

// Native is what a transport attaches to a received message so that
// Message.As reaches the broker's own message.
type Native interface {
	// As sets target (a pointer to a native type) and reports whether it
	// could.
	As(target any) bool
}

// SetNative is for transports: it installs what As calls. A transport
// that passes the per-delivery value it already has allocates nothing
// here (SetAs needs a closure, which usually costs an allocation per
// message). nil removes it.
func (m *Message) SetNative(n Native) { m.native = n }

// SetAs is for transports: it installs the function As calls. SetNative
// does the same without a closure.
func (m *Message) SetAs(fn func(target any) bool) {
	if fn == nil {
		m.native = nil
		return
	}
	m.native = asFunc(fn)
}

type asFunc func(target any) bool

func (f asFunc) As(target any) bool { return f(target) }

// Handler handles one received message. A nil error acks it; any other
// error nacks it so the transport delivers it again (after a delay where the
// transport can delay, see RetryAfter); an error marked Permanent is never
// retried and goes to the dead-letter path.
//
// The context ends when the subscription stops hard (its ctx is cancelled or
// the transport is closed) or when a graceful shutdown runs out of time.
type Handler interface {
	Handle(ctx context.Context, m *Message) error
}

// HandlerFunc adapts a function to Handler.
type HandlerFunc func(ctx context.Context, m *Message) error

// Handle calls f(ctx, m).
func (f HandlerFunc) Handle(ctx context.Context, m *Message) error { return f(ctx, m) }

// Middleware wraps a Handler with behaviour of its own (retry, timeout,
// tracing...).
type Middleware func(Handler) Handler

// Chain wraps h in mw. The first middleware is the outermost: it sees the
// message first and the result last, as with net/http middleware stacks.
func Chain(h Handler, mw ...Middleware) Handler {
	for i := len(mw) - 1; i >= 0; i-- {
		if mw[i] != nil {
			h = mw[i](h)
		}
	}
	return h
}

// Bound is per-delivery state that the code running a received message's
// handlers (a router) attaches to the message's context with Bind.
type Bound struct {
	// Message is the message the state belongs to.
	Message *Message
	// Value is the binder's state.
	Value any
}

// Bind returns a context derived from parent whose Value(key) is a *Bound
// of m and val (BoundFrom reads it); every other key is looked up in
// parent. It is for code that runs handlers for a received message, such
// as a router handing its middleware the delivery's route: the context and
// its Bound live inside m, so Bind allocates nothing the first time it is
// called for a message. A later call for the same message (a transport
// that hands the same *Message over again) allocates a new context, so a
// context a handler kept from an earlier call keeps its own Bound. The
// context stays valid as long as m is reachable. key must be comparable,
// as for context.WithValue.
func (m *Message) Bind(parent context.Context, key, val any) context.Context {
	if parent == nil {
		panic("message: Bind with a nil parent context")
	}
	c := &m.bound
	if !atomic.CompareAndSwapUint32(&c.used, 0, 1) {
		c = &binding{used: 1}
	}
	c.Context, c.key, c.b = parent, key, Bound{Message: m, Value: val}
	return c
}

// BoundFrom returns the Bound that the innermost Bind with key attached to
// ctx, or nil.
func BoundFrom(ctx context.Context, key any) *Bound {
	b, _ := ctx.Value(key).(*Bound)
	return b
}

// binding is the context Bind returns; a Message holds one.
type binding struct {
	context.Context
	key  any
	b    Bound
	used uint32 // claimed by Bind (atomic)
}

func (c *binding) Value(key any) any {
	if key == c.key {
		return &c.b
	}
	return c.Context.Value(key)
}

func (c *binding) String() string { return "message.Bind(" + contextName(c.Context) + ")" }

func contextName(c context.Context) string {
	if s, ok := c.(interface{ String() string }); ok {
		return s.String()
	}
	return "context"
}
