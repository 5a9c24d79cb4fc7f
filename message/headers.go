package message

// Well-known header names. They map one to one onto CloudEvents context
// attributes in binary content mode (the "ce-" prefix of the HTTP binding;
// the Kafka binding spells the same names with "ce_"), so a courier message
// converts to and from a CloudEvent without a table of exceptions:
//
//	Message.ID            ↔ id
//	HeaderType            ↔ type
//	HeaderSource          ↔ source
//	HeaderSubject         ↔ subject
//	HeaderTime            ↔ time
//	HeaderContentType     ↔ datacontenttype (content-type, as both bindings do)
//	HeaderDataSchema      ↔ dataschema
//	HeaderSchemaVersion   ↔ schemaversion (extension)
//	HeaderCorrelationID   ↔ correlationid (CloudEvents correlation extension)
//	HeaderCausationID     ↔ causationid   (CloudEvents correlation extension)
//	HeaderTraceParent     ↔ traceparent   (distributed tracing extension)
//
// All names are lower case and use only [a-z0-9-], which every supported
// broker carries unchanged (SQS attribute names, Pub/Sub attribute keys, NATS
// and AMQP headers, Kafka record headers).
const (
	HeaderType          = "ce-type"
	HeaderSource        = "ce-source"
	HeaderSubject       = "ce-subject"
	HeaderTime          = "ce-time"
	HeaderContentType   = "content-type"
	HeaderDataSchema    = "ce-dataschema"
	HeaderSchemaVersion = "ce-schemaversion"
	HeaderCorrelationID = "ce-correlationid"
	HeaderCausationID   = "ce-causationid"
	HeaderTraceParent   = "traceparent"
	HeaderTraceState    = "tracestate"
)

// Headers courier itself sets on a dead-lettered message, so an operator
// can tell where it came from and why.
const (
	// HeaderDeadLetterReason holds the error text that sent the message to
	// the dead-letter topic.
	HeaderDeadLetterReason = "courier-dlq-reason"
	// HeaderDeadLetterTopic holds the topic the message was consumed from.
	HeaderDeadLetterTopic = "courier-dlq-topic"
	// HeaderDeadLetterGroup holds the group that gave up on it.
	HeaderDeadLetterGroup = "courier-dlq-group"
	// HeaderDeadLetterAttempts holds the delivery attempt at which it was
	// dead-lettered (decimal), when known.
	HeaderDeadLetterAttempts = "courier-dlq-attempts"
	// HeaderDeadLetterTime holds when it was dead-lettered (RFC 3339, UTC).
	HeaderDeadLetterTime = "courier-dlq-time"
)

// CorrelationID returns the message's correlation ID header.
func (m *Message) CorrelationID() string { return m.Headers[HeaderCorrelationID] }

// CausationID returns the message's causation ID header.
func (m *Message) CausationID() string { return m.Headers[HeaderCausationID] }

// Type returns the message's type header.
func (m *Message) Type() string { return m.Headers[HeaderType] }

// FollowUp returns a new message caused by m: it gets a fresh ID, m's
// correlation ID (or m's ID when m has none, so a chain starts at its first
// message) and m's ID as its causation ID.
func (m *Message) FollowUp(payload []byte) *Message {
	n := New(payload)
	corr := m.CorrelationID()
	if corr == "" {
		corr = m.ID
	}
	n.Headers = Header{HeaderCorrelationID: corr, HeaderCausationID: m.ID}
	return n
}
