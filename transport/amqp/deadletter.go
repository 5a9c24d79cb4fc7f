package amqptransport

import (
	"errors"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// deadLetterFits reports whether m can be published to topic without a
// size error (the transport's limits and the encoded properties).
func (t *Transport) deadLetterFits(topic string, m *message.Message) bool {
	var le *transport.LimitError
	if err := transport.PreparePublish(topic, []*message.Message{m}, t.caps.Limits); err != nil {
		return !errors.As(err, &le) // another error: the publish reports it
	}
	_, err := t.toPublishing(0, m, time.Time{})
	return !errors.As(err, &le)
}
