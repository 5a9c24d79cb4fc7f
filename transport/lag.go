package transport

import "context"

// LagReporter is implemented by transports that can tell how far a group
// is behind: consumer lag, the seeds' "consumer lag by partition" and
// "dead-letter queue depth" (the lag of a group on a dead-letter topic).
// Callers type-assert a Conn for it; observability exports it as a gauge.
type LagReporter interface {
	// Lag reports group's backlog on topic. A group that does not exist
	// is an error; ctx bounds the broker round trip; after Close it
	// returns ErrClosed. A transport whose broker cannot tell (Pub/Sub:
	// backlog is a Cloud Monitoring metric) returns an error matching
	// ErrUnsupported, never a made-up zero.
	Lag(ctx context.Context, topic, group string) (Lag, error)
}

// Lag is a group's backlog on one topic.
type Lag struct {
	Topic, Group string
	// Pending counts messages stored for the group and not yet delivered
	// (Kafka: sum of partition lags; JetStream: num_pending; RabbitMQ:
	// ready messages; SQS: ApproximateNumberOfMessages).
	Pending int64
	// InFlight counts messages delivered and not yet acked; -1 when the
	// broker does not say.
	InFlight int64
	// Partitions breaks Pending down by partition where the broker has
	// partitions (Kafka); nil elsewhere.
	Partitions []PartitionLag
}

// PartitionLag is one partition's lag.
type PartitionLag struct {
	Partition int32
	// Committed is the group's committed offset, HighWater the partition's
	// next offset; Lag = HighWater - Committed.
	Committed, HighWater, Lag int64
}

// Pinger is implemented by transports that can check their broker
// connection with a round trip (or, for in-process transports, their own
// state). Health checks (router.Health) call it; it returns nil when the
// broker answered within ctx, ErrClosed after Close.
type Pinger interface {
	Ping(ctx context.Context) error
}
