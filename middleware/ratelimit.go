package middleware

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/time/rate"

	"github.com/courierkit/courier/message"
)

// RateLimitOptions configure RateLimit.
type RateLimitOptions struct {
	// Limit is the sustained rate, in handler runs per second. Default
	// 100.
	Limit rate.Limit
	// Burst is how many runs may start at once above the rate. Default 1.
	Burst int
	// Limiter, when set, is used instead of a new limiter from Limit and
	// Burst: pass the same *rate.Limiter to several RateLimit calls to
	// share one budget across routes (for a downstream they all call).
	// One RateLimit middleware value used for several routes (router-level
	// middleware) shares its limiter too.
	Limiter *rate.Limiter
}

// RateLimit makes each handler run wait for a token of a
// golang.org/x/time/rate limiter. Placed inside Retry it limits every
// attempt (what protects a downstream); outside, every delivery. A wait
// that cannot finish before ctx ends returns ctx's error at once (the
// message is nacked); waiting holds the message and a concurrency slot.
// When the Router begins to drain (Shutdown), waiting messages stop
// waiting, give their tokens back and are nacked with ErrDraining, so a
// low rate does not hold the shutdown up.
func RateLimit(opts RateLimitOptions) message.Middleware {
	lim := opts.Limiter
	unlimited := false
	if lim == nil {
		l, b := opts.Limit, opts.Burst
		if l <= 0 {
			l = 100
		}
		if b <= 0 {
			b = 1
		}
		lim = rate.NewLimiter(l, b)
		// A private limiter's limit never changes: an infinite one
		// never makes anyone wait.
		unlimited = l == rate.Inf
	}
	return func(next message.Handler) message.Handler {
		return message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			// Fast path, same outcome as Wait: a live ctx and a token
			// available now (always, at rate.Inf). It asks ctx for Err,
			// not Done, so a lazily made context (Retry's, Timeout's)
			// needs no channel. Otherwise Wait decides: it fails at once
			// for a burst of 0, waits, or gives up at ctx's end.
			if err := ctx.Err(); err != nil {
				return err
			}
			if !unlimited && !lim.Allow() {
				if err := wait(ctx, lim); err != nil {
					return err
				}
			}
			return next.Handle(ctx, m)
		})
	}
}

var (
	// ErrDraining is the error of a message that RateLimit stopped
	// waiting for because the Router began to drain: it is nacked and
	// redelivered later.
	ErrDraining = errors.New("middleware: router draining; message handed back")
	// ErrRateLimited is matched by the error of a message that could not
	// get a rate-limit token before its context's deadline. Like
	// ErrBreakerOpen it is a refusal, not a failure: it is not retried in
	// process, not counted towards dead-lettering, and does not trip a
	// breaker.
	ErrRateLimited = errors.New("middleware: no rate-limit token before the deadline")
)

// wait is lim.Wait(ctx) that also ends when the Router drains.
func wait(ctx context.Context, lim *rate.Limiter) error {
	drain := draining(ctx)
	if drain == nil {
		if err := lim.Wait(ctx); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("%w: %v", ErrRateLimited, err)
		}
		return nil
	}
	select {
	case <-drain:
		return ErrDraining
	default:
	}
	now := time.Now()
	r := lim.ReserveN(now, 1)
	if !r.OK() {
		return fmt.Errorf("%w: a burst of %d cannot give a token", ErrRateLimited, lim.Burst())
	}
	d := r.DelayFrom(now)
	if d <= 0 {
		return nil
	}
	if dl, ok := ctx.Deadline(); ok && dl.Sub(now) < d {
		r.CancelAt(now)
		return fmt.Errorf("%w: waiting %v would pass the context's deadline", ErrRateLimited, d)
	}
	if sleep(ctx, d) {
		return nil
	}
	r.Cancel() // give the token back
	if err := ctx.Err(); err != nil {
		return err
	}
	return ErrDraining
}
