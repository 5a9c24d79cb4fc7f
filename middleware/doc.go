// Package middleware holds courier's consumer middleware (retry,
// redelivery, dead-letter, circuit breaker, idempotency, timeout, recover,
// rate limit, correlation, logging) and publisher decorators.
package middleware
