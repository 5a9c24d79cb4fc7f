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
// a minimum when it is at most MaxInterval; a longer one ends the
// in-process retries and the error goes out with its delay (Redelivery or
// the transport nack with it), so a delivery is not held past its lease.
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
// Contexts: every attempt runs under a fresh context derived from the one
// Retry was called with and cancelled when the attempt returns (goroutines
// an attempt started under it stop with it); a per-attempt deadline from
// Timeout (placed inside Retry) or from AttemptTimeout is fresh for each
// attempt; a Timeout placed outside Retry bounds all attempts together.
// No attempt ever starts with a context an earlier attempt ended — the bug
// of ThreeDotsLabs/watermill#467, where a timeout's cancelled context
// leaked into the next retry (there the context is stored in the message;
// here it is passed). The derived context costs one small allocation; its
// channel and timer are created only if the handler asks for Done.
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

// attempt runs one attempt under a context of its own, cancelled when the
// attempt returns (so work it started under that context stops) and, with
// a timeout, ending at its deadline.
func attempt(ctx context.Context, next message.Handler, m *message.Message, timeout time.Duration) error {
	var dl time.Time
	if timeout > 0 {
		dl = time.Now().Add(timeout)
	}
	actx := newDeadlineCtx(ctx, dl)
	err := next.Handle(actx, m)
	if timeout > 0 {
		err = timeoutResult(ctx, actx, timeout, err)
	}
	actx.release()
	return err
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
			if d > o.MaxInterval {
				// Longer than any backoff of ours: not for holding the
				// delivery in process (past AckWait, past an
				// idempotency claim). Hand it back with its delay.
				return err
			}
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
