// Package message is courier's message model, shared by every transport and
// middleware: Message, Header and the well-known header names, the Handler
// shape (Handler, HandlerFunc, Middleware, Chain), the error markers that
// steer redelivery (Permanent, RetryAfter), and typed payload codecs
// (Encode, Decode).
//
// # Message
//
// A Message has an ID (a UUIDv7 from NewID when the publisher leaves it
// empty; IDs sort by creation time), a Key (the ordering and partition key),
// string Headers and a []byte Payload. These four round-trip byte-exact on
// every transport. A received message also has its Topic, the delivery
// Attempt (1 on first delivery, 0 when the broker does not count) and the
// broker's Time, and As reaches the transport's native message.
//
// # Handlers and errors
//
// A Handler returns nil to ack. Any other error nacks, and the transport
// delivers the message again; RetryAfter(err, d) asks for a delay before
// that. Permanent(err) means retrying cannot help: retry middleware gives up
// at once and the message goes to the dead-letter path, with err's text as
// the reason. Decode marks undecodable payloads Permanent, so poison
// messages never loop.
//
// Middleware is func(Handler) Handler. Chain(h, a, b) runs a, then b, then
// h: the first middleware is the outermost, as with net/http stacks.
//
// Code that runs a handler chain for a received message (the router) hands
// the chain per-delivery state with Message.Bind: the returned context
// lives inside the Message, so it costs no allocation, and BoundFrom reads
// it back. Message.SetAs is the matching hook for transports.
//
// # Headers and CloudEvents
//
// The Header* constants map one to one onto CloudEvents context attributes
// in binary content mode (see headers.go), and correlation and causation
// IDs follow the CloudEvents correlation extension. FollowUp builds a
// message caused by another: new ID, same correlation ID, causation ID set
// to the cause's ID.
//
// The package imports only the standard library.
package message
