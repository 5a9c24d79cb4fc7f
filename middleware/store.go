package middleware

import (
	"context"
	"errors"
	"time"
)

// ClaimState is what IdempotencyStore.Claim found for a key.
type ClaimState int

const (
	// Claimed: the key was free (never seen, released, or its previous
	// claim expired) and now belongs to the caller's token until the claim
	// TTL passes. The caller runs the handler, then calls Done on success
	// or Release on failure.
	Claimed ClaimState = iota + 1
	// InProgress: another token holds an unexpired claim (a concurrent
	// delivery of the same message is running). The caller must not run
	// the handler; the Idempotency middleware nacks with a delay so the
	// message comes back after the other delivery settled.
	InProgress
	// Processed: the key was marked Done and its record has not expired.
	// The caller must not run the handler; the message is acked.
	Processed
)

func (s ClaimState) String() string {
	switch s {
	case Claimed:
		return "claimed"
	case InProgress:
		return "in-progress"
	case Processed:
		return "processed"
	}
	return "ClaimState(?)"
}

// ErrStoreClosed is returned by an IdempotencyStore used after Close.
var ErrStoreClosed = errors.New("middleware: idempotency store closed")

// IdempotencyStore remembers which messages a consumer group has processed,
// so the Idempotency middleware runs a handler once per message under
// at-least-once delivery. Keys arrive already scoped to the consumer group
// (see IdempotencyOptions.Key); a store treats them as opaque strings of at
// most 512 bytes.
//
// A key is in one of three states: free (absent or expired), claimed by a
// token until an expiry time, or processed until an expiry time. Every
// method is safe for concurrent use from many processes sharing the store,
// and each is atomic with respect to the others on the same key:
//
//   - Claim(key, token, ttl): if the key is free, it becomes claimed by
//     token until now+ttl and Claim returns Claimed. If it is claimed by
//     another unexpired token it returns InProgress; if it is processed,
//     Processed. Claiming again with the token that already holds the claim
//     returns Claimed and extends the claim. Two concurrent Claims of a
//     free key: exactly one returns Claimed. An expired claim counts as
//     free — that is how a crash mid-handler unblocks the message.
//   - Done(key, token, retention): the key becomes processed until
//     now+retention, whoever holds the claim (the handler ran to success,
//     so its effects exist even when the claim lapsed meanwhile and another
//     token took it). A retention <= 0 means the store's default.
//   - Release(key, token): if the key is claimed by token, it becomes free;
//     otherwise (claimed by another token, processed, free) nothing
//     changes. Release never removes a Processed record.
//
// Tokens are opaque non-empty strings of at most 64 bytes, unique per
// delivery attempt. Time is the store's own clock (Redis server time,
// PostgreSQL now()), so processes with skewed clocks agree. Errors are
// returned as they are (wrapped with %w); a cancelled ctx returns
// ctx.Err(). middleware/storetest holds a test suite every implementation
// should pass.
type IdempotencyStore interface {
	Claim(ctx context.Context, key, token string, ttl time.Duration) (ClaimState, error)
	Done(ctx context.Context, key, token string, retention time.Duration) error
	Release(ctx context.Context, key, token string) error
}
