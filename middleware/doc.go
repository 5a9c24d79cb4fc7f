// Package middleware holds courier's consumer middleware and publisher
// decorators: what turns a broker client into a service that survives
// production. Each middleware is a constructor taking an Options struct
// whose zero value is sensible and returning a message.Middleware.
//
// # The recommended stack
//
// Recommended(StackOptions{...}) returns it, outermost first; every
// middleware's doc says how it interacts with the others:
//
//	CorrelationID  every message carries a correlation ID before anything logs or publishes
//	Logging        one line per final outcome (optional)
//	Redelivery     second-level retry: a failed delivery goes back to the broker with a growing delay
//	DeadLetter     Permanent error or attempt N: publish to <topic>.dlq, then ack
//	Idempotency    run once per message ID and group (optional; needs a store)
//	CircuitBreaker refuse work while the downstream is failing
//	Retry          in-process attempts, exponential backoff with full jitter
//	RateLimit      each attempt waits for a token (optional)
//	Timeout        a fresh deadline per attempt
//	Recover        a panic becomes an error with its stack
//
// Why this order: Logging outside everything sees the final outcome.
// Redelivery outside DeadLetter counts attempts (filling Message.Attempt
// where the transport does not) before DeadLetter judges them. DeadLetter
// outside Idempotency, so a dead-lettered message is not marked processed.
// Idempotency outside the breaker and Retry: one claim covers every
// in-process attempt, and a message refused by an open breaker releases
// its claim. The breaker outside Retry counts one failure per delivery
// and does not burn retries while open. RateLimit and Timeout inside
// Retry act per attempt, RateLimit outside Timeout so waiting for a token
// does not eat the deadline. Recover innermost turns a panic into an
// ordinary error that Retry, the breaker and DeadLetter handle. The
// end-to-end tests (e2e_test.go) run this stack on the router and the
// mem transport through the failure flows: a transient failure recovers
// after retries; a persistent one lands in the dead-letter topic with the
// reason after exactly N delivery attempts; a poison message goes there at
// once; the breaker opens, half-opens and closes without losing a
// message; duplicates run once; a shutdown in the middle of a retry
// backoff loses nothing.
//
// # Interaction with the transport
//
// The transport's Dispatcher (transport.Dispatcher, under every adapter)
// already recovers panics, nacks errors with the delay of
// message.RetryAfter (or SubscribeOptions.NackDelay), and dead-letters a
// Permanent error or the MaxAttempts-th failure to
// SubscribeOptions.DeadLetterTopic. The middleware are the richer,
// router-level versions and act first:
//
//   - DeadLetter acks what it dead-letters, so the transport never sees
//     those errors; configure dead-lettering in one place (the
//     middleware, for its headers and first/last failure times, or the
//     transport, for a broker-native dead-letter queue). If both are set
//     the middleware wins. A failed dead-letter publish returns a
//     retryable error: the transport nacks, nothing is lost.
//   - Redelivery sets the nack delay with message.RetryAfter; the
//     transport applies it where it declares Capabilities.DelayedNack.
//     Where it does not, Redelivery holds the message in process for the
//     delay, then lets it be nacked (RedeliveryMode).
//   - Messages refused by the breaker (ErrBreakerOpen) or held by another
//     delivery (ErrInProgress) are nacked with a delay and never
//     dead-lettered by DeadLetter; the transport's own MaxAttempts,
//     however, counts those deliveries too: leave it at 0 when
//     DeadLetter is in the stack.
//   - Recover makes panics errors with a stack; the Dispatcher's and the
//     router's recovery remain the safety net for panics in middleware.
//
// # Idempotency stores
//
// IdempotencyStore is the interface (atomic claim with a token and a TTL,
// Done with a retention, Release by token); middleware/storetest is the
// suite every implementation passes. Implementations: MemoryStore (this
// package; in-process, bounded, O(1)), contrib/redisstore (Redis, shared
// by every process of a group), and the PostgreSQL inbox of the outbox
// package.
//
// # Publisher decorators
//
// PublisherMiddleware decorates a transport.Publisher; ChainPublisher
// chains them (first outermost), DecoratePublisher builds one.
// PropagateCorrelation stamps correlation and causation IDs from the
// context (router delivery or ContextWithCorrelationID); Validate rejects
// invalid messages before they reach the broker (ValidJSON is a ready
// check) — the producer side of poison-message prevention.
//
// # Time, contexts and shutdown
//
// Every wait (Retry's backoff, Redelivery's hold) ends early when the
// delivery's context ends or the Router drains, returning the last error
// so the message is nacked and redelivered later. Store updates and
// dead-letter publishes after the handler use context.WithoutCancel, so
// they land during shutdown. Tests drive all timing with testing/synctest.
//
// # Errors
//
// Sentinels (ErrBreakerOpen, ErrInProgress, ErrTimeout, ErrInvalid,
// ErrNoPublisher, ErrStoreClosed) are matched with errors.Is by the typed
// errors carrying details (BreakerOpenError, InProgressError,
// TimeoutError, ValidationError, DeadLetterError, PanicError). The
// handler's own error always stays reachable with errors.Is/As, and
// message.Permanent is honoured everywhere.
//
// # Performance
//
// Measured on the project's 2-core machine while about eight other
// engineers' builds and tests ran on it (load average 8–12): wall time per
// op there mostly measures waiting for a core, so the benchmarks also
// report the process's CPU time per op (cpu-ns/op), the figure quoted
// here (medians of three runs; expect lower on an idle machine).
//
// BenchmarkMiddleware: each middleware alone around a no-op handler,
// called directly with a router delivery context, a new message ID per
// call (the bare call costs 11 ns):
//
//	Recover            +6 ns    0 allocs
//	CorrelationID     +57 ns    0 allocs (header map already present)
//	Logging (off)      +7 ns    0 allocs (logger drops every level)
//	Retry            +120 ns    1 alloc  (the per-attempt context)
//	Redelivery         +5 ns    0 allocs
//	DeadLetter         +5 ns    0 allocs
//	Idempotency      +645 ns    3 allocs (MemoryStore: scoped key, token, map growth)
//	CircuitBreaker   +185 ns    0 allocs (gobreaker: two clock reads, two locks)
//	Timeout          +180 ns    1 alloc
//	RateLimit (Inf)  +100 ns    0 allocs
//	Recommended     +1.3 µs     4 allocs (with the MemoryStore; Timeout folded into Retry)
//
// BenchmarkStackOnMem: publish → router → handler → ack on the mem
// transport, bare handler vs. Recommended with a MemoryStore, interleaved
// runs:
//
//	Concurrency 1:               0.75–1.0 µs vs 2.6–3.1 µs CPU per message → +1.6–2.0 µs, +6 allocs (4 → 10)
//	Concurrency 4:               1.27–1.35 µs vs 3.3–3.35 µs               → +2.0 µs,     +6 allocs
//	Concurrency 1, with headers: 2.2–2.5 µs vs 4.1–4.5 µs                  → +1.9 µs,     +4 allocs (10 → 14)
//	Concurrency 4, with headers: 2.7–3.5 µs vs 4.9–5.5 µs                  → +1.5–2.2 µs, +4 allocs
//
// (The headers variants publish one header, as real messages do;
// CorrelationID then adds to the existing map instead of allocating one.)
// The allocation budget of the issue (≤ 8 per message over a bare
// handler) is met; the time budget (≤ 1.5 µs) is not demonstrated on this
// loaded machine: the direct-call stack costs 1.2–1.3 µs CPU, and on the
// transport the difference grows by the garbage collector's share of the
// extra ~600 bytes per message and by cache misses (a CPU profile
// difference against the bare run shows the MemoryStore's and gobreaker's
// mutexes, five clock reads and the store's map probes on top).
// Idempotency with the MemoryStore is the largest single cost; without it
// the direct-call stack costs about 0.45 µs CPU and 1 allocation.
package middleware
