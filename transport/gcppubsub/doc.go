// Package gcppubsubtransport is courier's Google Cloud Pub/Sub transport,
// built on cloud.google.com/go/pubsub/v2 (streaming pull, batched
// publishing, automatic lease extension). Import it for its side effect to
// enable gcppubsub:// URLs:
//
//	import _ "github.com/courierkit/courier/transport/gcppubsub"
//
//	conn, err := transport.Open(ctx, "gcppubsub://my-project")
//
// or build one with New(ctx, Options{Project: "my-project"}).
//
// # Delivery semantics
//
// At least once. Publish returns when Pub/Sub has stored every message (the
// server returned its message ID); the client batches messages (see the
// publish_* parameters) and Publish awaits all results before it returns.
// A message is acked only after its handler returned nil. A handler error
// nacks it: Pub/Sub redelivers at once, or, with a subscription retry
// policy (min_backoff, max_backoff), after Pub/Sub's exponential backoff.
// A delay asked for with message.RetryAfter or SubscribeOptions.NackDelay
// is honoured by keeping the message leased (the client keeps extending
// its ack deadline) until the delay has passed, then nacking it: it is not
// redelivered before the delay while the subscriber runs, and it keeps its
// place among the subscription's outstanding messages (MaxInFlight) in the
// meantime. When the subscription stops first, held messages are nacked at
// once; when the process dies, they come back after the ack deadline. The
// client extends a lease for at most max_extension from receipt, so a
// delay is held at most that long less a second (from when the callback
// got the message) and then nacked, logged at Debug: a longer delay comes
// back early rather than have its lease lapse while it still holds its
// MaxInFlight slot.
//
// A handler running longer than the ack deadline keeps its message: the
// client extends the lease, by at most AckWait at a time (so a crashed
// subscriber's messages return within about AckWait), for up to
// max_extension in total.
//
// Messages of one Key are published with that ordering key on a publisher
// with ordering enabled. Subscribing with OrderedByKey creates the
// subscription with message ordering, and Pub/Sub then hands out a key's
// next message only after the previous one was acked. When publishing a
// keyed message fails, the client pauses the key; Publish resumes it before
// returning the error, so the caller's retry is not refused.
//
// Permanent failures (message.Permanent, or MaxAttempts reached) go to
// SubscribeOptions.DeadLetterTopic with courier's dead-letter headers.
// Separately, Options.DeadLetterTopic turns on Pub/Sub's own dead-letter
// policy: after max_delivery_attempts deliveries Pub/Sub forwards the
// message, unchanged, to that topic. Only with that policy does Pub/Sub
// count deliveries, so only then do received messages carry
// Message.Attempt, Capabilities().AttemptCount is true, and
// SubscribeOptions.MaxAttempts is accepted (without it, MaxAttempts is an
// error matching transport.ErrUnsupported rather than a limit that never
// triggers). Subscriptions to the dead-letter topic itself get no policy,
// so their messages carry no Attempt.
//
// # URL
//
//	gcppubsub://PROJECT[?param=value&...]
//
// PROJECT is the Google Cloud project ID. Credentials come from the
// Application Default Credentials chain (GOOGLE_APPLICATION_CREDENTIALS,
// gcloud's user credentials, the metadata server), never from the URL; Go
// code can pass others in Options.ClientOptions. Parameters, each the
// Options field of the same meaning:
//
//	emulator=HOST:PORT           Emulator: plaintext, unauthenticated emulator or pstest (default: $PUBSUB_EMULATOR_HOST, else production)
//	endpoint=HOST:PORT           Endpoint: another API endpoint, e.g. a regional one (default: the global endpoint)
//	create=false                 DisableCreate: never create topics and group subscriptions (default true: create what is missing)
//	ack_deadline=30s             AckDeadline: ack deadline of created subscriptions when AckWait is 0, 10s to 600s (default 30s)
//	max_extension=60m            MaxExtension: how long a running handler's lease is extended in total (default 60m)
//	receive_goroutines=4         ReceiveGoroutines: StreamingPull streams per Subscribe (default 4)
//	max_outstanding_messages=64  MaxOutstandingMessages: default MaxInFlight (default 64)
//	max_outstanding_bytes=N      MaxOutstandingBytes: bound on unsettled payload bytes per Subscribe (default 100e6)
//	retention=168h               Retention: created subscriptions' message retention, 10m to 7d (default Pub/Sub's, 7d)
//	min_backoff=10s              MinBackoff: retry policy minimum backoff, up to 600s (default none)
//	max_backoff=600s             MaxBackoff: retry policy maximum backoff, up to 600s (default none)
//	dead_letter_topic=NAME       DeadLetterTopic: native dead-letter policy's topic (default none)
//	max_delivery_attempts=5      MaxDeliveryAttempts: native dead-letter policy's attempts, 5 to 100 (default 5)
//	publish_delay=10ms           PublishDelay: send a batch after this delay (default 10ms)
//	publish_count=100            PublishCount: send a batch at this many messages, at most 1000 (default 100)
//	publish_bytes=1000000        PublishBytes: send a batch at this many bytes (default 1e6)
//	publish_timeout=60s          PublishTimeout: give up retrying a batch after this long (default 60s)
//
// An unknown parameter, a user-info part or a path is an error.
//
// # Topics and groups
//
// A courier topic is the Pub/Sub topic of the same name in the project. A
// group is the subscription "<topic>.<group>"; Declare and Subscribe create
// it (unless create=false) with the ack deadline (AckWait, else
// ack_deadline), message ordering when OrderedByKey, no expiration (Pub/Sub
// would otherwise delete a subscription idle for 31 days), and the
// retention, retry and dead-letter policies of the Options. An existing
// subscription is used as it is; one bound to another topic, lacking
// ordering that OrderedByKey needs, or with another native dead-letter
// policy is an error matching ErrConflict (a different ack deadline is
// only logged). A Subscribe without a group creates a private subscription
// "<topic>.courier-<random>", which sees messages published while it runs,
// is deleted when Subscribe returns, and expires after 24 idle hours if
// that deletion was missed. Pub/Sub keeps nothing for a topic without
// subscriptions: declare groups before publishing what they must see.
//
// Names follow transport.CheckName, at most 127 characters so that
// "<topic>.<group>" fits Pub/Sub's 255; topics must also start with a
// letter, have at least 3 characters and not start with "goog"
// (transport.ErrInvalidName otherwise). StartOldest cannot reach messages
// published before a subscription existed (Replay is false) and behaves as
// StartNew.
//
// Message.ID travels in the attribute "courier-id" (Pub/Sub assigns its
// own message ID, which is used as Message.ID for messages published
// without that attribute), headers are the other attributes, Key is the
// ordering key, Payload the data, and received messages carry Topic, Time
// (the publish time Pub/Sub stamped) and, with a native dead-letter
// policy, Attempt.
//
// # Limits
//
// Checked before anything is sent, as a *transport.LimitError: a payload
// or whole message of at most 9,998,976 bytes (Pub/Sub's 10 MB request
// less room for the topic name and framing), and exactly: the encoded
// message within the request; 99 headers (100 attributes, one is the ID);
// header names of at most 256 bytes and values of at most 1024; an ID of at
// most 1024 bytes and a key of at most 1024. Header names "courier-id" and
// "goog..." and ID, Key or header values that are not valid UTF-8
// (attributes are protobuf strings) fail with transport.ErrInvalidMessage.
//
// # As
//
// Transport.As accepts *(*pubsub.Client), *(*apiv1.TopicAdminClient) and
// *(*apiv1.SubscriptionAdminClient); Transport.Publisher(topic) returns the
// *pubsub.Publisher the transport uses for a topic. A received message's As
// accepts *(*pubsub.Message) and *(*pubsub.Subscriber); do not Ack or Nack
// the native message yourself: the handler's result settles it.
//
// # Errors
//
// ErrNotExist (create=false and a topic or subscription is missing),
// ErrConflict (an existing subscription contradicts the options), the
// transport package's ErrClosed, ErrLimit, ErrInvalidName,
// ErrInvalidMessage and ErrUnsupported, and context errors unwrapped. The
// client library's gRPC errors stay reachable with errors.As (a
// GRPCStatus() method) and status.Code.
//
// # Concurrency
//
// A Transport is safe for concurrent use. Each Subscribe runs
// receive_goroutines streams; handlers run up to Concurrency at once (one
// at a time by default, although the client library calls back from many
// goroutines), with at most MaxInFlight messages received and not yet
// settled, which is also the client's MaxOutstandingMessages. Close stops
// at once: it cancels handlers' contexts, nacks what they did not finish,
// makes waiting Publish calls return ErrClosed, and returns when
// everything has stopped and the client is closed. Shutdown(ctx) stops
// pulling, lets handlers finish and their acks land, waits for running
// Publish calls and flushes the publishers; when ctx ends first it
// continues as Close and returns ctx.Err(). Both are idempotent.
//
// # Capabilities
//
// Persistent, Redelivery, DelayedNack (by lease holding, above), OrderedByKey,
// DeadLetter, BrokerTime and LeaseExtension are true. AttemptCount is true
// only with Options.DeadLetterTopic. Replay is false: a subscription starts
// at its creation, and reaching older messages needs topic retention and a
// seek, which this transport does not do.
//
// # Lag and health
//
// Transport implements transport.Pinger and, so that callers can tell,
// transport.LagReporter, whose Lag always fails with an error matching
// transport.ErrUnsupported (ErrClosed after Close, *transport.NameError
// for an invalid name, a usage error without a group) and makes no round
// trip. Pub/Sub has no backlog count in its data plane or its admin API:
// a subscription's backlog exists only as the Cloud Monitoring metrics
// pubsub.googleapis.com/subscription/num_undelivered_messages and
// oldest_unacked_message_age (sampled once a minute), which need the
// Monitoring API, its credentials and its quota; pstest has neither. The
// error names the subscription ("projects/<p>/subscriptions/<topic>.<group>")
// to look up there.
//
// Ping(ctx) is one ListTopics of the project with a page size of 1 (IAM:
// pubsub.topics.list, in roles/pubsub.viewer and roles/pubsub.editor),
// made without the client library's retries so that an unreachable
// Pub/Sub fails at once (codes.Unavailable) rather than after ctx. It
// returns nil when Pub/Sub answered (no topics is fine), ctx.Err() when
// ctx ends first, transport.ErrClosed after Close or Shutdown, also when
// Close interrupts it, else the gRPC error wrapped (status.Code works).
//
// # Emulators and tests
//
// The tests run in-process against cloud.google.com/go/pubsub/v2/pstest on
// 127.0.0.1, or against $PUBSUB_EMULATOR_HOST when set. pstest's known
// gaps: it ignores retry policies (backoff), so redelivery there is always
// immediate; it delivers about one message per stream every 10ms (hence
// receive_goroutines=16 in the tests); its gRPC server takes requests of
// at most 4 MiB, so larger messages are tested only up to 3 MiB there; it
// counts delivery attempts per published message across all
// subscriptions of the topic rather than per subscription, so Attempt is
// only meaningful there with one subscription per topic; it keeps its state
// in memory only, so the conformance suite's broker-restart case does not
// run (there is nothing to restart into); and it ignores StreamingPull flow
// control, sending into every open stream until gRPC's windows fill, so
// with many streams a backlog piles up in gRPC buffers (about 5 MB of an
// 8 MB backlog with 16 streams; the conformance suite therefore runs on
// the default 4 streams), where real Pub/Sub stops at the subscriber's
// MaxOutstandingMessages per stream.
//
// # Performance
//
// Measured with go test -run '^$' -bench . -benchtime 2s -count 2 on
// pstest, in-process, on a shared 2-core machine (Intel Xeon, linux/amd64,
// load average 7 to 10 from other builds), 64-byte payloads. The raw
// pubsub/v2 client and the adapter run in the same benchmark, taking turns
// in rounds of 1000 messages so that both see the same load; pstest, not
// the client, bounds most of these figures:
//
//	publish, 100 per call, awaited   raw 79,800 / 44,400 msg/s   adapter 79,500 / 44,000 msg/s   99.6% / 98.9%
//	  CPU per message (whole process, pstest included): raw 15.2 / 17.4 µs, adapter 16.0 / 17.2 µs
//	publish, 1 per call, 4 goroutines raw 352 / 352 msg/s          adapter 350 / 358 msg/s          99.5% / 101.9%
//	  (bound by the client's 10ms publish_delay: lower it where latency matters more than batching)
//	drain a backlog, 16 streams,      raw 1,464 / 1,493 msg/s      adapter 1,604 / 1,516 msg/s      110% / 102%
//	  64 outstanding, 16 handlers      (bound by pstest's one message per stream per 10ms)
//	conformance.Bench end to end      340 / 352 msg/s (4 publishers, 16 handlers), ~15.8 KB and ~250 allocs per message
//
// The two figures of each row are the two runs; single runs on this
// machine vary by a factor of two with the load, the ratios much less.
package gcppubsubtransport
