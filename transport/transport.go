package transport

import (
	"context"
	"strconv"
	"time"

	"github.com/courierkit/courier/message"
)

// Publisher sends messages to topics.
type Publisher interface {
	// Publish sends msgs to topic and returns once the broker has taken
	// every one of them (acknowledged, confirmed, stored: each transport's
	// doc says which), or with an error when any was not. Messages with an
	// empty ID get one (message.NewID) before they are sent; the caller's
	// Message is updated. A message the transport cannot carry (over a
	// limit in Capabilities().Limits) fails the whole call before anything
	// is sent, with a *LimitError. A cancelled ctx returns ctx.Err().
	// Publish copies what it needs: the caller may reuse msgs afterwards.
	Publish(ctx context.Context, topic string, msgs ...*message.Message) error
	// Close releases the connection at once; see Conn.Shutdown to drain.
	// It is idempotent and safe to call concurrently.
	Close() error
}

// Subscriber delivers messages of a topic to a handler.
type Subscriber interface {
	// Subscribe delivers topic's messages to h until ctx ends or the
	// transport is closed, and blocks until then (like http.Server.Serve).
	// A nil error from h acks the message; an error nacks it for
	// redelivery (message.RetryAfter asks for a delay); a
	// message.Permanent error dead-letters it (see
	// SubscribeOptions.DeadLetterTopic).
	//
	// When ctx ends, Subscribe stops fetching, cancels the handlers'
	// context, waits for them, lands their acks and nacks, and returns
	// ctx.Err(). After Close or Shutdown it returns ErrClosed. A
	// subscription that cannot start (bad name, broker refused) returns
	// that error at once.
	Subscribe(ctx context.Context, topic string, h message.Handler, opts SubscribeOptions) error
	Close() error
}

// Conn is a connection to one broker that publishes and subscribes. Open
// returns one; each adapter's constructor returns its concrete type, which
// implements Conn.
type Conn interface {
	Publisher
	Subscriber
	// Declare creates what a group needs on the broker (queue,
	// subscription, durable consumer) without consuming, so messages
	// published from then on are kept for the group even before any of
	// its subscribers runs. opts.Group must be set. Declaring what exists
	// is a no-op; declaring it with settings that conflict with the
	// existing ones is an error that says so.
	Declare(ctx context.Context, topic string, opts SubscribeOptions) error
	// Capabilities tells what this transport does; see Capabilities.
	Capabilities() Capabilities
	// Shutdown stops every subscription from taking new messages, lets
	// in-flight handlers finish, lands their acks, flushes buffered
	// publishes, then closes. When ctx ends first, the handlers' context
	// is cancelled, what remains is left for redelivery, and Shutdown
	// returns ctx.Err(). Subscribe calls return ErrClosed.
	Shutdown(ctx context.Context) error
	// As sets target to the adapter's native client when target points to
	// one of the types its package doc lists, and reports whether it did.
	As(target any) bool
}

// StartPosition says where a subscription without stored progress starts.
type StartPosition int

const (
	// StartNew (the default) delivers messages published from the moment
	// the group (or, with no group, the subscription) was created.
	StartNew StartPosition = iota
	// StartOldest delivers the oldest message the broker still retains
	// for the topic, where the broker retains a history (Capabilities.Replay).
	StartOldest
)

func (p StartPosition) String() string {
	switch p {
	case StartNew:
		return "new"
	case StartOldest:
		return "oldest"
	}
	return "StartPosition(?)"
}

// SubscribeOptions configure one subscription. The zero value is a
// subscription without a group, one handler at a time, new messages only.
type SubscribeOptions struct {
	// Group names the consumer group. Subscribers sharing a group compete
	// for the topic's messages; each group gets every message. A group is
	// durable: once declared (by Declare or a first Subscribe) the broker
	// keeps its messages while none of its subscribers runs. Empty means a
	// private, non-durable subscription that sees messages published while
	// it runs. Names follow CheckName.
	Group string
	// MaxInFlight bounds messages received but not yet acked or nacked,
	// across all handlers of this subscription: the prefetch count
	// (RabbitMQ's basic.qos, JetStream's MaxAckPending, Pub/Sub's
	// MaxOutstandingMessages). Default: 64, raised to Concurrency when
	// smaller.
	MaxInFlight int
	// Concurrency is how many handlers run at once for this subscription.
	// Default: 1 (one message at a time, in order of arrival).
	Concurrency int
	// OrderedByKey keeps messages of one Key in publish order: a key's next
	// message is handed out only after its previous one is settled, while
	// different keys run in parallel up to Concurrency. It needs
	// Capabilities.OrderedByKey. Default: false.
	//
	// Across a failure: mem and Kafka keep the key busy until the failed
	// message succeeds or is dead-lettered (its redelivery happens in
	// order), and SQS FIFO holds the message group while the message is
	// invisible. On NATS JetStream and RabbitMQ (the Dispatcher's per-key
	// queue) and Pub/Sub a nack settles the message: it goes back to the
	// broker and later messages of its key may run before its redelivery.
	// Where order must survive failures there, retry in process
	// (middleware.Retry) before nacking.
	OrderedByKey bool
	// Start applies when the group (or subscription) has no stored
	// position yet. Default: StartNew.
	Start StartPosition
	// AckWait is how long the broker waits for an ack before it
	// redelivers (JetStream AckWait, SQS visibility timeout, Pub/Sub ack
	// deadline). Adapters that can extend it keep a running handler's
	// message leased (InProgress, visibility/lease extension) so long
	// handlers are not redelivered. Default: 30s.
	AckWait time.Duration
	// NackDelay is the redelivery delay after a handler error that did
	// not ask for one with message.RetryAfter, where the transport can
	// delay (Capabilities.DelayedNack). Default: 0 (at once).
	NackDelay time.Duration
	// MaxAttempts dead-letters a message whose delivery attempt reaches
	// this number and still fails, where the transport counts attempts
	// (Capabilities.AttemptCount). Default: 0, no limit.
	MaxAttempts int
	// DeadLetterTopic receives messages that failed permanently
	// (message.Permanent, or MaxAttempts reached), with the
	// courier-dlq-* headers saying why; the original is acked only after
	// the dead-letter publish succeeded. Empty: such a message is dropped
	// (or handed to the broker's native dead-letter mechanism where the
	// adapter has one configured) and logged at Error level.
	DeadLetterTopic string
	// Settled, when set, is called once per delivered message after the
	// Dispatcher settled it and the broker call returned, with what was
	// done (see Settlement); instrumentation uses it to count dead
	// letters and settle failures exactly. ctx carries the values of the
	// context the handler ran with and is never cancelled (as the settle
	// calls' own). It runs on the settling goroutine, before the
	// message's in-flight slot is freed: it must be quick and must not
	// block. A panic in it is recovered and logged. Not reported: messages
	// the subscription never took (refused while stopping, left for
	// redelivery). A message an adapter cannot decode is settled with
	// Dispatcher.Reject, without the handler, and reported like any
	// dead-lettered one.
	// "Returned" is the Acker's return: where an adapter defers the
	// broker call (Pub/Sub holds a delayed nack's lease until the delay
	// passed), the hook runs when the settle was asked for.
	// Default: nil (nothing is called, at no cost: BenchmarkDispatcher
	// Deliver 54.5 ns/op before the hook existed, 54.9 after, and 61.8
	// with a hook that counts; medians of 6 interleaved runs, 2026-11-22,
	// 2-core shared machine, load 0.9-1.1:
	// go test -run '^$' -bench 'Dispatcher/Deliver' -count 6 ./transport/).
	Settled func(ctx context.Context, m *message.Message, s Settlement)
}

// Outcome is how the Dispatcher settled a message.
type Outcome int

const (
	// Acked: the handler succeeded and the message was acked.
	Acked Outcome = iota + 1
	// Nacked: the message was returned for redelivery (a handler error,
	// a stop before it ran, or a failed dead-letter publish; see
	// Settlement.DeadLetterTopic).
	Nacked
	// DeadLettered: a copy went to Settlement.DeadLetterTopic and the
	// original was acked.
	DeadLettered
	// Terminated: the message failed permanently with no dead-letter
	// topic and was handed to the broker's native "never redeliver"
	// (Terminator: JetStream Term, a RabbitMQ reject).
	Terminated
	// Dropped: the message failed permanently with no dead-letter topic
	// and no native terminate; it was acked and logged at Error level.
	Dropped
)

func (o Outcome) String() string {
	switch o {
	case Acked:
		return "ack"
	case Nacked:
		return "nack"
	case DeadLettered:
		return "dead_letter"
	case Terminated:
		return "terminate"
	case Dropped:
		return "drop"
	}
	return "Outcome(" + strconv.Itoa(int(o)) + ")"
}

// Settlement describes one settled message for SubscribeOptions.Settled.
type Settlement struct {
	// Outcome is what was done with the message.
	Outcome Outcome
	// Delay is the redelivery delay asked of the broker when Outcome is
	// Nacked (message.RetryAfter or NackDelay); 0 otherwise.
	Delay time.Duration
	// DeadLetterTopic is the topic the message was dead-lettered to when
	// Outcome is DeadLettered, or the topic a failed dead-letter publish
	// went to when Outcome is Nacked (SettleErr then holds the publish
	// error); empty otherwise.
	DeadLetterTopic string
	// HandlerErr is the handler's error (a recovered panic as an error,
	// context.Canceled for a message nacked unrun during a hard stop);
	// nil when Outcome is Acked.
	HandlerErr error
	// SettleErr is the error of the settle itself: the failed
	// dead-letter publish (joined with the nack's error if that failed
	// too), or the broker's error from Ack, Nack or Term. Nil when the
	// broker took the settle.
	SettleErr error
}

// Defaults returns o with zero fields replaced by their defaults.
func (o SubscribeOptions) Defaults() SubscribeOptions {
	if o.Concurrency <= 0 {
		o.Concurrency = 1
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = 64
	}
	if o.MaxInFlight < o.Concurrency {
		o.MaxInFlight = o.Concurrency
	}
	if o.AckWait <= 0 {
		o.AckWait = 30 * time.Second
	}
	if o.NackDelay < 0 {
		o.NackDelay = 0
	}
	return o
}
