package middleware

import (
	"context"
	"math/rand/v2"
	"time"

	"github.com/cenkalti/backoff/v5"

	"github.com/courierkit/courier/message"
)

// RetryOptions configure Retry. The zero value retries twice (three
// attempts) with exponential backoff from 100ms, doubling, capped at 10s,
// with full jitter.
type RetryOptions struct {
	// MaxAttempts is how many times the handler runs for one delivery,
	// the first included. Default 3; 1 disables retrying.
	MaxAttempts int
	// InitialInterval is the cap of the first backoff. Default 100ms
	// (backoff's InitialInterval).
	InitialInterval time.Duration
	// MaxInterval caps every backoff. Default 10s (backoff's MaxInterval).
	MaxInterval time.Duration
	// Multiplier grows the cap after each attempt. Default 2.
	Multiplier float64
	// MaxElapsedTime stops retrying once the next attempt would start
	// later than this after the first one began; the last error is
	// returned. Default 0: only MaxAttempts bounds it. Keep attempts ×
	// (handler time + backoff) below the subscription's AckWait on
	// transports without lease extension.
	MaxElapsedTime time.Duration
	// AttemptTimeout, when set, runs each attempt under its own
	// context.WithTimeout (as Timeout placed inside Retry would).
	// Default 0: no per-attempt deadline from Retry.
	AttemptTimeout time.Duration
	// BackOff, when set, makes the backoff policy for one delivery
	// (called once per failing delivery); its NextBackOff values are used
	// as they are (no extra jitter) and backoff.Stop ends the retries.
	// InitialInterval, MaxInterval and Multiplier are then ignored.
	BackOff func() backoff.BackOff
	// ShouldRetry, when set, is asked after each failure that Retry would
	// otherwise retry; false returns the error at once.
	ShouldRetry func(error) bool
	// OnRetry, when set, is called before each wait with the attempt that
	// just failed (1 for the first), its error and the wait.
	OnRetry func(ctx context.Context, m *message.Message, attempt int, err error, wait time.Duration)
}

func (o RetryOptions) defaults() RetryOptions {
	if o.MaxAttempts <= 0 {
		o.MaxAttempts = 3
	}
	if o.InitialInterval <= 0 {
		o.InitialInterval = 100 * time.Millisecond
	}
	if o.MaxInterval <= 0 {
		o.MaxInterval = 10 * time.Second
	}
	if o.MaxInterval < o.InitialInterval {
		o.MaxInterval = o.InitialInterval
	}
	if o.Multiplier < 1 {
		o.Multiplier = 2
	}
	return o
}

// Retry runs the handler again, in process, when it fails: up to
// MaxAttempts runs per delivery, waiting between them an exponential
// backoff with full jitter (a uniformly random wait between 0 and
// min(MaxInterval, InitialInterval·Multiplierⁿ), the policy of
// cenkalti/backoff/v5's ExponentialBackOff with the jitter applied over the
// whole interval). A wait asked for with message.RetryAfter is honoured as
// a minimum.
//
// It does not retry:
//   - a message.Permanent error (returned at once, for DeadLetter or the
//     transport's dead-letter path);
//   - ErrBreakerOpen and ErrInProgress (the message is not at fault);
//   - anything once the delivery's context ended: the last error is
//     returned and the transport nacks the message;
//   - anything once the Router drains (Shutdown): the wait is cut short
//     and the last error returned, so the message is nacked and
//     redelivered later instead of holding the shutdown up.
//
// Contexts: every attempt gets the context Retry was called with, never
// one an earlier attempt ended, so a per-attempt deadline from Timeout
// (placed inside Retry) or from AttemptTimeout is fresh for each attempt;
// a Timeout placed outside Retry bounds all attempts together. (This is
// the bug of ThreeDotsLabs/watermill#467, where a timeout's cancelled
// context leaked into the next retry; it cannot happen here because the
// context is passed, not stored in the message.)
//
// Retry sits inside Redelivery, DeadLetter, Idempotency and
// CircuitBreaker: they see one outcome per delivery. The breaker then
// counts a delivery that failed after all retries as one failure.
func Retry(opts RetryOptions) message.Middleware {
	o := opts.defaults()
	return func(next message.Handler) message.Handler {
		return message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			var start time.Time
			if o.MaxElapsedTime > 0 {
				start = time.Now()
			}
			err := attempt(ctx, next, m, o.AttemptTimeout)
			if err == nil || o.MaxAttempts <= 1 {
				return err
			}
			return o.retry(ctx, next, m, err, start)
		})
	}
}

func attempt(ctx context.Context, next message.Handler, m *message.Message, timeout time.Duration) error {
	if timeout <= 0 {
		return next.Handle(ctx, m)
	}
	actx := newDeadlineCtx(ctx, time.Now().Add(timeout))
	defer actx.release()
	return timeoutResult(ctx, actx, timeout, next.Handle(actx, m))
}

func (o *RetryOptions) retry(ctx context.Context, next message.Handler, m *message.Message, err error, start time.Time) error {
	var b backoff.BackOff
	if o.BackOff != nil {
		b = o.BackOff()
	} else {
		b = &fullJitter{exp: backoff.ExponentialBackOff{
			InitialInterval: o.InitialInterval, MaxInterval: o.MaxInterval, Multiplier: o.Multiplier,
		}}
	}
	n := noteOf(ctx)
	for tries := 1; ; tries++ {
		if n != nil {
			n.tries = tries
		}
		if tries >= o.MaxAttempts || !o.retryable(ctx, err) {
			return err
		}
		wait := b.NextBackOff()
		if wait == backoff.Stop {
			return err
		}
		if d, ok := message.RetryDelay(err); ok && d > wait {
			wait = d
		}
		if o.MaxElapsedTime > 0 && time.Since(start)+wait > o.MaxElapsedTime {
			return err
		}
		if o.OnRetry != nil {
			o.OnRetry(ctx, m, tries, err, wait)
		}
		if !sleep(ctx, wait) {
			return err
		}
		if err = attempt(ctx, next, m, o.AttemptTimeout); err == nil {
			if n != nil {
				n.tries = tries + 1
			}
			return nil
		}
	}
}

func (o *RetryOptions) retryable(ctx context.Context, err error) bool {
	if ctx.Err() != nil || message.IsPermanent(err) || deferred(err) {
		return false
	}
	if o.ShouldRetry != nil && !o.ShouldRetry(err) {
		return false
	}
	return true
}

// fullJitter draws each wait uniformly from [0, cap], the cap growing as
// backoff's ExponentialBackOff (without its own randomisation) grows it.
type fullJitter struct{ exp backoff.ExponentialBackOff }

func (f *fullJitter) NextBackOff() time.Duration {
	c := f.exp.NextBackOff()
	if c <= 0 {
		return 0
	}
	return rand.N(c + 1)
}

func (f *fullJitter) Reset() { f.exp.Reset() }
