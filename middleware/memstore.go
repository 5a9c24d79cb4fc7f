package middleware

import (
	"container/heap"
	"context"
	"sync"
	"time"
)

// MemoryStoreOptions configure a MemoryStore.
type MemoryStoreOptions struct {
	// MaxKeys bounds the keys held (claims and processed records
	// together). When full, expired keys go first, then the keys closest
	// to expiry: an evicted processed key lets a later duplicate run
	// again, an evicted claim lets a concurrent duplicate run. Default
	// 100000.
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
// is safe for concurrent use. Its clock is time.Now.
type MemoryStore struct {
	mu        sync.Mutex
	max       int
	retention time.Duration
	keys      map[string]*memEntry
	exp       expiryHeap
	closed    bool
}

type memEntry struct {
	key     string
	token   string // "" once processed
	expires time.Time
	index   int // in exp
}

// NewMemoryStore returns an empty MemoryStore.
func NewMemoryStore(opts MemoryStoreOptions) *MemoryStore {
	if opts.MaxKeys <= 0 {
		opts.MaxKeys = 100000
	}
	if opts.DefaultRetention <= 0 {
		opts.DefaultRetention = 24 * time.Hour
	}
	return &MemoryStore{max: opts.MaxKeys, retention: opts.DefaultRetention, keys: make(map[string]*memEntry)}
}

// Claim implements IdempotencyStore.
func (s *MemoryStore) Claim(ctx context.Context, key, token string, ttl time.Duration) (ClaimState, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, ErrStoreClosed
	}
	e := s.keys[key]
	if e != nil && !e.expires.After(now) {
		s.remove(e)
		e = nil
	}
	switch {
	case e == nil:
		s.makeRoom(now)
		e = &memEntry{key: key, token: token, expires: now.Add(ttl)}
		s.keys[key] = e
		heap.Push(&s.exp, e)
		return Claimed, nil
	case e.token == "":
		return Processed, nil
	case e.token == token:
		e.expires = now.Add(ttl)
		heap.Fix(&s.exp, e.index)
		return Claimed, nil
	}
	return InProgress, nil
}

// Done implements IdempotencyStore.
func (s *MemoryStore) Done(ctx context.Context, key, token string, retention time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if retention <= 0 {
		retention = s.retention
	}
	now := time.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrStoreClosed
	}
	e := s.keys[key]
	if e == nil {
		s.makeRoom(now)
		e = &memEntry{key: key, expires: now.Add(retention)}
		s.keys[key] = e
		heap.Push(&s.exp, e)
		return nil
	}
	e.token = ""
	e.expires = now.Add(retention)
	heap.Fix(&s.exp, e.index)
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
	if e := s.keys[key]; e != nil && e.token != "" && e.token == token {
		s.remove(e)
	}
	return nil
}

// Len returns how many keys the store holds, expired ones not yet
// dropped included.
func (s *MemoryStore) Len() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.keys)
}

// Close drops every key; later calls return ErrStoreClosed.
func (s *MemoryStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.keys = nil
	s.exp = nil
	return nil
}

func (s *MemoryStore) remove(e *memEntry) {
	heap.Remove(&s.exp, e.index)
	delete(s.keys, e.key)
}

// makeRoom drops expired keys, then the soonest-expiring ones, until one
// more fits (s.mu held).
func (s *MemoryStore) makeRoom(now time.Time) {
	for len(s.exp) > 0 && !s.exp[0].expires.After(now) {
		s.remove(s.exp[0])
	}
	for len(s.keys) >= s.max && len(s.exp) > 0 {
		s.remove(s.exp[0])
	}
}

// expiryHeap orders entries by expiry, soonest first.
type expiryHeap []*memEntry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].expires.Before(h[j].expires) }
func (h expiryHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].index = i
	h[j].index = j
}
func (h *expiryHeap) Push(x any) {
	e := x.(*memEntry)
	e.index = len(*h)
	*h = append(*h, e)
}
func (h *expiryHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	e.index = -1
	return e
}
