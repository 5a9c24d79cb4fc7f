// Package transport is courier's broker contract: what every adapter
// implements, the URL registry that picks an adapter, and the shared pieces
// adapters are built from.
//
// # Contract
//
// A Conn publishes (Publisher), subscribes (Subscriber), declares groups,
// reports its Capabilities, drains on Shutdown and reaches its native
// client through As. Open returns one by URL:
//
//	import _ "github.com/courierkit/courier/transport/nats"
//	c, err := transport.Open(ctx, "nats://127.0.0.1:4222")
//
// Publish(ctx, topic, msgs...) returns once the broker has taken every
// message; a message the broker cannot carry fails the whole call with a
// *LimitError before anything is sent. Subscribe blocks, like
// http.Server.Serve, until its ctx ends (it returns ctx.Err()) or the Conn
// closes (ErrClosed).
//
// # Delivery semantics
//
// At-least-once. A message is acked only after its handler returned nil; a
// handler error nacks it (redelivered, after message.RetryAfter's delay
// where Capabilities.DelayedNack); a message.Permanent error (or reaching
// SubscribeOptions.MaxAttempts) sends it to SubscribeOptions.DeadLetterTopic
// with courier-dlq-* headers, and the original is acked only once that
// publish succeeded. Groups compete within and fan out across; a declared
// group keeps messages while none of its subscribers runs. Per-key order
// holds with SubscribeOptions.OrderedByKey where Capabilities.OrderedByKey.
// In-flight work is bounded by MaxInFlight. Handlers run with a context that
// ends when Subscribe's ctx ends; acks and dead-letter publishes use
// context.WithoutCancel so they land during shutdown.
//
// # Decisions the design brief left open
//
//   - Subscribe blocks rather than returning a subscription handle: one
//     goroutine per subscription is the caller's choice, and the error it
//     returns is the subscription's fate (as http.Server.Serve).
//   - Declare is part of Conn: "publish before any handler runs, to a
//     declared group" needs a way to declare without consuming on every
//     broker.
//   - Name rule: topic and group names are [A-Za-z0-9._-], starting with a
//     letter or digit (CheckName), the intersection that all six brokers
//     accept; adapters may narrow it and say so.
//   - StartNew is the default; StartOldest needs Capabilities.Replay.
//   - A Permanent failure with no DeadLetterTopic is handed to the broker's
//     native mechanism when the adapter's Acker is a Terminator (JetStream
//     Term, RabbitMQ reject to a DLX), else acked, dropped and logged at
//     Error level: "never redelivered" wins over keeping it.
//   - Defaults: Concurrency 1, MaxInFlight 64, AckWait 30s, NackDelay 0.
//
// # Writing an adapter
//
// Register the scheme in init with Register; read options with Query (an
// unknown parameter is an error naming the accepted ones); start Publish
// with PreparePublish (names, generated IDs, Limits); check Subscribe with
// CheckSubscribe; hand fetched messages to a Dispatcher with an Acker and
// let it run handlers, bound in-flight work, keep per-key order and settle
// each message exactly once; declare Capabilities honestly; pass the
// conformance suite (package conformance).
//
// # Credentials
//
// Open never puts credentials in errors: the URL is shown through Redact
// (user-info and secret-looking query values replaced with "xxxxx"), and
// adapter errors are scrubbed of the URL's secrets. RedactSecrets helps
// adapters do the same in their logs.
//
// # Errors
//
// ErrClosed after Close or Shutdown; *LimitError (matches ErrLimit);
// *NameError (matches ErrInvalidName); ErrUnsupported for a missing
// capability; *URLError from Open (ErrUnknownScheme for an unregistered
// scheme). Context errors come back unwrapped.
package transport
