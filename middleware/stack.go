package middleware

import (
	"github.com/courierkit/courier/message"
)

// StackOptions configure Recommended. The zero value gives correlation,
// redelivery, dead-lettering, a circuit breaker, retry, a 30s timeout and
// panic recovery with their defaults; logging, idempotency and rate
// limiting are off until configured.
type StackOptions struct {
	Correlation CorrelationOptions
	// Logging, when set, adds Logging.
	Logging    *LoggingOptions
	Redelivery RedeliveryOptions
	DeadLetter DeadLetterOptions
	// Store, when set, adds Idempotency with it.
	Store       IdempotencyStore
	Idempotency IdempotencyOptions
	// Breaker, when set, is used by every handler the stack wraps (shared
	// among routes, its Check added to the router's health by you);
	// otherwise each handler the stack wraps — each route, when the stack
	// is router-level middleware — gets its own breaker made from
	// BreakerOptions (CircuitBreaker).
	Breaker        *Breaker
	BreakerOptions BreakerOptions
	Retry          RetryOptions
	// RateLimit, when set, adds RateLimit.
	RateLimit *RateLimitOptions
	Timeout   TimeoutOptions
	Recover   RecoverOptions
}

// Recommended returns the middleware stack in the recommended order,
// outermost first (pass it to router.Options.Middleware or message.Chain):
//
//  1. CorrelationID — every message has a correlation ID before anything
//     logs or publishes.
//  2. Logging — outside everything else, so its one line tells the final
//     outcome (acked, duplicate, dead-lettered, nacked with its delay).
//  3. Redelivery — turns what is left of a failure into a delayed nack,
//     and counts attempts (filling Message.Attempt where the transport
//     does not) before DeadLetter looks at them.
//  4. DeadLetter — at the attempt limit or on a Permanent error, publishes
//     and acks; outside Idempotency so a dead-lettered message is never
//     marked processed.
//  5. Idempotency — one claim per delivery, covering every in-process
//     attempt; skipped duplicates never touch the breaker.
//  6. CircuitBreaker — counts one failure per delivery (after retries) and
//     refuses work while open without burning retries or claims (the
//     claim is released).
//  7. Retry — in-process attempts with backoff and full jitter.
//  8. RateLimit — each attempt waits for its token (protects the
//     downstream; outside Timeout so waiting does not eat the deadline).
//  9. Timeout — a fresh deadline per attempt. Without RateLimit, Recommended
//     sets it as Retry's AttemptTimeout instead (same behaviour, one
//     context per attempt instead of two).
//  10. Recover — innermost, so a panic is an ordinary error that Retry,
//     the breaker and DeadLetter handle (with its stack in the reason).
//
// The transport's Dispatcher stays underneath as the last line: it
// recovers panics in middleware, nacks with the delay Redelivery set, and
// would dead-letter on its own only what reaches it Permanent (nothing,
// with DeadLetter in the stack).
//
// State: one Recommended call's middleware keep state that every route
// they wrap shares — Redelivery's and DeadLetter's per-message counts
// (keyed by consumer group and message ID), the idempotency store, the
// rate limiter (a shared budget), StackOptions.Breaker when set — while
// the breaker made from BreakerOptions is per route. Used as router-level
// middleware the stack also wraps a route that consumes a dead-letter
// topic, whose own failures would then be dead-lettered to
// "<topic>.dlq.dlq": give such a route route-level middleware and add the
// stack per route where routes must not share anything.
func Recommended(o StackOptions) []message.Middleware {
	mw := []message.Middleware{CorrelationID(o.Correlation)}
	if o.Logging != nil {
		mw = append(mw, Logging(*o.Logging))
	}
	mw = append(mw, Redelivery(o.Redelivery), DeadLetter(o.DeadLetter))
	if o.Store != nil {
		mw = append(mw, Idempotency(o.Store, o.Idempotency))
	}
	var breaker message.Middleware
	if o.Breaker != nil {
		breaker = o.Breaker.Middleware()
	} else {
		breaker = CircuitBreaker(o.BreakerOptions)
	}
	if o.RateLimit == nil {
		// Nothing between Retry and Timeout: let Retry's per-attempt
		// context carry the deadline (one context per attempt, not two).
		r := o.Retry
		if r.AttemptTimeout <= 0 {
			r.AttemptTimeout = o.Timeout.Timeout
			if r.AttemptTimeout <= 0 {
				r.AttemptTimeout = defaultTimeout
			}
		}
		return append(mw, breaker, Retry(r), Recover(o.Recover))
	}
	return append(mw, breaker, Retry(o.Retry), RateLimit(*o.RateLimit), Timeout(o.Timeout), Recover(o.Recover))
}
