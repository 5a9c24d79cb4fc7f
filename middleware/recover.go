package middleware

import (
	"context"
	"fmt"
	"log/slog"
	"runtime/debug"

	"github.com/courierkit/courier/message"
)

// PanicError is a handler panic turned into an error by Recover.
type PanicError struct {
	// Value is what the handler panicked with.
	Value any
	// Stack is the panicking goroutine's stack (runtime/debug.Stack).
	Stack []byte
}

func (e *PanicError) Error() string { return fmt.Sprintf("middleware: handler panicked: %v", e.Value) }

// Unwrap returns Value when it is an error (panic(err)).
func (e *PanicError) Unwrap() error {
	if err, ok := e.Value.(error); ok {
		return err
	}
	return nil
}

// RecoverOptions configure Recover.
type RecoverOptions struct {
	// Permanent marks a recovered panic message.Permanent, so it goes to
	// the dead-letter path at once instead of being retried. Default
	// false: a panic is retried like any error (it may come from a
	// transient state), and dead-lettered after the usual attempts with
	// the panic as the reason.
	Permanent bool
	// Logger, when set, gets one Error line per panic with the stack.
	// Default nil: not logged here (Logging logs the error).
	Logger *slog.Logger
}

// Recover turns a handler panic into a *PanicError carrying the panic
// value and the stack. Place it innermost (just around the handler) so
// that Retry, CircuitBreaker and DeadLetter treat a panic as the error it
// is; the Router and the transport's Dispatcher also recover panics as a
// safety net, so a panic never takes the process down, but their errors
// carry no stack.
func Recover(opts RecoverOptions) message.Middleware {
	return func(next message.Handler) message.Handler {
		return message.HandlerFunc(func(ctx context.Context, m *message.Message) (err error) {
			defer func() {
				if v := recover(); v != nil {
					pe := &PanicError{Value: v, Stack: debug.Stack()}
					if opts.Logger != nil {
						opts.Logger.ErrorContext(ctx, "courier: handler panicked", "message_id", m.ID, "topic", topicOf(ctx, m), "panic", fmt.Sprint(v), "stack", string(pe.Stack))
					}
					err = pe
					if opts.Permanent {
						err = message.Permanent(pe)
					}
				}
			}()
			return next.Handle(ctx, m)
		})
	}
}
