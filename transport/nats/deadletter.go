package natstransport

import (
	"errors"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// deadLetterFits reports whether m can be published to topic without a
// size error: the transport's limits and, exactly, the server's
// max_payload for the encoded message.
func (t *Transport) deadLetterFits(topic string, m *message.Message) bool {
	var le *transport.LimitError
	if err := transport.PreparePublish(topic, []*message.Message{m}, t.caps.Limits); err != nil {
		return !errors.As(err, &le) // another error: the publish reports it
	}
	subj := t.subject(topic)
	var dedup string
	if !t.o.Core {
		dedup = dedupID(t.o.Stream, subj, m)
	}
	msg, err := encode(0, subj, m, dedup)
	if err != nil {
		return true
	}
	return wireSize(msg) <= int(t.nc.MaxPayload())
}
