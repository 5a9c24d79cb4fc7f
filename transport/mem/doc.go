// Package memtransport is courier's in-process transport (scheme mem://),
// the embedded default: the demo, unit tests and examples run on it, and it
// is the reference implementation of the transport contract.
//
// # URL
//
//	mem://                 a new private broker for this Conn
//	mem://NAME             the process-wide broker NAME (see Named), shared
//	                       by every Conn opened with the same name
//
// Parameters (all optional): max_backlog (Options.MaxBacklog, default
// 10000), max_payload (16 MiB), max_headers (256), max_header_bytes
// (64 KiB). Any other parameter is an error.
//
// # Topics and groups
//
// A topic holds its groups. A group is created by Declare or by the first
// Subscribe with that group name, and from then on it receives every message
// published to the topic, whether or not a subscriber runs; subscribers of
// one group compete for its messages. A subscription without a group gets a
// private queue that exists while it runs. A message published to a topic
// with no group and no subscription is discarded (like a fanout exchange
// without queues).
//
// # Delivery semantics
//
// At-least-once within the process: a message leaves its group only when a
// handler acked it. A nack puts it back at the head of the group (delay 0)
// or in a timer heap until its delay passed; Attempt counts deliveries.
// Close and a cancelled Subscribe cancel the running handlers' context;
// each running message is settled by what its handler returns (an error
// nacks it, an attempt used, after NackDelay; the stop's own ctx.Err()
// never dead-letters it for running out of attempts). Messages the
// subscription fetched but had not started go back to the front of their
// group untouched: in order, their attempt not counted, without
// NackDelay. The exception, with Concurrency above 1, is a message that
// was being handed to the workers at that moment: the dispatcher nacks it
// (an attempt counted, after NackDelay, never dead-lettered for that). A
// subscriber that starts again gets them all. Per-key order
// (SubscribeOptions.OrderedByKey) is kept across all subscribers of a
// group: a key's next message is handed out only after the previous one
// was acked, and a nacked message goes back in front of its key's later
// messages, even with a delay. A busy key (its message running, or
// waiting out a nack delay) does not hold up other keys: its later
// messages are set aside, in order, as the fetch loop reaches them and
// come back one at a time as the key frees; Lag counts them as Pending.
// Dead-lettering is the shared Dispatcher's
// (SubscribeOptions.DeadLetterTopic); the dead-letter publish bypasses the
// backlog limit so that shutdown never blocks on it. Like any publish, a
// dead letter sent to a topic with no group and no subscription is
// discarded: Declare a group on the dead-letter topic. The transport logs a
// warning the first time that happens for each such topic.
//
// Memory is bounded: when any group of a topic holds MaxBacklog unacked
// messages, Publish blocks until it has drained to three quarters of that
// (or until its ctx ends), for the whole call at once: a Publish stores all
// its messages in every group or none.
//
// AckWait is not enforced: a handler keeps its message as long as it runs,
// and a handler that never returns holds it until the subscription stops.
//
// # Capabilities
//
// Redelivery, DelayedNack, AttemptCount, OrderedByKey, DeadLetter,
// BrokerTime and LeaseExtension. Not Persistent (the broker is process
// memory) and no Replay (no history is kept once every group acked a
// message); StartOldest returns ErrUnsupported. The conformance suite
// passes every case except those two rule out: Replay and BrokerRestart.
//
// # As
//
// Conn.As accepts **Broker. Received messages have no native form.
//
// # Concurrency
//
// A Transport is safe for concurrent use. One mutex per topic guards the
// topic's groups; fetch loops take up to 256 messages per lock.
//
// # Performance
//
// BenchmarkEndToEnd (publish → handler → ack, one op = one message, unique
// IDs; 2-core Intel Xeon VM at load average ~2, Go 1.26,
// go test -bench EndToEnd -benchtime 2000000x -count 2, both runs shown):
//
//	16 B, 1 publisher                     1.31M / 1.48M msg/s   4 allocs/msg
//	16 B, 4 publishers                    1.02M / 1.13M msg/s   4 allocs/msg
//	16 B, 4 publishers, batches of 16     1.97M / 1.77M msg/s   3 allocs/msg
//	16 B, 4 publishers, Concurrency 4     0.53M / 0.64M msg/s   4 allocs/msg
//	1 KiB, 1 publisher                    0.80M / 0.67M msg/s   4 allocs/msg
//	1 KiB, 4 publishers                   0.75M / 0.51M msg/s   4 allocs/msg
//
// Concurrency above 1 pays a channel hand-off per message to the worker
// goroutines; with Concurrency 1 the handler runs in the fetch loop.
// The allocation count includes the benchmark's own *message.Message; the
// transport allocates the stored payload copy, the delivery (message plus
// acker in one object) and one record slice per Publish call.
package memtransport
