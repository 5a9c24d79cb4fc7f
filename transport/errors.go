package transport

import (
	"errors"
	"fmt"
)

var (
	// ErrClosed is returned by calls on a transport after Close or
	// Shutdown, and by Subscribe when the transport closes under it.
	ErrClosed = errors.New("transport: closed")
	// ErrLimit is matched (errors.Is) by every *LimitError.
	ErrLimit = errors.New("transport: limit exceeded")
	// ErrInvalidName is matched by every *NameError.
	ErrInvalidName = errors.New("transport: invalid name")
	// ErrUnsupported means the transport lacks the capability a call or
	// option needs.
	ErrUnsupported = errors.New("transport: unsupported")
	// ErrInvalidMessage is returned for a nil message or a malformed
	// header name.
	ErrInvalidMessage = errors.New("transport: invalid message")
)

// LimitError reports a message over one of the transport's Limits. Nothing
// of the Publish call that returned it was sent.
type LimitError struct {
	Index     int    // position of the message in the Publish call
	MessageID string // its ID
	What      string // "payload", "message", "headers", "header", "id", "key"
	Size      int    // what the message had
	Limit     int    // what the transport accepts
}

func (e *LimitError) Error() string {
	unit := "bytes"
	if e.What == "headers" {
		unit = "headers"
	}
	return fmt.Sprintf("transport: message %d (id %q): %s of %d %s exceeds the limit of %d", e.Index, e.MessageID, e.What, e.Size, unit, e.Limit)
}

// Is makes errors.Is(err, ErrLimit) true.
func (e *LimitError) Is(target error) bool { return target == ErrLimit }

// NameError reports an invalid topic or group name.
type NameError struct {
	Kind   string // "topic" or "group"
	Name   string
	Reason string
}

func (e *NameError) Error() string {
	return fmt.Sprintf("transport: invalid %s name %q: %s", e.Kind, e.Name, e.Reason)
}

// Is makes errors.Is(err, ErrInvalidName) true.
func (e *NameError) Is(target error) bool { return target == ErrInvalidName }
