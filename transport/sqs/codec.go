package sqstransport

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	snstypes "github.com/aws/aws-sdk-go-v2/service/sns/types"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// Wire format (see "Attribute packing" in the package doc).
const (
	// metaAttr is the one message attribute courier reserves.
	metaAttr = "courier"
	// maxAttrs is SQS's limit of message attributes per message.
	maxAttrs = 10
	// maxDirect is how many headers travel as attributes of their own.
	maxDirect = maxAttrs - 1
	// maxWireBytes is SQS's and SNS's limit for a message: body plus
	// attribute names, data types and values.
	maxWireBytes = 256 * 1024
	// emptyBody stands for an empty payload: SQS and SNS refuse empty bodies.
	emptyBody = "-"
	// maxPayloadAnyBytes is the largest payload of arbitrary bytes (which
	// may need base64) that always fits with no headers and an ID of up to
	// 64 bytes: 4*ceil(196000/3) = 261336 bytes of base64 plus at most
	// 256 bytes of attribute.
	maxPayloadAnyBytes = 196000
)

// meta is the JSON document in the courier attribute.
type meta struct {
	V     int               `json:"v"`
	ID    string            `json:"id,omitempty"`
	ID64  string            `json:"id64,omitempty"`
	Key   string            `json:"k,omitempty"`
	Key64 string            `json:"k64,omitempty"`
	Body  string            `json:"b,omitempty"` // "", "base64" or "empty"
	H     map[string]string `json:"h,omitempty"`
	X     [][2]string       `json:"x,omitempty"` // base64 name, base64 value
}

// simple writes md without headers as JSON, as encoding/json would (the
// fields in the same order), without reflection and in one allocation: the
// common case of every Publish.
func (md *meta) simple() string {
	fields := [...]struct{ name, v string }{{"id", md.ID}, {"id64", md.ID64}, {"k", md.Key}, {"k64", md.Key64}, {"b", md.Body}}
	n := len(`{"v":1}`)
	for _, f := range fields {
		if f.v != "" {
			n += len(`,"":""`) + len(f.name) + len(f.v)
		}
	}
	var sb strings.Builder
	sb.Grow(n) // exact unless a string needs escapes
	sb.WriteString(`{"v":`)
	sb.WriteString(strconv.Itoa(md.V))
	for _, f := range fields {
		if f.v != "" {
			sb.WriteString(`,"`)
			sb.WriteString(f.name)
			sb.WriteString(`":`)
			writeJSONString(&sb, f.v)
		}
	}
	sb.WriteByte('}')
	return sb.String()
}

// parseSimple reads what simple writes when no string needs an
// escape: {"v":1,"id":"...",...} with the fields id, id64, k, k64 and b.
// It reports false for anything else, which encoding/json then reads.
func parseSimple(s string, md *meta) bool {
	const head = `{"v":1`
	if !strings.HasPrefix(s, head) || !strings.HasSuffix(s, "}") || strings.IndexByte(s, '\\') >= 0 {
		return false
	}
	md.V = 1
	rest := s[len(head) : len(s)-1]
	for rest != "" {
		if !strings.HasPrefix(rest, `,"`) {
			return false
		}
		rest = rest[2:]
		i := strings.Index(rest, `":"`)
		if i < 0 {
			return false
		}
		name := rest[:i]
		rest = rest[i+3:]
		j := strings.IndexByte(rest, '"')
		if j < 0 {
			return false
		}
		v := rest[:j]
		rest = rest[j+1:]
		switch name {
		case "id":
			md.ID = v
		case "id64":
			md.ID64 = v
		case "k":
			md.Key = v
		case "k64":
			md.Key64 = v
		case "b":
			md.Body = v
		default:
			return false
		}
	}
	return true
}

// writeJSONString quotes s, a valid UTF-8 string, as a JSON string: as
// encoding/json does with SetEscapeHTML(false), except that U+2028 and
// U+2029 stay as they are (valid JSON either way).
func writeJSONString(sb *strings.Builder, s string) {
	const hex = "0123456789abcdef"
	sb.WriteByte('"')
	last := 0 // s[last:i] is still to be written
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 0x20 && c != '"' && c != '\\' {
			continue
		}
		sb.WriteString(s[last:i])
		last = i + 1
		switch c {
		case '"', '\\':
			sb.WriteByte('\\')
			sb.WriteByte(c)
		case '\n':
			sb.WriteString(`\n`)
		case '\r':
			sb.WriteString(`\r`)
		case '\t':
			sb.WriteString(`\t`)
		default:
			sb.WriteString(`\u00`)
			sb.WriteByte(hex[c>>4])
			sb.WriteByte(hex[c&0xf])
		}
	}
	sb.WriteString(s[last:])
	sb.WriteByte('"')
}

// safe reports whether s can travel as an SQS string as it is: valid UTF-8
// of the characters SQS accepts (#x9 #xA #xD #x20-#xD7FF #xE000-#xFFFD
// #x10000-#x10FFFF).
func safe(s string) bool {
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c < 0x20 && c != 0x9 && c != 0xA && c != 0xD {
				return false
			}
			i++
			continue
		}
		r, n := utf8.DecodeRuneInString(s[i:])
		if !safeRune(r, n) {
			return false
		}
		i += n
	}
	return true
}

// safeBytes is safe for a payload, without copying it to a string.
func safeBytes(s []byte) bool {
	for i := 0; i < len(s); {
		if c := s[i]; c < utf8.RuneSelf {
			if c < 0x20 && c != 0x9 && c != 0xA && c != 0xD {
				return false
			}
			i++
			continue
		}
		r, n := utf8.DecodeRune(s[i:])
		if !safeRune(r, n) {
			return false
		}
		i += n
	}
	return true
}

// safeRune reports whether r, decoded from n bytes, is valid UTF-8 that
// SQS accepts, for r outside ASCII.
func safeRune(r rune, n int) bool {
	switch {
	case r == utf8.RuneError && n <= 1:
		return false
	case r >= 0x20 && r <= 0xD7FF:
	case r >= 0xE000 && r <= 0xFFFD:
	case r >= 0x10000 && r <= 0x10FFFF:
	default:
		return false
	}
	return true
}

// attrNameOK reports whether a header name can be an SQS attribute name of
// its own: 1-256 of A-Za-z0-9 _ - ., no leading, trailing or double dot, not
// starting with "AWS." or "Amazon.", and not courier's own.
func attrNameOK(name string) bool {
	if name == "" || len(name) > 256 || name == metaAttr {
		return false
	}
	if name[0] == '.' || name[len(name)-1] == '.' || strings.Contains(name, "..") {
		return false
	}
	l := strings.ToLower(name)
	if strings.HasPrefix(l, "aws.") || strings.HasPrefix(l, "amazon.") {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// wire is one message in SQS/SNS form: its body and at most 10 String
// attributes, courier's own (meta) and the headers that travel as
// attributes of their own (direct). The SDKs' attribute maps are built
// from it per request (sqsAttrs, snsAttrs), pointing into it.
type wire struct {
	body   string
	meta   string // the value of the courier attribute
	direct []attr // at most maxDirect, in byte order of their names
	size   int    // bytes counted toward maxWireBytes
}

// attr is one header sent as a String attribute of its own.
type attr struct{ name, value string }

// sqsAttrs is w's attributes for SendMessageBatch. The values point into
// w, which must stay as it is until the request is sent.
func (w *wire) sqsAttrs() map[string]sqstypes.MessageAttributeValue {
	m := make(map[string]sqstypes.MessageAttributeValue, len(w.direct)+1)
	for i := range w.direct {
		a := &w.direct[i]
		m[a.name] = sqstypes.MessageAttributeValue{DataType: &stringType, StringValue: &a.value}
	}
	m[metaAttr] = sqstypes.MessageAttributeValue{DataType: &stringType, StringValue: &w.meta}
	return m
}

// snsAttrs is w's attributes for PublishBatch, like sqsAttrs.
func (w *wire) snsAttrs() map[string]snstypes.MessageAttributeValue {
	m := make(map[string]snstypes.MessageAttributeValue, len(w.direct)+1)
	for i := range w.direct {
		a := &w.direct[i]
		m[a.name] = snstypes.MessageAttributeValue{DataType: &stringType, StringValue: &a.value}
	}
	m[metaAttr] = snstypes.MessageAttributeValue{DataType: &stringType, StringValue: &w.meta}
	return m
}

// encode packs m into w: a body and at most 10 string attributes. It
// allocates the body, the courier attribute and, only when m has headers,
// the list of direct ones.
func encode(m *message.Message, w *wire) error {
	md := meta{V: 1}
	if safe(m.ID) {
		md.ID = m.ID
	} else {
		md.ID64 = base64.StdEncoding.EncodeToString([]byte(m.ID))
	}
	if m.Key != "" {
		if safe(m.Key) {
			md.Key = m.Key
		} else {
			md.Key64 = base64.StdEncoding.EncodeToString([]byte(m.Key))
		}
	}
	*w = wire{}
	switch {
	case len(m.Payload) == 0:
		w.body, md.Body = emptyBody, "empty"
	case safeBytes(m.Payload):
		w.body = string(m.Payload)
	default:
		w.body, md.Body = base64.StdEncoding.EncodeToString(m.Payload), "base64"
	}
	if len(m.Headers) > 0 {
		names := make([]string, 0, len(m.Headers))
		for k := range m.Headers {
			names = append(names, k)
		}
		slices.Sort(names)
		w.direct = make([]attr, 0, min(len(names), maxDirect))
		for _, k := range names {
			v := m.Headers[k]
			switch {
			case len(w.direct) < maxDirect && attrNameOK(k) && v != "" && safe(v):
				w.direct = append(w.direct, attr{k, v})
				w.size += len(k) + len("String") + len(v)
			case safe(k) && safe(v):
				if md.H == nil {
					md.H = make(map[string]string)
				}
				md.H[k] = v
			default:
				md.X = append(md.X, [2]string{base64.StdEncoding.EncodeToString([]byte(k)), base64.StdEncoding.EncodeToString([]byte(v))})
			}
		}
	}
	if md.H == nil && md.X == nil {
		w.meta = md.simple()
	} else {
		var sb strings.Builder
		enc := json.NewEncoder(&sb)
		enc.SetEscapeHTML(false)
		if err := enc.Encode(md); err != nil {
			return fmt.Errorf("sqstransport: encode attributes: %w", err)
		}
		w.meta = strings.TrimSuffix(sb.String(), "\n")
	}
	w.size += len(metaAttr) + len("String") + len(w.meta) + len(w.body)
	return nil
}

// decode turns a received SQS message back into a courier Message. A
// message without the courier attribute (sent by something else) keeps its
// body as the payload, the SQS MessageId as its ID and its attributes as
// headers.
func decode(sm *sqstypes.Message) (*message.Message, error) {
	m := &message.Message{}
	body := ""
	if sm.Body != nil {
		body = *sm.Body
	}
	var md meta
	mv, ok := sm.MessageAttributes[metaAttr]
	if ok && mv.StringValue != nil {
		if parseSimple(*mv.StringValue, &md) {
			// the common case, without reflection
		} else if err := json.Unmarshal([]byte(*mv.StringValue), &md); err != nil {
			return nil, fmt.Errorf("sqstransport: message %s: malformed %q attribute: %w", deref(sm.MessageId), metaAttr, err)
		}
	} else {
		ok = false
	}
	for k, v := range sm.MessageAttributes {
		if k == metaAttr && ok {
			continue
		}
		val := ""
		switch {
		case v.StringValue != nil:
			val = *v.StringValue
		case v.BinaryValue != nil:
			val = base64.StdEncoding.EncodeToString(v.BinaryValue)
		}
		m.SetHeader(k, val)
	}
	if !ok {
		m.ID = deref(sm.MessageId)
		m.Payload = []byte(body)
		return m, nil
	}
	var err error
	m.ID, err = pick(md.ID, md.ID64)
	if err != nil {
		return nil, err
	}
	if m.Key, err = pick(md.Key, md.Key64); err != nil {
		return nil, err
	}
	switch md.Body {
	case "":
		m.Payload = []byte(body)
	case "empty":
		m.Payload = []byte{}
	case "base64":
		if m.Payload, err = base64.StdEncoding.DecodeString(body); err != nil {
			return nil, fmt.Errorf("sqstransport: message %s: body is not base64: %w", deref(sm.MessageId), err)
		}
	default:
		return nil, fmt.Errorf("sqstransport: message %s: unknown body encoding %q", deref(sm.MessageId), md.Body)
	}
	for k, v := range md.H {
		m.SetHeader(k, v)
	}
	for _, kv := range md.X {
		k, err1 := base64.StdEncoding.DecodeString(kv[0])
		v, err2 := base64.StdEncoding.DecodeString(kv[1])
		if err1 != nil || err2 != nil {
			return nil, fmt.Errorf("sqstransport: message %s: malformed packed header", deref(sm.MessageId))
		}
		m.SetHeader(string(k), string(v))
	}
	return m, nil
}

func pick(plain, b64 string) (string, error) {
	if b64 == "" {
		return plain, nil
	}
	b, err := base64.StdEncoding.DecodeString(b64)
	if err != nil {
		return "", fmt.Errorf("sqstransport: malformed base64 in %q attribute: %w", metaAttr, err)
	}
	return string(b), nil
}

// receivedAt reads SentTimestamp (Unix milliseconds).
func receivedAt(sm *sqstypes.Message) time.Time {
	if s, ok := sm.Attributes[string(sqstypes.MessageSystemAttributeNameSentTimestamp)]; ok {
		if ms, err := strconv.ParseInt(s, 10, 64); err == nil {
			return time.UnixMilli(ms)
		}
	}
	return time.Time{}
}

// receiveCount reads ApproximateReceiveCount.
func receiveCount(sm *sqstypes.Message) int {
	if s, ok := sm.Attributes[string(sqstypes.MessageSystemAttributeNameApproximateReceiveCount)]; ok {
		if n, err := strconv.Atoi(s); err == nil {
			return n
		}
	}
	return 0
}

// fifoToken makes s usable as a MessageGroupId or MessageDeduplicationId:
// 1-128 characters of alphanumerics and punctuation. Anything else is
// replaced by its SHA-256 in hex, which keeps equal inputs equal.
func fifoToken(s string) string {
	ok := s != "" && len(s) <= 128
	for i := 0; ok && i < len(s); i++ {
		if c := s[i]; c <= 0x20 || c >= 0x7f {
			ok = false
		}
	}
	if ok {
		return s
	}
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// checkWire reports a message too large for SQS/SNS once encoded.
func checkWire(i int, m *message.Message, w *wire) error {
	if w.size > maxWireBytes {
		return &transport.LimitError{Index: i, MessageID: m.ID, What: "message", Size: w.size, Limit: maxWireBytes}
	}
	return nil
}

// stringType is the DataType of every attribute courier sends; the SDK
// only reads it, so one value is shared.
var stringType = "String"

func deref(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}
