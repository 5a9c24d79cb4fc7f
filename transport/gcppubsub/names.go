package gcppubsubtransport

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"strings"
	"unicode/utf8"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// Pub/Sub's limits (https://cloud.google.com/pubsub/quotas#resource_limits).
const (
	maxRequestBytes   = 10_000_000 // one publish request, and so one message
	maxAttributes     = 100        // attributes per message
	maxAttrKeyBytes   = 256
	maxAttrValueBytes = 1024
	maxOrderingKey    = 1024
	maxResourceName   = 255
	// maxNameLen bounds courier topic and group names so that the
	// subscription name "<topic>.<group>" stays within Pub/Sub's 255.
	maxNameLen = 127
	// envelope is what a message's payload leaves of maxRequestBytes for
	// the request's topic name, the ID attribute and protobuf framing.
	envelope = 1024
)

// idAttr is the attribute carrying Message.ID. Pub/Sub's own message ID is
// assigned by the server and cannot be chosen by the publisher.
const idAttr = "courier-id"

var limits = transport.Limits{
	MaxPayload:     maxRequestBytes - envelope,
	MaxMessage:     maxRequestBytes - envelope,
	MaxHeaders:     maxAttributes - 1, // one is the ID
	MaxHeaderBytes: maxAttrKeyBytes + maxAttrValueBytes,
	MaxIDBytes:     maxAttrValueBytes,
	MaxKeyBytes:    maxOrderingKey,
	MaxNameLen:     maxNameLen,
}

// checkTopic applies Pub/Sub's topic rules beyond transport.CheckName: at
// least 3 characters, a letter first, no "goog" prefix.
func checkTopic(name string) error {
	if err := transport.CheckName("topic", name, maxNameLen); err != nil {
		return err
	}
	return checkResource("topic", name)
}

func checkResource(kind, name string) error {
	switch {
	case len(name) < 3:
		return &transport.NameError{Kind: kind, Name: name, Reason: "Pub/Sub needs at least 3 characters"}
	case !(name[0] >= 'a' && name[0] <= 'z' || name[0] >= 'A' && name[0] <= 'Z'):
		return &transport.NameError{Kind: kind, Name: name, Reason: "Pub/Sub names must start with a letter"}
	case strings.HasPrefix(strings.ToLower(name), "goog"):
		return &transport.NameError{Kind: kind, Name: name, Reason: `Pub/Sub reserves names starting with "goog"`}
	case len(name) > maxResourceName:
		return &transport.NameError{Kind: kind, Name: name, Reason: "longer than Pub/Sub's 255 characters"}
	}
	return nil
}

// subscriptionID is the subscription of a group: "<topic>.<group>".
func subscriptionID(topic, group string) string { return topic + "." + group }

// privateSubscriptionID names a group-less subscription.
func privateSubscriptionID(topic string) string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return topic + ".courier-" + hex.EncodeToString(b[:])
}

// checkAttributes checks what Pub/Sub refuses beyond transport.Limits:
// attribute key and value sizes, reserved names and UTF-8 (attributes,
// ordering keys and the ID travel as protobuf strings).
func checkAttributes(i int, m *message.Message) error {
	if !utf8.ValidString(m.ID) {
		return fmt.Errorf("%w: gcppubsubtransport: message %d: the ID must be valid UTF-8 (Pub/Sub attributes are strings)", transport.ErrInvalidMessage, i)
	}
	if !utf8.ValidString(m.Key) {
		return fmt.Errorf("%w: gcppubsubtransport: message %d (id %q): the key must be valid UTF-8 (Pub/Sub ordering keys are strings)", transport.ErrInvalidMessage, i, m.ID)
	}
	for k, v := range m.Headers {
		if k == idAttr {
			return fmt.Errorf("%w: gcppubsubtransport: message %d (id %q): header %q is reserved for the message ID", transport.ErrInvalidMessage, i, m.ID, k)
		}
		if strings.HasPrefix(strings.ToLower(k), "goog") {
			return fmt.Errorf("%w: gcppubsubtransport: message %d (id %q): header %q: Pub/Sub reserves attribute names starting with \"goog\"", transport.ErrInvalidMessage, i, m.ID, k)
		}
		if len(k) > maxAttrKeyBytes {
			return &transport.LimitError{Index: i, MessageID: m.ID, What: fmt.Sprintf("header name %.32q...", k), Size: len(k), Limit: maxAttrKeyBytes}
		}
		if len(v) > maxAttrValueBytes {
			return &transport.LimitError{Index: i, MessageID: m.ID, What: fmt.Sprintf("value of header %q", k), Size: len(v), Limit: maxAttrValueBytes}
		}
		if !utf8.ValidString(v) {
			return fmt.Errorf("%w: gcppubsubtransport: message %d (id %q): the value of header %q must be valid UTF-8 (Pub/Sub attributes are strings)", transport.ErrInvalidMessage, i, m.ID, k)
		}
	}
	return nil
}
