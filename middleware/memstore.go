package middleware

import (
	"context"
	"hash/maphash"
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
	// most MaxKeys, each until it expires. From 16384 keys up the store
	// is split into 8 shards by key hash, each with its own lock and two
	// generations of MaxKeys/16, so "the MaxKeys/2 most recent" holds
	// within a few percent (the most recent keys are not spread exactly
	// evenly). A dropped processed key lets a later duplicate run again;
	// a dropped claim lets a concurrent duplicate run. Default 100000.
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
//
// The store keeps neither keys nor tokens: it keeps a 128-bit keyed hash
// of each key (hash/maphash, two random per-store seeds) and a 64-bit
// keyed hash of each token. Its maps hold no pointers, so the garbage
// collector does not scan them and a lookup compares the hash in place.
// Two different keys are taken for one with a probability of about
// 2⁻¹²⁸ per pair (for 10⁵ keys, about 10⁻²⁹), two tokens of one key
// with about 2⁻⁶³. Two keys whose hashes agree in the first 64 bits only
// (about 10⁻¹⁰ for 10⁵ keys) share a slot: the later write makes the
// earlier key forgotten, as if evicted, never taken for the other.
type MemoryStore struct {
	keySeed1, keySeed2, tokSeed maphash.Seed
	retention                   time.Duration
	base                        time.Time
	mask                        uint64 // len(shards) - 1
	shards                      []memShard
}

// memShard is one lock and two generations of keys. Each generation
// has a one-hash Bloom filter (a bit per 16 keys' worth of slots, about 5
// % false positives when full) of the keys written to it: a key not in
// the current map is looked up in the previous map only when its bit is
// set there. The filters are small enough to stay in the CPU's cache; the
// maps are not, so this saves a cache miss for most new keys.
type memShard struct {
	mu                sync.Mutex
	gen               int                 // keys per generation
	cur, prev         map[uint64]memEntry // by memKey[0]
	curBits, prevBits []uint64
	bitMask           uint64 // bits per filter - 1
	closed            bool
	_                 [64]byte // keep neighbouring shards' locks off this cache line
}

// memKey is a key's 128-bit hash: the maps are indexed by its first half
// and the entry holds the second (check). Two live keys agreeing in the
// first half only (about 10⁻¹⁰ for 10⁵ keys) share a slot: the later
// write replaces the earlier key, which is forgotten as if evicted.
type memKey [2]uint64

// memEntry is a key's state: check is memKey[1]; tok is the claim's
// token (see tokenHash, never 0), or 0 once processed; expires is in
// nanoseconds since base.
type memEntry struct {
	check   uint64
	tok     uint64
	expires int64
}

// shardedFrom is the MaxKeys from which a MemoryStore is split in
// memShards shards.
const (
	shardedFrom = 16384
	memShards   = 8
)

// NewMemoryStore returns an empty MemoryStore.
func NewMemoryStore(opts MemoryStoreOptions) *MemoryStore {
	if opts.MaxKeys <= 0 {
		opts.MaxKeys = 100000
	}
	if opts.DefaultRetention <= 0 {
		opts.DefaultRetention = 24 * time.Hour
	}
	n := 1
	if opts.MaxKeys >= shardedFrom {
		n = memShards
	}
	gen := max(opts.MaxKeys/2/n, 1)
	s := &MemoryStore{keySeed1: maphash.MakeSeed(), keySeed2: maphash.MakeSeed(), tokSeed: maphash.MakeSeed(),
		retention: opts.DefaultRetention, base: time.Now(), mask: uint64(n - 1), shards: make([]memShard, n)}
	bits := uint64(64)
	for bits < 16*uint64(gen) {
		bits <<= 1
	}
	for i := range s.shards {
		sh := &s.shards[i]
		sh.gen = gen
		sh.cur = make(map[uint64]memEntry, min(gen, 1024))
		sh.bitMask = bits - 1
		sh.curBits, sh.prevBits = make([]uint64, bits/64), make([]uint64, bits/64)
	}
	return s
}

func (s *MemoryStore) now() int64 { return int64(time.Since(s.base)) }

// hashKey hashes key, or scope + "/" + key when scope is not empty
// (without building that string when it is short).
func (s *MemoryStore) hashKey(scope, key string) memKey {
	if scope == "" {
		return memKey{maphash.String(s.keySeed1, key), maphash.String(s.keySeed2, key)}
	}
	var buf [256]byte
	b := buf[:0]
	if len(scope)+1+len(key) > len(buf) {
		b = make([]byte, 0, len(scope)+1+len(key))
	}
	b = append(append(append(b, scope...), '/'), key...)
	return memKey{maphash.Bytes(s.keySeed1, b), maphash.Bytes(s.keySeed2, b)}
}

// tokenHash is a caller's token as stored: a 64-bit keyed hash with the
// top bit clear and never 0. Tokens made by Idempotency for this store
// (see seqToken) have the top bit set, so the two never collide.
func (s *MemoryStore) tokenHash(token string) uint64 {
	return maphash.String(s.tokSeed, token)&^(1<<63) | 1
}

// seqToken is a claim token of Idempotency's fast path: a process-wide
// sequence number, unique, with the top bit set.
func seqToken() uint64 { return tokenSeq.Add(1) | 1<<63 }

func (s *MemoryStore) shard(k memKey) *memShard { return &s.shards[k[0]&s.mask] }

// get returns key's live entry (sh.mu held). An entry in the current
// generation shadows any older copy in the previous one, expired or not.
func (sh *memShard) get(key memKey, now int64) (memEntry, bool) {
	e, ok := sh.cur[key[0]]
	ok = ok && e.check == key[1]
	if !ok && sh.prev != nil {
		if b := key[1] & sh.bitMask; sh.prevBits[b/64]&(1<<(b%64)) != 0 {
			e, ok = sh.prev[key[0]]
			ok = ok && e.check == key[1]
		}
	}
	if ok && e.expires <= now {
		return memEntry{}, false
	}
	return e, ok
}

// put writes key into the current generation (shadowing a copy in the
// previous one), then rotates when the current generation is full (sh.mu
// held): the previous generation's map and filter are cleared and reused
// as the current ones. One map write.
func (sh *memShard) put(key memKey, e memEntry) {
	e.check = key[1]
	n := len(sh.cur)
	sh.cur[key[0]] = e
	b := key[1] & sh.bitMask
	sh.curBits[b/64] |= 1 << (b % 64)
	if len(sh.cur) > n && len(sh.cur) >= sh.gen {
		old := sh.prev
		if old == nil {
			old = make(map[uint64]memEntry, sh.gen)
		} else {
			clear(old)
		}
		sh.prev, sh.cur = sh.cur, old
		clear(sh.prevBits)
		sh.prevBits, sh.curBits = sh.curBits, sh.prevBits
	}
}

func (s *MemoryStore) claim(key memKey, tok uint64, ttl time.Duration) (ClaimState, error) {
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.closed {
		return 0, ErrStoreClosed
	}
	now := s.now()
	if e, ok := sh.get(key, now); ok {
		if e.tok == 0 {
			return Processed, nil
		}
		if e.tok != tok {
			return InProgress, nil
		}
	}
	sh.put(key, memEntry{tok: tok, expires: now + int64(ttl)})
	return Claimed, nil
}

func (s *MemoryStore) done(key memKey, retention time.Duration) error {
	if retention <= 0 {
		retention = s.retention
	}
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.closed {
		return ErrStoreClosed
	}
	sh.put(key, memEntry{expires: s.now() + int64(retention)})
	return nil
}

func (s *MemoryStore) release(key memKey, tok uint64) error {
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if sh.closed {
		return ErrStoreClosed
	}
	if e, ok := sh.get(key, s.now()); ok && e.tok != 0 && e.tok == tok {
		// Delete both copies: with the current one gone, an older copy
		// in the previous generation would come back into view.
		if c, ok := sh.cur[key[0]]; ok && c.check == key[1] {
			delete(sh.cur, key[0])
		}
		if p, ok := sh.prev[key[0]]; ok && p.check == key[1] {
			delete(sh.prev, key[0])
		}
	}
	return nil
}

// Claim implements IdempotencyStore.
func (s *MemoryStore) Claim(ctx context.Context, key, token string, ttl time.Duration) (ClaimState, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	return s.claim(s.hashKey("", key), s.tokenHash(token), ttl)
}

// Done implements IdempotencyStore.
func (s *MemoryStore) Done(ctx context.Context, key, token string, retention time.Duration) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.done(s.hashKey("", key), retention)
}

// Release implements IdempotencyStore.
func (s *MemoryStore) Release(ctx context.Context, key, token string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	return s.release(s.hashKey("", key), s.tokenHash(token))
}

// Len returns how many keys the store holds, expired ones not yet
// dropped included.
func (s *MemoryStore) Len() int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		n += len(sh.cur) + len(sh.prev)
		sh.mu.Unlock()
	}
	return n
}

// Close drops every key; later calls return ErrStoreClosed.
func (s *MemoryStore) Close() error {
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		sh.closed = true
		sh.cur, sh.prev, sh.curBits, sh.prevBits = nil, nil, nil, nil
		sh.mu.Unlock()
	}
	return nil
}
