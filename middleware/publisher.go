package middleware

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"mime"
	"strings"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/router"
	"github.com/courierkit/courier/transport"
)

// PublisherMiddleware decorates a Publisher, as message.Middleware
// decorates a Handler.
type PublisherMiddleware func(transport.Publisher) transport.Publisher

// ChainPublisher wraps p in mw; the first is the outermost (it sees a
// Publish call first). Nil entries are skipped. The result forwards Close
// to p, and As (when p has it) so the native client stays reachable.
func ChainPublisher(p transport.Publisher, mw ...PublisherMiddleware) transport.Publisher {
	for i := len(mw) - 1; i >= 0; i-- {
		if mw[i] != nil {
			p = mw[i](p)
		}
	}
	return p
}

// PublishFunc is the Publish method of a decorator.
type PublishFunc func(ctx context.Context, topic string, msgs ...*message.Message) error

// DecoratePublisher returns a Publisher whose Publish is publish and
// whose Close (and As, when next has it) are next's: the building block of
// a PublisherMiddleware.
func DecoratePublisher(next transport.Publisher, publish PublishFunc) transport.Publisher {
	return &decorated{next: next, publish: publish}
}

type decorated struct {
	next    transport.Publisher
	publish PublishFunc
}

func (d *decorated) Publish(ctx context.Context, topic string, msgs ...*message.Message) error {
	return d.publish(ctx, topic, msgs...)
}
func (d *decorated) Close() error { return d.next.Close() }

// As reaches the decorated publisher's As, if it has one.
func (d *decorated) As(target any) bool {
	if a, ok := d.next.(interface{ As(any) bool }); ok {
		return a.As(target)
	}
	return false
}

// PropagateCorrelation stamps every published message that has no
// correlation ID: inside a Router handler it gets the consumed message's
// correlation ID and, as causation ID, the consumed message's ID
// (router.Stamp); with an ID set by ContextWithCorrelationID, that ID;
// otherwise the message starts a chain and its own ID becomes its
// correlation ID (an empty ID is filled with message.NewID first).
func PropagateCorrelation() PublisherMiddleware {
	return func(next transport.Publisher) transport.Publisher {
		return DecoratePublisher(next, func(ctx context.Context, topic string, msgs ...*message.Message) error {
			if id, ok := ctx.Value(correlationKey{}).(string); ok && id != "" {
				for _, m := range msgs {
					if m != nil && m.Headers[message.HeaderCorrelationID] == "" {
						m.SetHeader(message.HeaderCorrelationID, id)
					}
				}
			}
			if d := router.FromContext(ctx); d != nil && d.Message != nil {
				router.Stamp(d.Message, msgs...)
			}
			for _, m := range msgs {
				if m != nil && m.Headers[message.HeaderCorrelationID] == "" {
					if m.ID == "" {
						m.ID = message.NewID()
					}
					m.SetHeader(message.HeaderCorrelationID, m.ID)
				}
			}
			return next.Publish(ctx, topic, msgs...)
		})
	}
}

// ErrInvalid is matched by every *ValidationError.
var ErrInvalid = errors.New("middleware: invalid message")

// ValidationError reports a message a Validate hook rejected. Nothing of
// the Publish call was sent. It is Permanent-free: the caller decides.
type ValidationError struct {
	Topic     string
	Index     int // position in the Publish call
	MessageID string
	Err       error
}

func (e *ValidationError) Error() string {
	return fmt.Sprintf("middleware: message %d (id %q) to %q rejected before publishing: %v", e.Index, e.MessageID, e.Topic, e.Err)
}
func (e *ValidationError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrInvalid) true.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalid }

// Validate rejects invalid messages before they reach the broker — the
// poison-message prevention of the producer side: a consumer can never
// receive what was not published. check runs for every message of a
// Publish call before any is sent; the first error fails the whole call
// with a *ValidationError and nothing is sent. Nil messages are left to
// the transport (which rejects them).
func Validate(check func(topic string, m *message.Message) error) PublisherMiddleware {
	return func(next transport.Publisher) transport.Publisher {
		return DecoratePublisher(next, func(ctx context.Context, topic string, msgs ...*message.Message) error {
			for i, m := range msgs {
				if m == nil {
					continue
				}
				if err := check(topic, m); err != nil {
					return &ValidationError{Topic: topic, Index: i, MessageID: m.ID, Err: err}
				}
			}
			return next.Publish(ctx, topic, msgs...)
		})
	}
}

// ValidJSON is a Validate check: a message whose content-type header is
// JSON (application/json or any +json type) must carry a syntactically
// valid JSON payload. Other messages pass.
func ValidJSON(topic string, m *message.Message) error {
	ct := m.Headers[message.HeaderContentType]
	if ct == "" {
		return nil
	}
	mt, _, err := mime.ParseMediaType(ct)
	if err != nil {
		return fmt.Errorf("content type %q: %w", ct, err)
	}
	if mt != "application/json" && !(strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json")) {
		return nil
	}
	if !json.Valid(m.Payload) {
		return fmt.Errorf("payload is not valid JSON (content type %s)", mt)
	}
	return nil
}
