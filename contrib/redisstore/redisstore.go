package redisstore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/courierkit/courier/middleware"
)

// Client is what the Store needs of a go-redis client: *redis.Client,
// *redis.ClusterClient, *redis.Ring and redis.UniversalClient have it.
type Client interface {
	redis.Scripter
	Set(ctx context.Context, key string, value any, expiration time.Duration) *redis.StatusCmd
}

// Options configure a Store. The zero value is usable.
type Options struct {
	// Prefix starts every Redis key the store writes. Default
	// "courier:idem:". Use one prefix per application sharing a Redis.
	Prefix string
	// DefaultRetention applies to Done calls with retention <= 0.
	// Default 24h.
	DefaultRetention time.Duration
}

// Store implements middleware.IdempotencyStore on Redis.
type Store struct {
	c         Client
	prefix    string
	retention time.Duration
}

var _ middleware.IdempotencyStore = (*Store)(nil)

// New returns a Store using c, which the caller keeps and closes.
func New(c Client, opts Options) *Store {
	if opts.Prefix == "" {
		opts.Prefix = "courier:idem:"
	}
	if opts.DefaultRetention <= 0 {
		opts.DefaultRetention = 24 * time.Hour
	}
	return &Store{c: c, prefix: opts.Prefix, retention: opts.DefaultRetention}
}

// claimScript: KEYS[1] key, ARGV[1] token, ARGV[2] ttl in ms.
// Returns 1 claimed, 2 in progress, 3 processed.
var claimScript = redis.NewScript(`
local v = redis.call('GET', KEYS[1])
if not v then
	redis.call('SET', KEYS[1], 'c:' .. ARGV[1], 'PX', ARGV[2])
	return 1
end
if v == 'd' then
	return 3
end
if v == 'c:' .. ARGV[1] then
	redis.call('PEXPIRE', KEYS[1], ARGV[2])
	return 1
end
return 2
`)

// releaseScript: KEYS[1] key, ARGV[1] token. Deletes the key only while
// token holds the claim.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == 'c:' .. ARGV[1] then
	return redis.call('DEL', KEYS[1])
end
return 0
`)

func millis(d time.Duration) int64 {
	ms := d.Milliseconds()
	if ms < 1 {
		ms = 1
	}
	return ms
}

// Claim implements middleware.IdempotencyStore.
func (s *Store) Claim(ctx context.Context, key, token string, ttl time.Duration) (middleware.ClaimState, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	if token == "" {
		return 0, errors.New("redisstore: empty token")
	}
	n, err := claimScript.Run(ctx, s.c, []string{s.prefix + key}, token, millis(ttl)).Int()
	if err != nil {
		return 0, s.wrap(ctx, "claim", key, err)
	}
	switch n {
	case 1:
		return middleware.Claimed, nil
	case 2:
		return middleware.InProgress, nil
	case 3:
		return middleware.Processed, nil
	}
	return 0, fmt.Errorf("redisstore: claim %q: unexpected script result %d", key, n)
}

// Done implements middleware.IdempotencyStore.
func (s *Store) Done(ctx context.Context, key, token string, retention time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if retention <= 0 {
		retention = s.retention
	}
	if err := s.c.Set(ctx, s.prefix+key, "d", time.Duration(millis(retention))*time.Millisecond).Err(); err != nil {
		return s.wrap(ctx, "done", key, err)
	}
	return nil
}

// Release implements middleware.IdempotencyStore.
func (s *Store) Release(ctx context.Context, key, token string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := releaseScript.Run(ctx, s.c, []string{s.prefix + key}, token).Err(); err != nil {
		return s.wrap(ctx, "release", key, err)
	}
	return nil
}

func (s *Store) wrap(ctx context.Context, op, key string, err error) error {
	if ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)) {
		return ctx.Err()
	}
	return fmt.Errorf("redisstore: %s %q: %w", op, key, err)
}
