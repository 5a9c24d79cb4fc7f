package transport

// Capabilities tell what a transport does, so callers and the conformance
// suite can rely on a feature or skip with a reason instead of faking it.
// Every field's zero value means "not supported" or "no limit".
type Capabilities struct {
	// Persistent: messages survive a broker restart.
	Persistent bool
	// Redelivery: a nacked or unacked message is delivered again.
	Redelivery bool
	// DelayedNack: a nack with a delay (message.RetryAfter, NackDelay)
	// is not redelivered before the delay has passed.
	DelayedNack bool
	// AttemptCount: received messages carry Message.Attempt.
	AttemptCount bool
	// OrderedByKey: SubscribeOptions.OrderedByKey keeps per-key order.
	OrderedByKey bool
	// DeadLetter: SubscribeOptions.DeadLetterTopic is honoured.
	DeadLetter bool
	// Replay: StartOldest reads history that was published before the
	// subscription existed.
	Replay bool
	// BrokerTime: received messages carry the broker's Message.Time.
	BrokerTime bool
	// LeaseExtension: a handler running longer than AckWait keeps its
	// message (heartbeat, visibility or lease extension).
	LeaseExtension bool
	// PointToPoint: a topic is one queue that every subscriber competes
	// for, whatever its group, so groups do not each get every message
	// (sqs://, the seed's command queues). The one field whose true value
	// is a restriction: false, the default, means groups fan out.
	PointToPoint bool
	// Limits are the broker's limits, checked by Publish before sending.
	Limits Limits
}

// Limits are what a transport can carry. Zero means no limit.
type Limits struct {
	// MaxPayload is the largest Payload, in bytes, of a message with no
	// headers and an ID of at most 64 bytes.
	MaxPayload int
	// MaxMessage is the largest payload plus ID, key, header names and
	// values, in bytes.
	MaxMessage int
	// MaxHeaders is the most headers one message can carry.
	MaxHeaders int
	// MaxHeaderBytes is the most bytes of one header name plus value.
	MaxHeaderBytes int
	// MaxIDBytes and MaxKeyBytes bound Message.ID and Message.Key.
	MaxIDBytes  int
	MaxKeyBytes int
	// MaxNameLen bounds topic and group names (CheckName).
	MaxNameLen int
}
