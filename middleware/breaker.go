package middleware

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/sony/gobreaker/v2"

	"github.com/courierkit/courier/message"
)

// BreakerOptions configure a Breaker (sony/gobreaker/v2 Settings, with
// courier's defaults).
type BreakerOptions struct {
	// Name names the breaker in hooks, errors and health reports.
	// Default "courier".
	Name string
	// ConsecutiveFailures opens the breaker after this many failures in
	// a row while closed. Default 5. Ignored when ReadyToTrip is set.
	ConsecutiveFailures uint32
	// ReadyToTrip, when set, decides instead (gobreaker's ReadyToTrip,
	// called with the counts after each failure while closed).
	ReadyToTrip func(gobreaker.Counts) bool
	// Interval clears the closed-state counts periodically (gobreaker's
	// Interval). Default 0: counts are cleared only by state changes, and
	// the consecutive-failure count by any success.
	Interval time.Duration
	// Timeout is how long the breaker stays open before it lets probes
	// through (gobreaker's Timeout). Default 30s.
	Timeout time.Duration
	// MaxRequests is how many messages run while half-open; that many
	// successes in a row close the breaker, one failure opens it again
	// (gobreaker's MaxRequests). Default 1.
	MaxRequests uint32
	// OpenDelay is the redelivery delay (message.RetryAfter) of a message
	// refused while the breaker is open or half-open. Default Timeout.
	OpenDelay time.Duration
	// IsFailure, when set, decides which handler errors count as
	// failures; the exclusions below apply first. An error it does not
	// count is neutral, like the exclusions: it neither counts as a
	// failure nor as a success (it does not reset the consecutive-failure
	// count, nor close a half-open breaker). Default: every error.
	IsFailure func(error) bool
	// OnStateChange is called on every state change (gobreaker's
	// OnStateChange). It runs synchronously while the breaker holds its
	// lock: it must not call the Breaker's methods.
	OnStateChange func(name string, from, to gobreaker.State)
}

// Breaker is a circuit breaker for handlers. Create it with NewBreaker
// to share one breaker among routes (a downstream they all call) or to
// expose its state to health checks; CircuitBreaker gives each handler it
// wraps a private one.
type Breaker struct {
	cb        *gobreaker.CircuitBreaker[struct{}]
	name      string
	delay     time.Duration
	isFailure func(error) bool
}

// errExcluded tells gobreaker an outcome it must not count.
var errExcluded = errors.New("excluded")

// errFailure tells gobreaker an outcome that counts as a failure.
var errFailure = errors.New("failure")

// NewBreaker returns a Breaker.
func NewBreaker(opts BreakerOptions) *Breaker {
	o := opts
	if o.Name == "" {
		o.Name = "courier"
	}
	if o.ConsecutiveFailures == 0 {
		o.ConsecutiveFailures = 5
	}
	if o.Timeout <= 0 {
		o.Timeout = 30 * time.Second
	}
	if o.MaxRequests == 0 {
		o.MaxRequests = 1
	}
	if o.OpenDelay <= 0 {
		o.OpenDelay = o.Timeout
	}
	trip := o.ReadyToTrip
	if trip == nil {
		n := o.ConsecutiveFailures
		trip = func(c gobreaker.Counts) bool { return c.ConsecutiveFailures >= n }
	}
	st := gobreaker.Settings{
		Name:          o.Name,
		MaxRequests:   o.MaxRequests,
		Interval:      o.Interval,
		Timeout:       o.Timeout,
		ReadyToTrip:   trip,
		OnStateChange: o.OnStateChange,
		IsExcluded:    func(err error) bool { return err == errExcluded },
	}
	return &Breaker{cb: gobreaker.NewCircuitBreaker[struct{}](st), name: o.Name, delay: o.OpenDelay, isFailure: o.IsFailure}
}

// CircuitBreaker returns middleware that gives each handler it wraps a new
// Breaker made with opts: used as router-level middleware, every route
// gets its own breaker, so a failing downstream of one route does not stop
// the others. To share one breaker among routes, or to add its Check to
// the router's health, use NewBreaker(opts).Middleware() instead.
func CircuitBreaker(opts BreakerOptions) message.Middleware {
	return func(next message.Handler) message.Handler { return NewBreaker(opts).Middleware()(next) }
}

// BreakerOpenError is the error for a message refused by an open or
// half-open breaker. It matches ErrBreakerOpen, and carries a redelivery
// delay of OpenDelay (message.RetryDelay).
type BreakerOpenError struct {
	Name  string
	State gobreaker.State
}

func (e *BreakerOpenError) Error() string {
	return fmt.Sprintf("middleware: circuit breaker %q is %s; message not processed", e.Name, e.State)
}

// Is makes errors.Is(err, ErrBreakerOpen) true.
func (e *BreakerOpenError) Is(target error) bool { return target == ErrBreakerOpen }

// Middleware returns the breaker as middleware. While the breaker is
// closed, messages run and their failures are counted; after
// ConsecutiveFailures failures it opens. While open, messages are not
// run: each is refused with a *BreakerOpenError wrapped in
// message.RetryAfter(OpenDelay), so the transport redelivers it later
// (delayed nack; where the transport cannot delay, Redelivery holds it
// in process, which in effect pauses consumption). Consumption itself is
// not paused: refusing is cheap and keeps the transport's flow control
// unchanged. After Timeout it is half-open: MaxRequests messages run as
// probes, others are refused; MaxRequests successes close it, a failure
// reopens it.
//
// Not counted as failures: a cancelled delivery context (a hard stop),
// message.Permanent errors (the message is bad, not the downstream), and
// refusals from inner middleware (ErrInProgress, ErrBreakerOpen,
// ErrDraining, ErrRateLimited). A *TimeoutError, or a delivery context
// that passed its deadline (a Timeout outside), is counted: a slow
// downstream is a failing one.
//
// Place it outside Retry, so a delivery that failed after its retries
// counts once and an open breaker does not burn retry attempts; and
// inside Idempotency and DeadLetter, which leave refused messages alone.
func (b *Breaker) Middleware() message.Middleware {
	return func(next message.Handler) message.Handler {
		return message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			var herr error
			_, berr := b.cb.Execute(func() (struct{}, error) {
				herr = next.Handle(ctx, m)
				return struct{}{}, b.classify(ctx, herr)
			})
			if berr == gobreaker.ErrOpenState || berr == gobreaker.ErrTooManyRequests {
				setOutcome(ctx, "breaker-open")
				st := gobreaker.StateOpen
				if berr == gobreaker.ErrTooManyRequests {
					st = gobreaker.StateHalfOpen
				}
				return message.RetryAfter(&BreakerOpenError{Name: b.name, State: st}, b.delay)
			}
			return herr
		})
	}
}

func (b *Breaker) classify(ctx context.Context, err error) error {
	switch {
	case err == nil:
		return nil
	case stopped(ctx), message.IsPermanent(err), deferred(err):
		return errExcluded
	case b.isFailure != nil && !b.isFailure(err):
		return errExcluded
	}
	return errFailure
}

// Name is the breaker's name.
func (b *Breaker) Name() string { return b.name }

// State is the breaker's state now (an open breaker whose Timeout passed
// reports half-open).
func (b *Breaker) State() gobreaker.State { return b.cb.State() }

// Counts are the breaker's counts in the current generation.
func (b *Breaker) Counts() gobreaker.Counts { return b.cb.Counts() }

// Check is a health check (router.Check's Func): it fails while the
// breaker is open, naming it.
func (b *Breaker) Check(context.Context) error {
	if s := b.cb.State(); s == gobreaker.StateOpen {
		return fmt.Errorf("middleware: circuit breaker %q is open", b.name)
	}
	return nil
}
