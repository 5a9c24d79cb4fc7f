package middleware

import (
	"context"
	"sync"
	"time"
)

// MemoryStoreOptions configure a MemoryStore.
type MemoryStoreOptions struct {
	// MaxKeys bounds the keys held (claims and processed records
	// together). The store keeps keys in two generations of MaxKeys/2:
	// when the current one is full, the older one is dropped whole. So it
	// remembers about the MaxKeys/2 most recent keys at least (less the
	// claims in flight at a rotation, which take a second slot) and at
	// most MaxKeys, each until it expires. A dropped processed key lets
	// a later duplicate run again; a dropped claim lets a concurrent
	// duplicate run. Default 100000.
	MaxKeys int
	// DefaultRetention applies to Done calls with retention <= 0.
	// Default 24h.
	DefaultRetention time.Duration
}

// MemoryStore is an in-process IdempotencyStore: keys expire (claims after
// their TTL, processed records after their retention) and their number is
// bounded. It de-duplicates only within one process: use it for a single
// consumer, tests, or in front of a shared store; use the Redis
// (contrib/redisstore) or PostgreSQL (outbox) stores across processes. It
// is safe for concurrent use. Its clock is the monotonic clock of
// time.Now.
//
// Keys live in two generations (see MaxKeys): writes go to the current
// one, lookups check it and then the previous one, and when the current
// one is full the previous one is dropped as a whole. Every operation is
// O(1) with no per-key bookkeeping beyond one map entry, and no allocation
// besides the map's. At high throughput the bound is what limits how far
// back duplicates are caught: with the default 100000 keys and 1000
// messages/s, between 50 and 100 s.
type MemoryStore struct {
	mu        sync.Mutex
	gen       int // keys per generation
	retention time.Duration
	base      time.Time
	cur, prev map[string]memEntry
	closed    bool
}

// memEntry is a key's state; token is "" once processed. expires is in
// nanoseconds since base.
type memEntry struct {
	token   string
	expires int64
}

// NewMemoryStore returns an empty MemoryStore.
func NewMemoryStore(opts MemoryStoreOptions) *MemoryStore {
	if opts.MaxKeys <= 0 {
		opts.MaxKeys = 100000
	}
	if opts.DefaultRetention <= 0 {
		opts.DefaultRetention = 24 * time.Hour
	}
	gen := max(opts.MaxKeys/2, 1)
	return &MemoryStore{gen: gen, retention: opts.DefaultRetention, base: time.Now(),
		cur: make(map[string]memEntry, min(gen, 1024))}
}

func (s *MemoryStore) now() int64 { return int64(time.Since(s.base)) }

// get returns key's live entry (s.mu held). An entry in the current
// generation shadows any older copy in the previous one, expired or not.
func (s *MemoryStore) get(key string, now int64) (memEntry, bool) {
	e, ok := s.cur[key]
	if !ok && s.prev != nil {
		e, ok = s.prev[key]
	}
	if ok && e.expires <= now {
		return memEntry{}, false
	}
	return e, ok
}

// put writes key into the current generation (shadowing a copy in the
// previous one), then rotates when the current generation is full (s.mu
// held). One map write.
func (s *MemoryStore) put(key string, e memEntry) {
	n := len(s.cur)
	s.cur[key] = e
	if len(s.cur) > n && len(s.cur) >= s.gen {
		s.prev = s.cur
		s.cur = make(map[string]memEntry, s.gen)
	}
}

// Claim implements IdempotencyStore.
func (s *MemoryStore) Claim(ctx context.Context, key, token string, ttl time.Duration) (ClaimState, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, ErrStoreClosed
	}
	now := s.now()
	if e, ok := s.get(key, now); ok {
		if e.token == "" {
			return Processed, nil
		}
		if e.token != token {
			return InProgress, nil
		}
	}
	s.put(key, memEntry{token: token, expires: now + int64(ttl)})
	return Claimed, nil
}

// Done implements IdempotencyStore.
func (s *MemoryStore) Done(ctx context.Context, key, token string, retention time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if retention <= 0 {
		retention = s.retention
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrStoreClosed
	}
	s.put(key, memEntry{expires: s.now() + int64(retention)})
	return nil
}

// Release implements IdempotencyStore.
func (s *MemoryStore) Release(ctx context.Context, key, token string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrStoreClosed
	}
	if e, ok := s.get(key, s.now()); ok && e.token != "" && e.token == token {
		// Delete both copies: with the current one gone, an older copy
		// in the previous generation would come back into view.
		delete(s.cur, key)
		if s.prev != nil {
			delete(s.prev, key)
		}
	}
	return nil
}

// Len returns how many keys the store holds, expired ones not yet
// dropped included.
func (s *MemoryStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.cur) + len(s.prev)
}

// Close drops every key; later calls return ErrStoreClosed.
func (s *MemoryStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.cur, s.prev = nil, nil
	return nil
}
