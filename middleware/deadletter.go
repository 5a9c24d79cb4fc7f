package middleware

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/router"
	"github.com/courierkit/courier/transport"
)

// Headers DeadLetter adds beside the courier-dlq-* headers of
// transport.DeadLetterMessage (reason, topic, group, attempts, time).
const (
	// HeaderDeadLetterFirstFailure is when the message first failed, as
	// far as this process saw (RFC 3339, UTC).
	HeaderDeadLetterFirstFailure = "courier-dlq-first-failure"
	// HeaderDeadLetterLastFailure is when it failed the last time, just
	// before it was dead-lettered (RFC 3339, UTC).
	HeaderDeadLetterLastFailure = "courier-dlq-last-failure"
)

// ErrNoPublisher is returned by DeadLetter when it has to dead-letter a
// message but has no publisher (none in its options, not under a Router
// with one). The message is nacked, not lost.
var ErrNoPublisher = errors.New("middleware: dead-letter has no publisher")

// DeadLetterOptions configure DeadLetter.
type DeadLetterOptions struct {
	// Topic receives dead letters. Default: the consumed topic with
	// ".dlq" appended ("orders" → "orders.dlq").
	Topic string
	// MaxAttempts dead-letters a message whose delivery attempt
	// (Message.Attempt, counted by the transport or by Redelivery) has
	// reached this number and failed again. Default 5. It counts
	// deliveries, not handler runs: with Retry inside, the handler runs
	// at most MaxAttempts × RetryOptions.MaxAttempts times before the
	// message is dead-lettered. Permanent errors are dead-lettered at
	// the first failure regardless.
	MaxAttempts int
	// Publisher publishes the dead letters. Default: the Router's
	// (Delivery.Publisher).
	Publisher transport.Publisher
	// Group is written to the group header. Default: the Router route's
	// group.
	Group string
	// MaxTracked bounds how many messages' first-failure times are kept
	// in memory. Default 10000.
	MaxTracked int
	// Logger gets one Error line per dead letter and per failed
	// dead-letter publish. Default nil: discards.
	Logger *slog.Logger
	// PublishTimeout bounds the dead-letter publish, which ignores the
	// handler's cancellation (so it completes during shutdown) but must
	// not hang on an unreachable broker: when it runs out the message is
	// nacked. Default 30s.
	PublishTimeout time.Duration
	// OnDeadLetter, when set, is called after a message was published to
	// the dead-letter topic dlq because of err, with the handler's ctx
	// (courierotel.Instrumentation.OnDeadLetter fits). Default nil.
	OnDeadLetter func(ctx context.Context, m *message.Message, dlq string, err error)
}

// DeadLetter publishes a message that cannot be processed to a dead-letter
// topic and acks the original: when the handler's error is
// message.Permanent (a poison message: undecodable payload, rejected by a
// business rule) or when delivery attempt MaxAttempts failed. The copy
// keeps ID, Key, Payload and headers, and gets the courier-dlq-* headers:
// reason (the error text), original topic and group, attempt count, the
// time, and the first and last failure times.
//
// The original is acked (DeadLetter returns nil) only after the dead-letter
// publish succeeded; when it fails, DeadLetter returns a retryable error
// (the Permanent mark removed) and the transport nacks the message, so it
// is never lost. The publish uses context.WithoutCancel, bounded by
// PublishTimeout, so dead-lettering completes during shutdown
// (ThreeDotsLabs/watermill#636).
//
// Errors below MaxAttempts pass through unchanged, to Redelivery outside
// it. What is not the message's failure is neither dead-lettered nor
// counted: ErrBreakerOpen, ErrInProgress, ErrDraining and ErrRateLimited
// (the delivery was refused, not run), and any error once the delivery's
// context was cancelled (a hard stop: Close, Shutdown out of time; the
// message goes back to the broker) unless it is Permanent. (A context
// that passed its deadline is not a stop: that failure counts.) Such
// deliveries still raise a counting transport's Message.Attempt, so
// DeadLetter subtracts the ones it saw for the message before comparing
// with MaxAttempts: an outage that keeps the breaker open does not use up
// attempts. The subtraction has limits: the counts are this process's
// own, kept with the failure times and bounded by MaxTracked (a backlog of
// refused messages larger than that forgets the oldest counts), so
// refusals seen by another consumer process, and deliveries the Router
// itself hands back during a graceful drain (they never reach the chain),
// still count towards MaxAttempts.
//
// Interaction with the transport: DeadLetter acks what it dead-letters, so
// the transport's own dead-letter path (SubscribeOptions.DeadLetterTopic,
// MaxAttempts) never sees those messages; configure dead-lettering in one
// place. Place DeadLetter inside Redelivery (which fills Message.Attempt
// on transports that do not count) and outside Idempotency (a
// dead-lettered message is not marked processed) and Retry.
func DeadLetter(opts DeadLetterOptions) message.Middleware {
	o := opts
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 5
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if o.PublishTimeout <= 0 {
		o.PublishTimeout = 30 * time.Second
	}
	tr := newTracker(o.MaxTracked)
	return func(next message.Handler) message.Handler {
		return message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			err := next.Handle(ctx, m)
			if err == nil {
				if tr.n.Load() > 0 {
					tr.forget(trackKey{groupOf(ctx, o.Group), m.ID})
				}
				return nil
			}
			if deferred(err) {
				if m.Attempt > 0 { // a counting transport counted it
					tr.refused(trackKey{groupOf(ctx, o.Group), m.ID})
				}
				return err
			}
			if stopped(ctx) && !message.IsPermanent(err) {
				// Stopped, not failed: back to the broker. A counting
				// transport counts the delivery anyway: subtract it.
				if m.Attempt > 0 {
					tr.refused(trackKey{groupOf(ctx, o.Group), m.ID})
				}
				return err
			}
			group := groupOf(ctx, o.Group)
			key := trackKey{group, m.ID}
			now := time.Now()
			failures, first, refused := tr.failed(key, now)
			attempt := failures
			if m.Attempt > 0 {
				attempt = max(m.Attempt-refused, failures)
			}
			if !message.IsPermanent(err) && attempt < o.MaxAttempts {
				return err
			}
			pub := o.Publisher
			var d *router.Delivery
			if pub == nil {
				if d = router.FromContext(ctx); d != nil {
					pub = d.Publisher()
				}
			}
			topic := topicOf(ctx, m)
			dlq := o.Topic
			if dlq == "" {
				dlq = topic + ".dlq"
			}
			if pub == nil {
				log.ErrorContext(ctx, "courier: cannot dead-letter: no publisher; message nacked", "message_id", m.ID, "topic", topic, "error", err)
				return fmt.Errorf("%w (message %s, handler error: %v)", ErrNoPublisher, m.ID, err)
			}
			dm := transport.DeadLetterMessage(m, topic, group, err)
			dm.Headers[message.HeaderDeadLetterAttempts] = strconv.Itoa(attempt)
			dm.Headers[HeaderDeadLetterFirstFailure] = first.UTC().Format(time.RFC3339Nano)
			dm.Headers[HeaderDeadLetterLastFailure] = now.UTC().Format(time.RFC3339Nano)
			pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), o.PublishTimeout)
			perr := pub.Publish(pctx, dlq, dm)
			cancel()
			if perr != nil {
				log.ErrorContext(ctx, "courier: dead-letter publish failed; message nacked for redelivery", "message_id", m.ID, "topic", topic, "dead_letter_topic", dlq, "error", perr)
				return &DeadLetterError{Topic: dlq, MessageID: m.ID, Cause: err.Error(), Err: perr}
			}
			tr.forget(key)
			if o.OnDeadLetter != nil {
				o.OnDeadLetter(ctx, m, dlq, err)
			}
			log.ErrorContext(ctx, "courier: message dead-lettered", "message_id", m.ID, "topic", topic, "group", group, "dead_letter_topic", dlq, "attempt", attempt, "reason", err.Error())
			if n := noteOf(ctx); n != nil {
				n.outcome, n.dlq = "dead-lettered", dlq
			}
			return nil
		})
	}
}

// DeadLetterError reports a dead-letter publish that failed. It is not
// Permanent: the transport nacks the message and it comes back.
type DeadLetterError struct {
	Topic     string // the dead-letter topic
	MessageID string
	Cause     string // the handler error that asked for dead-lettering
	Err       error  // the publish error
}

func (e *DeadLetterError) Error() string {
	return fmt.Sprintf("middleware: dead-letter publish of message %s to %q failed: %v (handler error: %s)", e.MessageID, e.Topic, e.Err, e.Cause)
}
func (e *DeadLetterError) Unwrap() error { return e.Err }
