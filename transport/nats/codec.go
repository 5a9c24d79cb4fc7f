package natstransport

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// Header names the adapter itself puts on the wire.
const (
	// hdrMsgID carries Message.ID; JetStream de-duplicates on it.
	hdrMsgID = jetstream.MsgIDHeader // "Nats-Msg-Id"
	// hdrID carries Message.ID when Nats-Msg-Id holds a scoped
	// de-duplication ID instead (see dedupID); a receiver takes the ID
	// from it when it is present.
	hdrID = "Courier-Id"
	// hdrKey carries Message.Key.
	hdrKey = "Courier-Key"
	// hdrQuoted marks a message whose ID, key and header values are
	// strconv.Quote'd, because one of them could not travel as it is
	// (NATS trims leading and trailing white space of header values and
	// cannot carry CR or LF).
	hdrQuoted = "Courier-Quoted"
)

// reservedHeader reports whether a user header name clashes with what the
// adapter or the server reads: Nats-* (any case) and the Courier-* names
// above.
func reservedHeader(k string) bool {
	if len(k) >= 5 && strings.EqualFold(k[:5], "nats-") {
		return true
	}
	return k == hdrKey || k == hdrQuoted || k == hdrID
}

// dedupID is the Nats-Msg-Id JetStream de-duplicates m on, or "" when it
// is m.ID itself. A bound stream (bound != "") holds many topics, so the
// ID is scoped by the subject: distinct topics never drop each other's
// messages. A dead-letter copy keeps the original's ID, so it is scoped
// by the topic and group that dead-lettered it: it is neither dropped as
// a duplicate of the original (same stream) nor of another group's copy.
// The scoped form is the quoted parts joined by spaces, so it never needs
// the codec's quoting and two distinct scopes never collide.
func dedupID(bound, subject string, m *message.Message) string {
	dlTopic, isDL := m.Headers[message.HeaderDeadLetterTopic]
	dlGroup, hasGroup := m.Headers[message.HeaderDeadLetterGroup]
	if bound == "" && !isDL && !hasGroup {
		return ""
	}
	var b strings.Builder
	b.WriteString(strconv.Quote(m.ID))
	if bound != "" {
		b.WriteString(" subject=")
		b.WriteString(strconv.Quote(subject))
	}
	if isDL || hasGroup {
		b.WriteString(" dead-letter-topic=")
		b.WriteString(strconv.Quote(dlTopic))
		b.WriteString(" dead-letter-group=")
		b.WriteString(strconv.Quote(dlGroup))
	}
	return b.String()
}

// validHeaderKey mirrors nats.go's rule: printable ASCII without
// "()/,:;<=>?@[\]{} and double quote.
func validHeaderKey(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if c < 33 || c > 126 || strings.IndexByte(`"()/,:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

// needsQuote reports whether v would not survive a NATS header as it is.
func needsQuote(v string) bool {
	if v == "" {
		return false
	}
	if isSpace(v[0]) || isSpace(v[len(v)-1]) {
		return true
	}
	return strings.ContainsAny(v, "\r\n")
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\r' || c == '\n' }

// encode turns m into a nats.Msg for subject. It returns an error for a
// header the wire cannot carry. dedup, when not empty, is the
// Nats-Msg-Id (dedupID) and m.ID travels in Courier-Id.
func encode(i int, subject string, m *message.Message, dedup string) (*nats.Msg, error) {
	quote := needsQuote(m.ID) || needsQuote(m.Key)
	for k, v := range m.Headers {
		if !validHeaderKey(k) {
			return nil, fmt.Errorf("%w: message %d (id %q): header name %q: NATS header names are printable ASCII without spaces or any of \"()/,:;<=>?@[\\]{}", transport.ErrInvalidMessage, i, m.ID, k)
		}
		if reservedHeader(k) {
			return nil, fmt.Errorf("%w: message %d (id %q): header name %q is reserved (Nats-*, %s, %s, %s)", transport.ErrInvalidMessage, i, m.ID, k, hdrKey, hdrQuoted, hdrID)
		}
		if !quote && needsQuote(v) {
			quote = true
		}
	}
	q := func(s string) string { return s }
	if quote {
		q = strconv.Quote
	}
	h := make(nats.Header, len(m.Headers)+4)
	for k, v := range m.Headers {
		h[k] = []string{q(v)}
	}
	if dedup != "" {
		h[hdrMsgID] = []string{dedup}
		h[hdrID] = []string{q(m.ID)}
	} else {
		h[hdrMsgID] = []string{q(m.ID)}
	}
	if m.Key != "" {
		h[hdrKey] = []string{q(m.Key)}
	}
	if quote {
		h[hdrQuoted] = []string{"1"}
	}
	return &nats.Msg{Subject: subject, Header: h, Data: m.Payload}, nil
}

// wireSize is the size nats.go puts on the wire for msg (headers plus
// data), to compare with the server's max_payload.
func wireSize(msg *nats.Msg) int {
	n := len(msg.Data)
	if len(msg.Header) == 0 {
		return n
	}
	n += len("NATS/1.0\r\n") + 2
	for k, vs := range msg.Header {
		for _, v := range vs {
			n += len(k) + len(v) + 4
		}
	}
	return n
}

// decode turns a received NATS message into a courier message. Headers
// the adapter or the server added are not passed on.
func decode(topic string, hdr nats.Header, data []byte) (*message.Message, error) {
	m := new(message.Message)
	if err := decodeInto(m, topic, hdr, data); err != nil {
		return nil, err
	}
	return m, nil
}

// decodeInto is decode into a Message the caller allocated.
func decodeInto(m *message.Message, topic string, hdr nats.Header, data []byte) error {
	m.Topic, m.Payload = topic, data
	uq := func(s string) (string, error) { return s, nil }
	if hdr.Get(hdrQuoted) == "1" {
		uq = strconv.Unquote
	}
	var err error
	scoped := false
	if vs := hdr[hdrID]; len(vs) > 0 {
		// Nats-Msg-Id is a scoped de-duplication ID (dedupID, never
		// quoted by the codec) when it starts with the quoted Courier-Id
		// and a space; a Courier-Id without that (a user header from
		// before the name was reserved) is not the ID.
		id, err := uq(vs[0])
		if err != nil {
			return fmt.Errorf("natstransport: malformed quoted %s: %w", hdrID, err)
		}
		var buf [128]byte
		pre := strconv.AppendQuote(buf[:0], id)
		if d := hdr.Get(hdrMsgID); len(d) > len(pre) && d[len(pre)] == ' ' && d[:len(pre)] == string(pre) {
			m.ID, scoped = id, true
		}
	}
	if !scoped {
		if m.ID, err = uq(hdr.Get(hdrMsgID)); err != nil {
			return fmt.Errorf("natstransport: malformed quoted %s: %w", hdrMsgID, err)
		}
	}
	if k := hdr.Get(hdrKey); k != "" {
		if m.Key, err = uq(k); err != nil {
			return fmt.Errorf("natstransport: malformed quoted %s: %w", hdrKey, err)
		}
	}
	for k, vs := range hdr {
		if len(vs) == 0 || reservedHeader(k) {
			continue
		}
		v, err := uq(vs[0])
		if err != nil {
			return fmt.Errorf("natstransport: malformed quoted header %q: %w", k, err)
		}
		if m.Headers == nil {
			m.Headers = make(message.Header, len(hdr))
		}
		m.Headers[k] = v
	}
	if m.Payload == nil {
		m.Payload = []byte{}
	}
	return nil
}
