package message

import (
	"errors"
	"time"
)

// permanentError marks an error as not worth retrying.
type permanentError struct{ err error }

func (e *permanentError) Error() string {
	if e.err == nil {
		return "permanent error"
	}
	return e.err.Error()
}
func (e *permanentError) Unwrap() error { return e.err }

// Permanent marks err as permanent: retrying cannot help (a payload that does
// not decode, a business rule that rejects the message). Retry middleware
// returns it at once, transports never redeliver the message, and the
// dead-letter path takes it with err's text as the reason. Permanent(nil)
// returns nil. The result still matches err with errors.Is and errors.As.
func Permanent(err error) error {
	if err == nil {
		return nil
	}
	if IsPermanent(err) {
		return err
	}
	return &permanentError{err: err}
}

// IsPermanent reports whether err, or any error it wraps, was marked with
// Permanent.
func IsPermanent(err error) bool {
	var p *permanentError
	return errors.As(err, &p)
}

// delayError asks for redelivery after a delay.
type delayError struct {
	err   error
	delay time.Duration
}

func (e *delayError) Error() string { return e.err.Error() }
func (e *delayError) Unwrap() error { return e.err }

// RetryAfter wraps err so that the transport redelivers the message no
// sooner than d from now, where it can delay redelivery (see
// transport.Capabilities.DelayedNack); elsewhere it behaves like err.
// RetryAfter(nil, d) returns nil; a negative d counts as 0.
func RetryAfter(err error, d time.Duration) error {
	if err == nil {
		return nil
	}
	if d < 0 {
		d = 0
	}
	return &delayError{err: err, delay: d}
}

// RetryDelay returns the delay asked for with RetryAfter anywhere in err's
// chain, and whether one was asked for.
func RetryDelay(err error) (time.Duration, bool) {
	var d *delayError
	if errors.As(err, &d) {
		return d.delay, true
	}
	return 0, false
}
