// Package amqptransport is courier's RabbitMQ transport: AMQP 0-9-1 on
// github.com/rabbitmq/amqp091-go, registered for the amqp:// and amqps://
// schemes (blank-import it and call transport.Open), or built with New.
//
// # Topology
//
// A topic is a durable exchange named after it, of type topic by default
// (Options.ExchangeType: fanout, direct or headers). A group is a durable
// queue named "<topic>.<group>" (QueueName), bound to the exchange and of
// x-queue-type classic by default or quorum (Options.QueueType).
// Subscribers sharing a group consume the same queue and compete; each
// group gets every message routed to it. A subscription without a group
// gets a server-named exclusive, auto-delete classic queue that lives as
// long as its channel: it sees what is published while it runs and
// nothing from before, nor from a connection outage.
//
// Routing: the routing key is Message.Key, or the value of the header
// named by Options.RoutingKeyHeader. Group queues are bound with
// Options.BindingKeys (default "#", every message, on a topic exchange;
// "" on a direct exchange), overridable per group with
// Options.GroupBindingKeys (URL: group_binding_keys), so topic-exchange
// wildcards ("eu.*", "*.order.#") select what a group receives. A fanout
// exchange ignores
// keys; a headers exchange binds with Options.BindingHeaders and
// Options.BindingMatch (x-match all/any; no headers match everything).
// Topic and group names are limited to 100 characters so that queue names
// and their retry queues stay within AMQP's 255-byte short strings.
//
// Declare creates the exchange, the group's queue and its bindings ahead
// of any subscriber; Subscribe declares them too. Declaring against an
// existing exchange or queue with other settings (type, x-queue-type,
// x-dead-letter-exchange) fails with ErrTopology wrapping the broker's 406
// PRECONDITION_FAILED.
//
// # Delivery semantics
//
// At least once. Publish uses a confirm-mode channel with the mandatory
// flag and persistent delivery mode: it sends all messages of a call back
// to back (pipelined, no round trip per message) and returns once the
// broker confirmed every one. A message that no queue takes comes back as
// a basic.return and Publish fails with ErrUnroutable (unless
// Options.AllowUnroutable), naming how many and the first ID (the routable
// messages of that call were published and confirmed); a broker
// basic.nack fails with ErrNacked. When the connection is lost before the
// confirms arrive, Publish waits for the reconnect and resends exactly the
// unconfirmed messages, for up to Options.PublishRetry (30s) within its
// ctx; after that (or with NoPublishRetry) it fails with ErrUnconfirmed.
// A Publish that finds no connection waits for one, also at most
// PublishRetry. During a broker resource alarm (connection.blocked, a
// memory or disk alarm) Publish waits for the unblock before writing,
// bounded by its ctx and PublishRetry, instead of blocking in a socket
// write that ctx cannot interrupt; the alarm is logged. (A Publish already
// writing when the alarm starts can still wait for TCP flow control.)
// It never reports a message as published that the broker did not
// confirm; a resent message can arrive twice.
//
// Consuming sets basic.qos to SubscribeOptions.MaxInFlight (prefetch) and
// runs handlers through transport.Dispatcher (concurrency, per-key order,
// panics). A nil error acks (basic.ack) after the handler returns. An
// error nacks:
//
//   - with a delay (message.RetryAfter or SubscribeOptions.NackDelay), the
//     message is republished, with a confirm, to a retry queue and only
//     then acked. RabbitMQ 3.10 has no delayed-message plugin here, so the
//     delay is built from per-delay queues: "courier-retry.<queue>.<ms>ms"
//     (RetryQueueName) is a durable classic queue with x-message-ttl = the
//     delay, x-dead-letter-exchange = "" (the default exchange) and
//     x-dead-letter-routing-key = the source queue, so the broker moves an
//     expired message straight back to the queue it came from. Messages of
//     one queue share a TTL, so none waits behind a longer one. Delays are
//     rounded up to whole milliseconds and then to two significant digits
//     (1234ms → 1300ms): never shorter than asked, at most ~10% longer, and
//     a bounded number of queues (delays over RabbitMQ's largest TTL,
//     2^32-1 ms or about 49 days, are capped to it). A retry queue expires (x-expires) ten
//     minutes after its last use. If the republish fails, the message is
//     requeued at once instead (logged).
//   - without a delay, on a quorum queue: basic.nack with requeue (the
//     broker counts it in x-delivery-count); on a classic queue the message
//     is republished to the back of its queue with its attempt count and
//     then acked, because a classic queue does not count deliveries. The
//     cost: on a classic queue a nacked message moves behind messages that
//     arrived after it.
//   - a message.Permanent error, or MaxAttempts reached: published to
//     SubscribeOptions.DeadLetterTopic (with the courier-dlq-* headers) and
//     acked. A copy that those headers push over the header limit gets its
//     reason cut on a character boundary, ending in "…", or its reason,
//     time and attempts headers dropped, as far as needed to fit (logged
//     at Warn). The dead-letter topic needs a declared group: publishing to
//     it is mandatory like any other, and while it fails the message is
//     kept (nacked, logged) rather than lost. Without a DeadLetterTopic
//     and with Options.DeadLetterExchange
//     set, basic.reject without requeue, so the broker dead-letters it
//     natively into that exchange (x-death headers); otherwise dropped and
//     logged.
//
// Attempts: Message.Attempt is 1 + the attempts carried in the
// x-courier-attempt header (set on every republish) + x-delivery-count
// (quorum queues) or, on a classic queue, 1 when the broker marks the
// delivery redelivered (after a consumer or connection died holding it:
// a lower bound there).
//
// Attempt so counts broker deliveries, not handler runs. On a quorum
// queue x-delivery-count also counts a message the broker pushed ahead of
// the handlers (prefetch, up to MaxInFlight) and that went back to the
// queue unstarted when a subscription stopped (gracefully or not: its
// channel closes or it is nacked with requeue) or its channel was lost:
// each such stop can raise its Attempt by one without a handler having
// run it, and MaxAttempts can dead-letter it after fewer handler runs. On
// a classic queue such a message comes back marked redelivered, which
// counts one attempt (once, not per stop). When MaxAttempts matters, keep
// MaxInFlight near Concurrency, so few messages wait prefetched.
//
// Unacked messages return to their queue when the channel closes (crash,
// Close, connection loss); RabbitMQ never redelivers while the channel
// lives, so SubscribeOptions.AckWait is not used and a slow handler keeps
// its message (LeaseExtension), up to the broker's consumer_timeout (30
// minutes by default), after which the broker closes the channel and the
// subscription resumes on a new one.
//
// # Connection and channel loss
//
// A Transport holds two AMQP connections, named ConnectionName+"-publish"
// and ConnectionName+"-consume": RabbitMQ stops reading from connections
// that publish while a memory or disk alarm is in force, and consumers'
// acks must keep flowing then (RabbitMQ's own advice). When either closes
// without Close (broker restart, network, rabbitmqctl close_connection),
// the Transport reconnects it with exponential backoff (Options.ReconnectMin 100ms to
// ReconnectMax 5s, cenkalti/backoff), every Subscribe re-opens its channel,
// re-declares its topology and consumes again, and Publish resends what was
// unconfirmed. A consumer channel closed on its own (its queue deleted, a
// consumer_timeout) is re-opened the same way. A re-declaration that the
// broker refuses for conflicting settings ends that Subscribe with the
// ErrTopology error (logged) rather than leaving a dead consumer.
//
// # URL
//
//	amqp://user:password@host:5672/vhost?param=value&...
//	amqps://user:password@host:5671/vhost?ca_file=/etc/ca.pem
//
// Credentials come from the URL or Options.Username/Password; they never
// appear in errors or logs. Parameters (an unknown one is an error naming
// the accepted ones):
//
//	username, password      override the URL's user name, password (each alone keeps the other)
//	connection_name         client connection name (default courier)
//	heartbeat               AMQP heartbeat (default 10s)
//	dial_timeout            TCP connect + handshake bound (default 30s)
//	exchange_type           topic | fanout | direct | headers (default topic)
//	queue_type              classic | quorum (default classic)
//	binding_keys            comma-separated binding keys (default "#" for topic, "" for direct)
//	group_binding_keys      per-group keys: group:key|key,group:key (default none)
//	binding_headers         name:value,... for a headers exchange (default none: match all)
//	binding_match           all | any (default all)
//	routing_key_header      header whose value is the routing key (default: Message.Key)
//	dead_letter_exchange    x-dead-letter-exchange of group queues (default none)
//	allow_unroutable        accept unroutable publishes (default false)
//	publish_channels        confirm channels publishing at once (default 4)
//	publish_retry           how long Publish resends across a reconnect (default 30s)
//	no_publish_retry        fail at once with ErrUnconfirmed instead (default false)
//	reconnect_min           first reconnect backoff (default 100ms)
//	reconnect_max           largest reconnect backoff (default 5s)
//	max_payload             largest body, as the broker's max_message_size (default 128 MiB)
//	ca_file, cert_file, key_file, server_name, insecure_skip_verify
//	                        TLS settings, amqps:// only (default: system roots)
//
// Options.TLSConfig (beyond the file parameters) and Options.Logger are
// set in Go only.
//
// # Message mapping
//
// Message.ID is the message-id property; the content-type,
// ce-correlationid and ce-type headers travel as the content-type,
// correlation-id and type properties (when non-empty and at most 255
// bytes; otherwise in the table); Key travels in the x-courier-key header;
// every other header is a long-string entry of the AMQP header table. On
// receipt these come back as the same headers; values of other AMQP types
// (from non-courier publishers) are formatted with fmt. The timestamp
// property is set to the publish time (client clock, seconds) and becomes
// Message.Time; it is not broker time, so Capabilities.BrokerTime is false.
// Header names the transport or broker own are refused at publish
// (ErrInvalidMessage): x-courier-*, x-death, x-first-death-*,
// x-last-death-*, x-delivery-count, and CC/BCC (RabbitMQ would route on
// them); they are also removed from received headers. Header names are at
// most 255 bytes, and ID, key and headers together at most 120 KiB (they
// travel in one content-header frame of frame_max 128 KiB).
//
// # As
//
// Transport.As accepts **amqp091.Connection (the current consuming
// connection) and *Connections (both, publishing and consuming); they
// change after a reconnect, and As reports false while one is
// reconnecting. A received Message's As accepts
// *amqp091.Delivery (the delivery as received) and **amqp091.Channel (the
// channel it arrived on; settle only through the handler's return value).
//
// # Errors
//
// ErrUnroutable, ErrNacked, ErrUnconfirmed, ErrTopology and
// ErrUnknownGroup (Lag of a group without a queue); transport
// sentinels (ErrClosed, ErrLimit, ErrInvalidName, ErrInvalidMessage,
// ErrUnsupported for StartOldest); the *amqp091.Error from the broker stays
// reachable with errors.As. A cancelled ctx returns ctx.Err() itself.
//
// # Lag and health
//
// Transport implements transport.LagReporter and transport.Pinger.
// Lag(ctx, topic, group) is a passive queue.declare of the group's queue
// "<topic>.<group>" on a short-lived channel of the consuming connection:
// Pending is the queue's ready message count from declare-ok. It never
// creates anything; a missing queue is ErrUnknownGroup naming topic, group
// and queue (the broker's 404 NOT_FOUND reachable with errors.As), and the
// broker closing that channel for the failed declare affects no other
// channel or connection. InFlight is always -1: AMQP 0-9-1 reports only
// ready messages, and the count of delivered-but-unacked messages is only
// available from the management plugin's HTTP API, which this transport
// does not use (it needs the plugin, another port and credentials).
// Messages nacked with a delay wait in their retry queue and are not in
// Pending until they come back. Partitions is nil. Lag waits for a
// reconnect within ctx.
//
// Ping(ctx) opens a channel on the consuming connection and closes it, a
// broker round trip each way. It fails at once while that connection is
// reconnecting, returns transport.ErrClosed once Close or Shutdown has
// begun, and ctx.Err() when ctx ends first. The publishing connection is
// not probed: during a resource alarm the broker stops reading from it on
// purpose, and Publish waits for the alarm to clear. Both calls are safe
// for concurrent use; a broker that stops answering holds them only until
// ctx ends.
//
// Measured (BenchmarkLagPing, -benchtime=300x, RabbitMQ on loopback, 2
// cores shared with other work): Lag 0.60-0.66 ms, Ping about 0.50 ms per
// call (channel open and close dominate both).
//
// # Concurrency
//
// A Transport is safe for concurrent use. Publish calls run in parallel on
// up to Options.PublishChannels confirm channels, each used by one call at a
// time; further calls wait for a free one. Each Subscribe has its own
// channel. Close is immediate and idempotent (handlers' contexts are
// cancelled; their messages return to the queue; the AMQP close handshake
// waits at most 2s for an unresponsive broker); Shutdown stops the
// consumers (basic.cancel), lets running handlers finish and land their
// acks, waits for running Publish calls and for the channels' close
// handshakes (at most 2s more), and closes.
//
// # Closing order
//
// RabbitMQ forgets a channel once it has closed it (on the client's
// channel.close, or its own after close-ok); a frame that reaches it
// afterwards on that channel number — an ack, a basic.cancel, anything
// but channel.open — is a connection error: 504 CHANNEL_ERROR "expected
// 'channel.open'", which ends the whole connection and every
// subscription on it. amqp091-go does not prevent that: a frame sent by
// one goroutine while another waits for close-ok still goes out. So the
// adapter orders its own frames: a subscription's basic.cancel is
// answered before its channel.close is sent; handlers' settles on a
// consumer channel that is being closed fail with amqp091.ErrClosed
// without being sent (the broker requeues those deliveries, so nothing is
// lost; the Dispatcher logs the failed settle); Shutdown lets every
// channel close, cancel and Ping/Lag channel finish before its
// connection.close; and once Close has begun nothing more is sent on a
// consumer channel. (RabbitMQ 3.10 ignores channel frames that arrive
// after the connection.close; other versions and proxies need not.)
//
// Before 2026-11-22 a subscription's basic.cancel and channel.close ran
// in two goroutines started one after the other, and Go runs the newer
// one first when the starter does not block: in a test of 25 shutdown
// rounds of 4 subscriptions, 2-13 basic.cancel frames followed their
// channel's channel.close and 15-122 basic.cancel and channel.close
// frames followed the connection.close (three runs through a proxy that
// checks the order of the client's frames, closerace_test.go). When such
// a basic.cancel reached the broker after it had dropped the
// channel, while Close waited for close-ok, Shutdown returned
// "amqptransport: close: Exception (504) Reason: "CHANNEL_ERROR -
// expected 'channel.open'"": the demo (examples/demo) failed so in 16 of
// 300 runs, and the broker logged 18 such 504s, all on basic.cancel. The
// proxy test now finds no such frame, and the demo passed 300 of 300 runs
// with no 504 in the broker's log (2026-11-22, RabbitMQ 3.10.8 on
// loopback, 2 cores, load average 0.2-0.6; about 75 s each):
//
//	go test -race -count=300 -run TestDemoOnRabbitMQ ./examples/demo/
//	go test -count=1 -run 'TestShutdownSendsNothingAfterClose|TestCloseWhileBusy|TestCloseCrossedByChannelFrame|TestConsumerChanCloseStopsSettles' ./transport/amqp/
//
// The settle guard (a read lock and a flag) costs two atomic operations
// per settle: the drain benchmark's
// adapter/raw ratio was 91.5-97.9% (median 93.1%) with it against
// 92.9-98.9% (median 93.4%) without, three interleaved runs each
// (-bench 'DrainSideBySide/16B' -benchtime 20000x, load 0.6-1.7).
//
// Close and Shutdown report a close handshake that fails for a reason of
// the broker's (320 CONNECTION_FORCED, 541 INTERNAL_ERROR, 501
// FRAME_ERROR, an I/O error). They do not report a 504 CHANNEL_ERROR that
// ends the connection while their connection.close waits for close-ok:
// that comes from a frame for a channel the broker had dropped reaching
// it just ahead of the close — no longer one of the adapter's own, but
// still possible from an application's own use of the *amqp091.Channel
// it got from Message.As, or from a broker that treats frames after
// connection.close more strictly than RabbitMQ 3.10 — nothing is lost by it
// (unsettled deliveries return to their queues, every Publish has told
// its caller its outcome), and the connection was being closed anyway.
// It is logged at Warn with the connection's role and the broker's text.
// A 504 while the transport runs is a lost connection like any other:
// logged, reconnected, subscriptions resumed.
//
// # Capabilities
//
// Persistent, Redelivery, DelayedNack (retry queues), AttemptCount,
// OrderedByKey (per subscriber, through the Dispatcher; queues are FIFO),
// DeadLetter and LeaseExtension are true. Replay is false: a queue holds
// only what was routed to it after it was declared (streams, which could
// replay, are not used). BrokerTime is false: RabbitMQ does not stamp
// messages (Message.Time is the publisher's timestamp property).
//
// # Performance
//
// Measured 2026-11-22 on the project's machine: 2 cores (Intel Xeon),
// shared with other engineers' builds and tests (load average 3-5 during
// these runs; single figures still swing by ±20%), RabbitMQ 3.10.8 on the
// same host, persistent messages, durable classic queue, publisher
// confirms, mandatory, prefetch 64, batches of 100 messages per Publish,
// three runs each (see bench_test.go):
//
//	go test -run '^$' -bench 'SideBySide' -benchtime 20000x -count 3 ./transport/amqp/
//
//	                  raw amqp091-go      adapter             adapter/raw per run
//	publish 16 B      7.3k-13.6k msg/s    8.6k-12.8k msg/s    90%, 94%, 118%
//	publish 1 KiB     10.9k-12.2k msg/s   10.9k-11.9k msg/s   97%, 97%, 101%
//	drain 16 B        26.4k-41.3k msg/s   25.5k-39.9k msg/s   97%, 97%, 98%
//	drain 1 KiB       14.6k-16.5k msg/s   13.5k-15.6k msg/s   87%, 94%, 99%
//
// The side-by-side benchmarks alternate raw and adapter in chunks of 1000
// messages within one run (the drain backlogs filled interleaved) so that
// load from elsewhere hits both alike; the median ratios are 94-97%. The
// broker, not the client, is the bottleneck: a CPU profile shows the test
// process busy ~3% (publish) and ~11% (drain) of the wall time. Earlier
// runs under load average 11-13 gave the same picture at a third of the
// rates (medians 96-105%).
//
// End to end (conformance.Bench: 4 publishers, batches of 100, one
// subscription, publish → handler → ack, -benchtime 3000x): 5.5k-7.7k
// msg/s at 16 B and 6.4k-6.7k msg/s at 1 KiB, 77 allocations per message.
//
// Latency at a fixed offered rate of 1000 msg/s (one message per Publish
// from 8 publishers, measured from each message's scheduled send time to
// its handler, 5000 messages, three runs): p50 0.86-1.22 ms for the
// adapter against 0.89-1.26 ms raw; p99 5-107 ms against 17-110 ms raw,
// set by load spikes from the machine's other jobs rather than by either
// client.
package amqptransport
