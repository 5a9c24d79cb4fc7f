package middleware

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/courierkit/courier/message"
)

// ErrTimeout is matched (errors.Is) by the error Timeout returns when the
// handler overran its deadline.
var ErrTimeout = errors.New("middleware: handler timed out")

const defaultTimeout = 30 * time.Second

// TimeoutOptions configure Timeout.
type TimeoutOptions struct {
	// Timeout bounds one handler run. Default 30s (the default AckWait:
	// a handler that runs longer risks redelivery on transports without
	// lease extension).
	Timeout time.Duration
}

// TimeoutError is what Timeout returns when the handler's context hit
// the deadline; it wraps the handler's own error (usually
// context.DeadlineExceeded) and matches ErrTimeout.
type TimeoutError struct {
	Timeout time.Duration
	Err     error
}

func (e *TimeoutError) Error() string {
	return fmt.Sprintf("middleware: handler timed out after %v: %v", e.Timeout, e.Err)
}
func (e *TimeoutError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrTimeout) true.
func (e *TimeoutError) Is(target error) bool { return target == ErrTimeout }

// Timeout runs the handler with a context that ends after opts.Timeout
// (context.WithTimeout semantics; the runtime timer is only created when
// the handler asks for the context's Done channel, so fast handlers that
// never wait on it pay no timer, and not even then when the parent's
// deadline comes first: context.WithDeadline then makes a plain cancel
// context). The context itself stays, one small allocation and a clock
// read per run: it is cancelled when the handler returns, which a
// handler's goroutines may rely on.
// The handler must return when its context ends: Timeout does not abandon
// a running handler (returning while it still works on the message would
// let the message be acked or redelivered under it). When the deadline
// was hit and the handler failed, the error is a *TimeoutError, which is
// retryable (not Permanent) and counts as a failure for CircuitBreaker.
//
// Placed inside Retry, every attempt gets its own deadline; outside
// Retry, one deadline bounds all attempts (see Retry).
func Timeout(opts TimeoutOptions) message.Middleware {
	d := opts.Timeout
	if d <= 0 {
		d = defaultTimeout
	}
	return func(next message.Handler) message.Handler {
		return message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			tctx := newDeadlineCtx(ctx, time.Now().Add(d))
			err := next.Handle(tctx, m)
			res := timeoutResult(ctx, tctx, d, err)
			tctx.release()
			return res
		})
	}
}

// timeoutResult wraps err in a *TimeoutError when tctx's own deadline (not
// the parent's end) stopped the handler.
func timeoutResult(parent, tctx context.Context, d time.Duration, err error) error {
	if err == nil || parent.Err() != nil || !errors.Is(tctx.Err(), context.DeadlineExceeded) {
		return err
	}
	if message.IsPermanent(err) {
		return err
	}
	return &TimeoutError{Timeout: d, Err: err}
}
