package transport

import (
	"fmt"
	"unicode/utf8"

	"github.com/courierkit/courier/message"
)

// DefaultMaxNameLen bounds topic and group names when a transport does not
// set Limits.MaxNameLen.
const DefaultMaxNameLen = 200

// CheckName validates a topic or group name by the rule every transport
// shares: 1 to maxLen (DefaultMaxNameLen when 0) characters of
// [A-Za-z0-9._-], starting with a letter or digit. It is the intersection
// of what NATS subjects and stream names, RabbitMQ exchanges, Kafka topics,
// SQS queues and Pub/Sub topics accept (adapters that need narrower names,
// such as SQS without dots, say so in their docs), so an application that
// keeps to it can change transports without renaming. kind is "topic" or
// "group" and only shapes the error.
func CheckName(kind, name string, maxLen int) error {
	if maxLen <= 0 {
		maxLen = DefaultMaxNameLen
	}
	switch {
	case name == "":
		return &NameError{Kind: kind, Name: name, Reason: "empty"}
	case len(name) > maxLen:
		return &NameError{Kind: kind, Name: name, Reason: fmt.Sprintf("longer than %d characters", maxLen)}
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		alnum := c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
		if i == 0 && !alnum {
			return &NameError{Kind: kind, Name: name, Reason: "must start with a letter or digit"}
		}
		if !alnum && c != '.' && c != '_' && c != '-' {
			return &NameError{Kind: kind, Name: name, Reason: fmt.Sprintf("character %q is not allowed (use A-Z a-z 0-9 . _ -)", c)}
		}
	}
	return nil
}

// CheckSubscribe validates a topic and the names in opts against l.
func CheckSubscribe(topic string, opts SubscribeOptions, l Limits) error {
	if err := CheckName("topic", topic, l.MaxNameLen); err != nil {
		return err
	}
	if opts.Group != "" {
		if err := CheckName("group", opts.Group, l.MaxNameLen); err != nil {
			return err
		}
	}
	if opts.DeadLetterTopic != "" {
		if err := CheckName("topic", opts.DeadLetterTopic, l.MaxNameLen); err != nil {
			return err
		}
	}
	return nil
}

// PreparePublish is the check every adapter runs at the top of Publish: it
// validates topic, gives messages with an empty ID a new one, and checks each
// message against l, so that nothing is sent when any message is over a
// limit. Header names must be non-empty valid UTF-8 without control
// characters; adapters check what their broker restricts further.
func PreparePublish(topic string, msgs []*message.Message, l Limits) error {
	if err := CheckName("topic", topic, l.MaxNameLen); err != nil {
		return err
	}
	for i, m := range msgs {
		if m == nil {
			return fmt.Errorf("%w: message %d is nil", ErrInvalidMessage, i)
		}
		if m.ID == "" {
			m.ID = message.NewID()
		}
		if err := checkMessage(i, m, l); err != nil {
			return err
		}
	}
	return nil
}

func checkMessage(i int, m *message.Message, l Limits) error {
	lim := func(what string, size, limit int) error {
		if limit > 0 && size > limit {
			return &LimitError{Index: i, MessageID: m.ID, What: what, Size: size, Limit: limit}
		}
		return nil
	}
	if err := lim("id", len(m.ID), l.MaxIDBytes); err != nil {
		return err
	}
	if err := lim("key", len(m.Key), l.MaxKeyBytes); err != nil {
		return err
	}
	if err := lim("payload", len(m.Payload), l.MaxPayload); err != nil {
		return err
	}
	if err := lim("headers", len(m.Headers), l.MaxHeaders); err != nil {
		return err
	}
	total := len(m.ID) + len(m.Key) + len(m.Payload)
	for k, v := range m.Headers {
		if k == "" || !utf8.ValidString(k) || hasControl(k) {
			return fmt.Errorf("%w: message %d (id %q): header name %q must be non-empty UTF-8 without control characters", ErrInvalidMessage, i, m.ID, k)
		}
		if err := lim("header", len(k)+len(v), l.MaxHeaderBytes); err != nil {
			return err
		}
		total += len(k) + len(v)
	}
	return lim("message", total, l.MaxMessage)
}

func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < 0x20 || s[i] == 0x7f {
			return true
		}
	}
	return false
}

// Size returns the bytes of m that count toward Limits.MaxMessage.
func Size(m *message.Message) int {
	n := len(m.ID) + len(m.Key) + len(m.Payload)
	for k, v := range m.Headers {
		n += len(k) + len(v)
	}
	return n
}
