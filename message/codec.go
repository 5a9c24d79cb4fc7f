package message

import (
	"encoding/json"
	"fmt"
	"mime"
	"reflect"
	"strings"
)

// Codec turns typed values into payloads and back.
type Codec interface {
	// ContentType is the MIME type written to HeaderContentType.
	ContentType() string
	Marshal(v any) ([]byte, error)
	Unmarshal(data []byte, v any) error
}

// JSON is the encoding/json codec ("application/json").
var JSON Codec = jsonCodec{}

type jsonCodec struct{}

func (jsonCodec) ContentType() string                { return "application/json" }
func (jsonCodec) Marshal(v any) ([]byte, error)      { return json.Marshal(v) }
func (jsonCodec) Unmarshal(data []byte, v any) error { return json.Unmarshal(data, v) }

// Typed is implemented by payload types that name their message type; Encode
// writes the name into HeaderType.
type Typed interface{ MessageType() string }

// Encode returns a new message (fresh ID) whose payload is v in JSON, with
// HeaderContentType "application/json" and, when v implements Typed,
// HeaderType.
func Encode[T any](v T) (*Message, error) { return EncodeWith(JSON, v) }

// EncodeWith is Encode with another codec.
func EncodeWith[T any](c Codec, v T) (*Message, error) {
	b, err := c.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("message: encode %T: %w", v, err)
	}
	m := New(b)
	m.Headers = Header{HeaderContentType: c.ContentType()}
	if t, ok := any(v).(Typed); ok {
		m.Headers[HeaderType] = t.MessageType()
	}
	return m, nil
}

// DecodeError reports a payload that could not be decoded. Decode returns it
// marked Permanent: redelivering the same bytes cannot succeed, so the
// message goes to the dead-letter path with this text as the reason.
type DecodeError struct {
	MessageID   string
	ContentType string
	Type        string // the Go type decoded into
	Err         error
}

func (e *DecodeError) Error() string {
	return fmt.Sprintf("message: decode %s (id %s, content-type %q): %v", e.Type, e.MessageID, e.ContentType, e.Err)
}
func (e *DecodeError) Unwrap() error { return e.Err }

// Decode decodes m's JSON payload into a T. A content type other than JSON
// (application/json or any +json type; an absent header is accepted) or a
// payload that does not decode returns a *DecodeError marked Permanent.
func Decode[T any](m *Message) (T, error) { return DecodeWith[T](JSON, m) }

// DecodeWith is Decode with another codec; the content type must match the
// codec's (parameters such as charset are ignored).
func DecodeWith[T any](c Codec, m *Message) (T, error) {
	var v T
	ct := m.Headers[HeaderContentType]
	if ct != "" && !contentTypeMatches(ct, c.ContentType()) {
		return v, Permanent(&DecodeError{MessageID: m.ID, ContentType: ct, Type: typeName[T](),
			Err: fmt.Errorf("content type is not %s", c.ContentType())})
	}
	if err := c.Unmarshal(m.Payload, &v); err != nil {
		return v, Permanent(&DecodeError{MessageID: m.ID, ContentType: ct, Type: typeName[T](), Err: err})
	}
	return v, nil
}

func typeName[T any]() string { return reflect.TypeFor[T]().String() }

func contentTypeMatches(got, want string) bool {
	mt, _, err := mime.ParseMediaType(got)
	if err != nil {
		return false
	}
	if mt == want {
		return true
	}
	// application/cloudevents+json, application/vnd.x+json ... are JSON too.
	return want == "application/json" && strings.HasPrefix(mt, "application/") && strings.HasSuffix(mt, "+json")
}
