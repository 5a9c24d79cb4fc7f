package middleware

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/courierkit/courier/message"
)

// IdempotencyOptions configure Idempotency.
type IdempotencyOptions struct {
	// Key returns the de-duplication key of a message. Default: its ID.
	// A key function lets a business identity (an order number in a
	// header) de-duplicate messages published twice with different IDs.
	// An empty key runs the handler without de-duplication.
	Key func(*message.Message) string
	// Scope prefixes every key, so each consumer group keeps its own
	// record ("processed by this group"). Default: the Router route's
	// group; for a route without a group (a private subscription: every
	// process gets every message) a scope private to this process and
	// route, so that processes sharing a store do not skip each other's
	// copies; outside a Router, no prefix. Stored keys are scope + "/" +
	// key.
	Scope string
	// ClaimTTL is how long a claim lasts: a delivery whose process
	// crashed mid-handler blocks the message for at most this long. Keep
	// it above the longest handler run including in-process retries.
	// Default 5m.
	ClaimTTL time.Duration
	// Retention is how long a processed key is remembered; duplicates
	// arriving later run again. Default 24h.
	Retention time.Duration
	// InProgressDelay is the redelivery delay (message.RetryAfter) of a
	// message that another delivery is processing right now. Default 5s.
	InProgressDelay time.Duration
	// FailOpen runs the handler without de-duplication when the store
	// fails on Claim. Default false: the message is nacked (the store
	// error is returned) and comes back later.
	FailOpen bool
	// StoreTimeout bounds each store call: Claim, and Done and Release,
	// which ignore the handler's cancellation (so they land during
	// shutdown) but must not hang on an unreachable store. Default 10s.
	// (The MemoryStore never waits.)
	StoreTimeout time.Duration
	// Logger gets store failures that do not fail the message (Done or
	// Release failing). Default nil: discards.
	Logger *slog.Logger
	// OnDuplicate, when set, is called for a message skipped because its
	// key was already processed, with the handler's ctx
	// (courierotel.Instrumentation.OnDuplicate fits). Default nil.
	OnDuplicate func(ctx context.Context, m *message.Message)
}

// Idempotency runs the handler at most once per key (by default the
// message ID) and scope (by default the consumer group), across
// redeliveries, duplicates published upstream and concurrent deliveries
// in any number of processes sharing store:
//
//   - Claim → Processed: the message was handled before; it is acked
//     without running the handler.
//   - Claim → InProgress: another delivery of it is running; it is nacked
//     with InProgressDelay (an error matching ErrInProgress), and when it
//     comes back the other delivery has finished.
//   - Claim → Claimed: the handler runs. Success marks the key Done (kept
//     for Retention); a failure or a panic releases the claim so a
//     redelivery runs the handler again; a crash leaves the claim to
//     expire after ClaimTTL.
//
// Done and Release use context.WithoutCancel, bounded by StoreTimeout, so
// they land during shutdown. When Done fails the message is still acked (the handler's
// effects exist) and the failure logged: a later duplicate may then run
// again. A handler's effects and the Done mark are not one transaction;
// for exactly-once effects in a database, use the outbox package's inbox,
// which implements IdempotencyStore inside the handler's transaction.
//
// Place it outside CircuitBreaker and Retry (one claim covers all
// in-process attempts, and a refused message releases its claim) and
// inside DeadLetter (a dead-lettered message is not marked processed).
func Idempotency(store IdempotencyStore, opts IdempotencyOptions) message.Middleware {
	o := opts
	if o.ClaimTTL <= 0 {
		o.ClaimTTL = 5 * time.Minute
	}
	if o.Retention <= 0 {
		o.Retention = 24 * time.Hour
	}
	if o.InProgressDelay <= 0 {
		o.InProgressDelay = 5 * time.Second
	}
	if o.StoreTimeout <= 0 {
		o.StoreTimeout = 10 * time.Second
	}
	log := o.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	mem, _ := store.(*MemoryStore) // exactly a MemoryStore: a wrapper's overrides must run
	return func(next message.Handler) message.Handler {
		return message.HandlerFunc(func(ctx context.Context, m *message.Message) (err error) {
			key := m.ID
			if o.Key != nil {
				key = o.Key(m)
			}
			if key == "" {
				return next.Handle(ctx, m)
			}
			c := claimCall{store: store, mem: mem, scope: scopeOf(ctx, o.Scope), key: key, timeout: o.StoreTimeout}
			state, cerr := c.claim(ctx, o.ClaimTTL)
			if cerr != nil {
				if o.FailOpen && ctx.Err() == nil {
					log.WarnContext(ctx, "courier: idempotency claim failed; running the handler without de-duplication", "message_id", m.ID, "key", c.scoped(), "error", cerr)
					return next.Handle(ctx, m)
				}
				if ctx.Err() != nil {
					return ctx.Err()
				}
				return fmt.Errorf("middleware: idempotency claim of %q: %w", c.scoped(), cerr)
			}
			switch state {
			case Processed:
				setOutcome(ctx, "duplicate")
				if o.OnDuplicate != nil {
					o.OnDuplicate(ctx, m)
				}
				return nil
			case InProgress:
				setOutcome(ctx, "in-progress")
				return message.RetryAfter(&InProgressError{Key: c.scoped()}, o.InProgressDelay)
			case Claimed:
			default:
				return fmt.Errorf("middleware: idempotency store returned unknown claim state %d", state)
			}
			released := false
			defer func() {
				if !released {
					// The handler panicked: release, then let the panic
					// go on to Recover or the transport.
					_ = c.release(ctx)
				}
			}()
			err = next.Handle(ctx, m)
			released = true
			if err != nil {
				if rerr := c.release(ctx); rerr != nil {
					log.WarnContext(ctx, "courier: idempotency release failed; the message waits for the claim to expire", "message_id", m.ID, "key", c.scoped(), "claim_ttl", o.ClaimTTL, "error", rerr)
				}
				return err
			}
			if derr := c.done(ctx, o.Retention); derr != nil {
				log.ErrorContext(ctx, "courier: idempotency done failed; a duplicate of this message may run again", "message_id", m.ID, "key", c.scoped(), "error", derr)
			}
			return nil
		})
	}
}

// claimCall is one delivery's claim. With a *MemoryStore it takes the
// store's fast path: the scoped key is hashed without building it, the
// token is a sequence number, and Done and Release skip the context (as
// context.WithoutCancel would) — no allocation. Any other store gets the
// scoped key string and a token string through IdempotencyStore.
type claimCall struct {
	store      IdempotencyStore
	mem        *MemoryStore
	scope, key string
	skey       string // scope + "/" + key, made on first use
	token      string
	hk         memKey
	tok        uint64
	timeout    time.Duration // of Done and Release
}

// scoped is the stored key (scope + "/" + key, or key without a scope).
func (c *claimCall) scoped() string {
	if c.skey == "" {
		c.skey = joinScope(c.scope, c.key)
	}
	return c.skey
}

func (c *claimCall) claim(ctx context.Context, ttl time.Duration) (ClaimState, error) {
	if c.mem != nil {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		c.hk, c.tok = c.mem.hashKey(c.scope, c.key), seqToken()
		return c.mem.claim(c.hk, c.tok, ttl)
	}
	c.token = newToken()
	cctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	st, err := c.store.Claim(cctx, c.scoped(), c.token, ttl)
	if err != nil {
		// The store may have taken the claim before the error (a reply
		// lost to a timeout): give it back, so the message does not wait
		// ClaimTTL as InProgress. Best effort; Release checks the token.
		_ = c.release(ctx)
	}
	return st, err
}

// done and release land during shutdown (context.WithoutCancel), within
// c.timeout.
func (c *claimCall) done(ctx context.Context, retention time.Duration) error {
	if c.mem != nil {
		return c.mem.done(c.hk, retention)
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.timeout)
	defer cancel()
	return c.store.Done(ctx, c.skey, c.token, retention)
}

func (c *claimCall) release(ctx context.Context) error {
	if c.mem != nil {
		return c.mem.release(c.hk, c.tok)
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.timeout)
	defer cancel()
	return c.store.Release(ctx, c.skey, c.token)
}

// InProgressError is the error for a message whose key another delivery
// holds. It matches ErrInProgress.
type InProgressError struct{ Key string }

func (e *InProgressError) Error() string {
	return fmt.Sprintf("middleware: message key %q is being processed by another delivery", e.Key)
}

// Is makes errors.Is(err, ErrInProgress) true.
func (e *InProgressError) Is(target error) bool { return target == ErrInProgress }

// scopeOf is the key scope: scope, else the Router route's group, else
// (a private subscription) the route's RouteID, unique to it in this
// process, else "" (outside a Router).
func scopeOf(ctx context.Context, scope string) string {
	if scope == "" {
		if d := routerDelivery(ctx); d != nil {
			scope = d.Group()
			if scope == "" {
				scope = d.RouteID() // made once per route: no per-message concatenation
			}
		}
	}
	return scope
}

func joinScope(scope, key string) string {
	if scope == "" {
		return key
	}
	return scope + "/" + key
}

var (
	tokenPrefix = func() string {
		var b [8]byte
		_, _ = rand.Read(b[:])
		return hex.EncodeToString(b[:]) + "-"
	}()
	tokenSeq atomic.Uint64
)

// newToken returns a claim token unique in this process and, with high
// probability, across processes: a random per-process prefix and a
// counter.
func newToken() string {
	var buf [48]byte
	b := append(buf[:0], tokenPrefix...)
	b = strconv.AppendUint(b, tokenSeq.Add(1), 36)
	return string(b)
}
