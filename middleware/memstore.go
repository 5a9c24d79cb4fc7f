package middleware

import (
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
// is safe for concurrent use. Its clock is the monotonic clock of
// time.Now.
//
// Keys sit on two lists, claims and processed records, each in the order
// it was written, which is expiry order when TTLs are constant (as the
// Idempotency middleware's are). Expired keys are dropped from the fronts
// when new keys arrive; when the store is full, the key expiring soonest
// of the two fronts goes. Every operation is O(1). At high throughput
// the bound is what limits how far back duplicates are caught: with the
// default 100000 keys and 1000 messages/s, about 100 s.
type MemoryStore struct {
	mu        sync.Mutex
	max       int
	retention time.Duration
	base      time.Time
	keys      map[string]*memEntry
	claims    list // claimed keys, oldest first
	done      list // processed keys, oldest first
	closed    bool
}

// memEntry is a key's state; token is "" once processed. expires is in
// nanoseconds since base.
type memEntry struct {
	key        string
	token      string
	expires    int64
	prev, next *memEntry
	on         *list
}

// NewMemoryStore returns an empty MemoryStore.
func NewMemoryStore(opts MemoryStoreOptions) *MemoryStore {
	if opts.MaxKeys <= 0 {
		opts.MaxKeys = 100000
	}
	if opts.DefaultRetention <= 0 {
		opts.DefaultRetention = 24 * time.Hour
	}
	return &MemoryStore{max: opts.MaxKeys, retention: opts.DefaultRetention, base: time.Now(), keys: make(map[string]*memEntry)}
}

func (s *MemoryStore) now() int64 { return int64(time.Since(s.base)) }

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
	e := s.keys[key]
	if e != nil && e.expires <= now {
		s.drop(e)
		e = nil
	}
	switch {
	case e == nil:
		s.makeRoom(now)
		e = &memEntry{key: key, token: token, expires: now + int64(ttl)}
		s.keys[key] = e
		s.claims.pushBack(e)
		return Claimed, nil
	case e.token == "":
		return Processed, nil
	case e.token != token:
		return InProgress, nil
	}
	e.expires = now + int64(ttl)
	s.claims.remove(e)
	s.claims.pushBack(e)
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
	now := s.now()
	e := s.keys[key]
	if e == nil {
		s.makeRoom(now)
		e = &memEntry{key: key}
		s.keys[key] = e
	} else {
		e.on.remove(e)
	}
	e.token = ""
	e.expires = now + int64(retention)
	s.done.pushBack(e)
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
		s.drop(e)
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
	s.claims, s.done = list{}, list{}
	return nil
}

func (s *MemoryStore) drop(e *memEntry) {
	e.on.remove(e)
	delete(s.keys, e.key)
}

// makeRoom makes room for one more key (s.mu held): it drops expired keys
// from the fronts, then, while full, the front key that expires soonest.
func (s *MemoryStore) makeRoom(now int64) {
	for _, l := range [2]*list{&s.claims, &s.done} {
		for l.head != nil && l.head.expires <= now {
			s.drop(l.head)
		}
	}
	for len(s.keys) >= s.max {
		c, d := s.claims.head, s.done.head
		switch {
		case c != nil && (d == nil || c.expires <= d.expires):
			s.drop(c)
		case d != nil:
			s.drop(d)
		default:
			return
		}
	}
}

// list is an intrusive doubly linked list of entries.
type list struct{ head, tail *memEntry }

func (l *list) pushBack(e *memEntry) {
	e.on, e.prev, e.next = l, l.tail, nil
	if l.tail != nil {
		l.tail.next = e
	} else {
		l.head = e
	}
	l.tail = e
}

func (l *list) remove(e *memEntry) {
	if e.prev != nil {
		e.prev.next = e.next
	} else {
		l.head = e.next
	}
	if e.next != nil {
		e.next.prev = e.prev
	} else {
		l.tail = e.prev
	}
	e.prev, e.next, e.on = nil, nil, nil
}
