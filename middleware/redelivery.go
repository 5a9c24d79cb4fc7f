package middleware

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/router"
)

// RedeliveryMode says how Redelivery delays a redelivery.
type RedeliveryMode int

const (
	// RedeliveryAuto (the default) nacks with a delay
	// (message.RetryAfter) when the transport declares
	// Capabilities.DelayedNack, and otherwise holds the message
	// (RedeliveryHold). Outside a Router, where the transport is not
	// known, it holds: with the default MaxDelay (5m) a hold can outlast
	// a transport's AckWait (30s by default), after which the broker
	// redelivers the held message elsewhere; outside a Router set
	// RedeliveryNack, or MaxDelay below AckWait.
	RedeliveryAuto RedeliveryMode = iota
	// RedeliveryNack always returns the error wrapped in
	// message.RetryAfter; a transport that cannot delay redelivers at
	// once.
	RedeliveryNack
	// RedeliveryHold waits the delay in process, then returns the error
	// so the transport redelivers at once: the fallback for transports
	// that cannot delay a nack. The message keeps its concurrency slot and
	// lease while it waits (keep delays below AckWait where the transport
	// cannot extend leases); the wait ends early when the context ends or
	// the Router drains.
	RedeliveryHold
)

// RedeliveryOptions configure Redelivery. The zero value delays the first
// redelivery about 1s, doubling up to 5 minutes.
type RedeliveryOptions struct {
	// InitialDelay is the delay after the first failed delivery. Default
	// 1s.
	InitialDelay time.Duration
	// MaxDelay caps the delay. Default 5m.
	MaxDelay time.Duration
	// Multiplier grows the delay per failed delivery. Default 2.
	Multiplier float64
	// Mode: see RedeliveryMode. Default RedeliveryAuto.
	Mode RedeliveryMode
	// MaxTracked bounds how many messages' attempt counts Redelivery
	// keeps for transports that do not count deliveries (Message.Attempt
	// is 0). Default 10000.
	MaxTracked int
}

// Redelivery is the second-level retry: once the in-process retries
// (Retry, inside it) are exhausted, it hands the message back to the
// broker with a growing delay — InitialDelay·Multiplier^(attempt-1),
// capped at MaxDelay, with "equal jitter" (a uniform draw from the upper
// half, so the delay still grows) — where attempt is the delivery attempt.
//
// Attempts are counted across redeliveries: from Message.Attempt where the
// transport counts deliveries (Capabilities.AttemptCount), otherwise by
// Redelivery itself, in memory, per consumer group and message ID (a
// process restart forgets those counts); it counts only failures, not
// refusals (ErrBreakerOpen, ErrInProgress, ErrDraining, ErrRateLimited) nor
// errors after the delivery's context was cancelled (a hard stop). Redelivery sets Message.Attempt
// before calling the next handler, so DeadLetter, inside it, sees the
// count either way.
//
// A nil error, a message.Permanent error (for DeadLetter or the
// transport's dead-letter path) pass through. An error that already
// carries a delay (message.RetryAfter from the handler, ErrBreakerOpen,
// ErrInProgress) keeps its delay. The transport's own
// SubscribeOptions.NackDelay is overridden by the delay Redelivery sets.
func Redelivery(opts RedeliveryOptions) message.Middleware {
	o := opts
	if o.InitialDelay <= 0 {
		o.InitialDelay = time.Second
	}
	if o.MaxDelay <= 0 {
		o.MaxDelay = 5 * time.Minute
	}
	if o.MaxDelay < o.InitialDelay {
		o.MaxDelay = o.InitialDelay
	}
	if o.Multiplier < 1 {
		o.Multiplier = 2
	}
	tr := newTracker(o.MaxTracked)
	return func(next message.Handler) message.Handler {
		return message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			var key trackKey
			counting := m.Attempt <= 0
			if counting {
				// The transport does not count: we do.
				key = trackKey{groupOf(ctx, ""), m.ID}
				n, _ := tr.get(key)
				m.Attempt = n + 1
			}
			err := next.Handle(ctx, m)
			if err == nil || message.IsPermanent(err) {
				if counting {
					tr.forget(key)
				}
				return err
			}
			if counting && !deferred(err) && !stopped(ctx) {
				tr.failed(key, time.Now())
			}
			delay, asked := message.RetryDelay(err)
			if !asked {
				delay = o.delay(m.Attempt)
			}
			if o.hold(ctx) {
				sleep(ctx, delay)
				return err
			}
			if asked {
				return err
			}
			return message.RetryAfter(err, delay)
		})
	}
}

func (o *RedeliveryOptions) delay(attempt int) time.Duration {
	d := float64(o.InitialDelay)
	for i := 1; i < attempt && d < float64(o.MaxDelay); i++ {
		d *= o.Multiplier
	}
	if d > float64(o.MaxDelay) {
		d = float64(o.MaxDelay)
	}
	half := time.Duration(d / 2)
	return half + rand.N(time.Duration(d)-half+1)
}

// hold reports whether to wait in process rather than nack with a delay.
func (o *RedeliveryOptions) hold(ctx context.Context) bool {
	switch o.Mode {
	case RedeliveryNack:
		return false
	case RedeliveryHold:
		return true
	}
	if d := router.FromContext(ctx); d != nil {
		if caps, ok := d.Capabilities(); ok {
			return !caps.DelayedNack
		}
	}
	return true
}
