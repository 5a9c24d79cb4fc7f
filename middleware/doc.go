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
//   - Messages refused by the breaker (ErrBreakerOpen), held by another
//     delivery (ErrInProgress), handed back during a drain (ErrDraining)
//     or without a rate-limit token before their deadline
//     (ErrRateLimited) are nacked with a delay and never dead-lettered by
//     DeadLetter, which also subtracts such refusals (as this process saw
//     them) from a counting transport's Message.Attempt. The transport's
//     own MaxAttempts, however, counts those deliveries too: leave it at 0
//     when DeadLetter is in the stack. A delivery whose context was
//     cancelled (a hard stop) is neither counted nor dead-lettered: it
//     goes back to the broker; one whose context passed its deadline
//     failed like any other.
//   - State shared across routes: one Recommended call's middleware,
//     used as router-level middleware, share their per-message counts,
//     store and rate limiter among the routes; the breaker is per route
//     unless StackOptions.Breaker (or NewBreaker's Middleware) shares one.
//   - Recover makes panics errors with a stack; the Dispatcher's and the
//     router's recovery remain the safety net for panics in middleware.
//
// # Idempotency stores
//
// IdempotencyStore is the interface (atomic claim with a token and a TTL,
// Done with a retention, Release by token); middleware/storetest is the
// suite every implementation passes. Implementations: MemoryStore (this
// package; in-process, bounded, O(1), keeps keyed 128-bit hashes of the
// keys in pointer-free maps, sharded), contrib/redisstore (Redis, shared
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
// Every wait (Retry's backoff, Redelivery's hold, RateLimit's token) ends
// early when the delivery's context ends or the Router drains, returning
// an error so the message is nacked and redelivered later. Store updates
// and dead-letter publishes after the handler use context.WithoutCancel,
// so they land during shutdown, bounded by IdempotencyOptions.StoreTimeout
// (10s) and DeadLetterOptions.PublishTimeout (30s). Tests drive all timing
// with testing/synctest.
//
// # Errors
//
// Sentinels (ErrBreakerOpen, ErrInProgress, ErrDraining, ErrRateLimited,
// ErrTimeout, ErrInvalid, ErrNoPublisher, ErrStoreClosed) are matched with errors.Is by the typed
// errors carrying details (BreakerOpenError, InProgressError,
// TimeoutError, ValidationError, DeadLetterError, PanicError). The
// handler's own error always stays reachable with errors.Is/As, and
// message.Permanent is honoured everywhere.
//
// # Performance
//
// Measured 2026-11-23, 00:15–00:17 UTC, on the project's 2-core machine
// (a Firecracker VM on AMD EPYC, Go 1.26) with nothing else running (load
// average 1.1–1.7, the benchmark itself), from prebuilt test binaries.
//
// Per middleware (BenchmarkMiddleware: each alone around a no-op handler,
// called directly with a Router delivery context and a new message ID per
// call; the range of 3 runs minus the bare call, which costs 10–13 ns):
//
//	go test -run '^$' -bench 'BenchmarkMiddleware' -benchmem -benchtime 500000x -count 3 ./middleware/
//
//	Recover              +8–10 ns   0 allocs
//	CorrelationID       +37–42 ns   0 allocs (header map already present)
//	Logging (off)        +5–16 ns   0 allocs (the logger drops every level)
//	Retry               +50–75 ns   1 alloc  (the per-attempt context, 80 B)
//	Redelivery           +2–5 ns    0 allocs
//	DeadLetter           +2–3 ns    0 allocs
//	Idempotency       +210–225 ns   0 allocs (MemoryStore)
//	CircuitBreaker    +125–130 ns   0 allocs (gobreaker: two locks, two time.Now)
//	Timeout            +97–115 ns   1 alloc  (its context; a time.Now)
//	RateLimit (Inf)      +4–7 ns    0 allocs
//	RateLimit (1e9/s)     +89 ns    0 allocs (a token taken with Allow: a lock, a time.Now)
//	Recommended       +610–710 ns   1 alloc  (all of the above in the recommended order)
//
// Most of what remains is the clock: on this VM time.Now costs about 45
// ns and a monotonic reading (time.Since) about 25 ns. gobreaker reads
// time.Now twice per message (90 of the breaker's ~125 ns), Retry once for
// the attempt deadline, the MemoryStore twice (Claim and Done). The
// breaker's cost can only shrink by replacing gobreaker.
//
// The target (issue 3): the full recommended stack (recover,
// correlation, logging off, retry, idempotency on the MemoryStore,
// breaker, dead-letter, timeout) adds at most 1.5 µs and 8 allocations
// per message over a bare handler, on the mem transport.
// BenchmarkStackPaired runs a bare router and a Recommended one side by
// side on two mem brokers (publish → router → handler → ack, 2
// publishers, the default backlog), 21 rounds; each round starts both
// afresh at a random heap offset and in random order (internal/memrig:
// where a rig's goroutines and objects land moves its cost by up to ±15 %
// for its whole life, so one long-lived pair would repeat one draw),
// runs N messages through each, alternating which goes first, and reports
// medians:
//
//	go test -run '^$' -bench 'StackPaired' -benchtime 200000x ./middleware/
//
//	two runs, ns/message     bare (median)         recommended (median)    overhead (median of the differences)
//	Concurrency 1            289–300 wall, 480–496 CPU   997–1017 wall, 1348–1373 CPU   +703/+717 wall, +889/+851 CPU, +2.9 allocs (3.1 → 6.0)
//	Concurrency 4            494–516 wall, 700–718 CPU   1403–1408 wall, 1945–2019 CPU  +887/+883 wall, +1280/+1217 CPU, +2.9 allocs
//	Conc. 1, one header      689–695 wall, 1298–1334 CPU 1357–1363 wall, 2177–2179 CPU  +664/+666 wall, +860/+843 CPU, +0.9 allocs (9.1 → 10.0)
//
// Re-run at 01:36–01:37 UTC on the session's final code (the audit fixes
// touch error paths only): Concurrency 1 +907/+860 ns wall, +1062/+1055
// CPU; Concurrency 4 +947/+972 wall; one header +656/+723 wall; +2.9
// allocations (+0.9 with a header). The machine ran about 15 % slower
// then (the bare path 331–357 ns against 289–300), as BenchmarkMiddleware
// showed too.
//
// The target holds with room at every variant: about 0.7–0.9 µs of the
// 1.5 µs, and 3 of the 8 allocations: Retry's per-attempt context and the
// correlation header map (two, only for a message that arrives without
// headers: with one header the stack adds one allocation). The fractional
// allocation counts are the mem transport's (its queue grows now and then).
//
// Where the remaining overhead goes (a CPU profile of BenchmarkStackOnMem,
// recommended minus bare): about a third is clock reads — gobreaker's
// two time.Now per message, Retry's one for the attempt deadline, the
// MemoryStore's two monotonic readings — then the MemoryStore's cache
// misses on its maps (one per new key, on the map write), the
// correlation header map and its share of GC, and the locks.
// BenchmarkStackOnMem is the older unpaired form of the same measurement.
package middleware
