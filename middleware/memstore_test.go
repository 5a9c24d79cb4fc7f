package middleware_test

import (
	"context"
	"errors"
	"math/rand/v2"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/middleware"
	"github.com/courierkit/courier/middleware/storetest"
	"github.com/courierkit/courier/router"
)

func TestMemoryStore(t *testing.T) {
	storetest.Run(t, storetest.Harness{
		New: func(t *testing.T) middleware.IdempotencyStore {
			return middleware.NewMemoryStore(middleware.MemoryStoreOptions{})
		},
		Run:     func(t *testing.T, f func(*testing.T)) { synctest.Test(t, f) },
		Advance: func(t *testing.T, d time.Duration) { time.Sleep(d) },
	})
}

func TestMemoryStoreBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := t.Context()
		s := middleware.NewMemoryStore(middleware.MemoryStoreOptions{MaxKeys: 6}) // generations of 3
		done := func(k string) {
			if st, _ := s.Claim(ctx, k, "t", time.Minute); st != middleware.Claimed {
				t.Fatalf("claim %s: %v", k, st)
			}
			if err := s.Done(ctx, k, "t", time.Hour); err != nil {
				t.Fatal(err)
			}
		}
		state := func(k string) middleware.ClaimState {
			st, _ := s.Claim(ctx, k, "probe", time.Minute)
			return st
		}
		done("a")
		done("b")
		done("c") // claiming c fills the generation: {a b c} becomes the previous one
		if state("a") != middleware.Processed || state("b") != middleware.Processed {
			t.Fatal("the previous generation must still answer")
		}
		done("d")
		done("e") // rotates again: {c d e} previous, {a b} dropped
		if n := s.Len(); n > 6 {
			t.Fatalf("Len = %d, want ≤ 6", n)
		}
		if state("a") != middleware.Claimed {
			t.Fatal("a key two generations old must be forgotten")
		}
		if state("e") != middleware.Processed || state("d") != middleware.Processed {
			t.Fatal("recent keys must be remembered")
		}
		// Expiry within a generation.
		time.Sleep(2 * time.Hour)
		if state("e") != middleware.Claimed {
			t.Fatal("expired key not free")
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Claim(ctx, "x", "t", time.Minute); err != middleware.ErrStoreClosed {
			t.Fatalf("Claim after Close: %v", err)
		}
	})
}

// TestMemoryStoreModel checks MemoryStore against a plain model under
// random operations with random TTLs and fake time.
func TestMemoryStoreModel(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := t.Context()
		s := middleware.NewMemoryStore(middleware.MemoryStoreOptions{})
		type ent struct {
			token   string
			expires time.Time
		}
		model := map[string]ent{}
		rng := rand.New(rand.NewPCG(1, 2))
		keys := []string{"a", "b", "c", "d"}
		tokens := []string{"t1", "t2", "t3"}
		for i := range 20000 {
			k, tok := keys[rng.IntN(len(keys))], tokens[rng.IntN(len(tokens))]
			ttl := time.Duration(1+rng.IntN(10)) * time.Second
			now := time.Now()
			e, ok := model[k]
			if ok && !e.expires.After(now) {
				delete(model, k)
				ok = false
			}
			switch rng.IntN(3) {
			case 0:
				got, err := s.Claim(ctx, k, tok, ttl)
				if err != nil {
					t.Fatal(err)
				}
				want := middleware.Claimed
				switch {
				case ok && e.token == "":
					want = middleware.Processed
				case ok && e.token != tok:
					want = middleware.InProgress
				default:
					model[k] = ent{tok, now.Add(ttl)}
				}
				if got != want {
					t.Fatalf("op %d: Claim(%s, %s) = %v, want %v", i, k, tok, got, want)
				}
			case 1:
				if err := s.Done(ctx, k, tok, ttl); err != nil {
					t.Fatal(err)
				}
				model[k] = ent{"", now.Add(ttl)}
			case 2:
				if err := s.Release(ctx, k, tok); err != nil {
					t.Fatal(err)
				}
				if ok && e.token == tok {
					delete(model, k)
				}
			}
			time.Sleep(time.Duration(rng.IntN(1500)) * time.Millisecond)
		}
	})
}

// TestMemoryStoreStaysBounded churns many keys through a small store.
func TestMemoryStoreStaysBounded(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ctx := t.Context()
		s := middleware.NewMemoryStore(middleware.MemoryStoreOptions{MaxKeys: 100})
		n := 100000
		if testing.Short() {
			n = 10000
		}
		for i := range n {
			k := strconv.Itoa(i)
			if st, err := s.Claim(ctx, k, "t", time.Minute); err != nil || st != middleware.Claimed {
				t.Fatalf("Claim %s: %v %v", k, st, err)
			}
			if i%2 == 0 {
				_ = s.Done(ctx, k, "t", time.Hour)
			} else {
				_ = s.Release(ctx, k, "t")
			}
			if s.Len() > 100 {
				t.Fatalf("Len %d > MaxKeys", s.Len())
			}
			if i%1000 == 0 {
				time.Sleep(time.Second)
			}
		}
		// The most recent processed keys (at least MaxKeys/2) are known.
		for i := n - 2; i > n-2-50; i -= 2 {
			if st, _ := s.Claim(ctx, strconv.Itoa(i), "u", time.Minute); st != middleware.Processed {
				t.Fatalf("recent key %d: %v", i, st)
			}
		}
	})
}

// TestMemoryStoreFastPathSharesState: Idempotency takes a MemoryStore's
// fast path (hashing the scoped key in place, sequence tokens); what it
// records must be what the public methods see under the scoped key, and
// the other way round.
func TestMemoryStoreFastPathSharesState(t *testing.T) {
	ctx := t.Context()
	store := middleware.NewMemoryStore(middleware.MemoryStoreOptions{})
	fail := errors.New("boom")
	var failing atomic.Bool
	h := middleware.Idempotency(store, middleware.IdempotencyOptions{})(message.HandlerFunc(func(context.Context, *message.Message) error {
		if failing.Load() {
			return fail
		}
		return nil
	}))
	deliver := func(id string) error {
		m := &message.Message{ID: id, Topic: "orders"}
		return h.Handle(router.NewContext(ctx, m, "orders", "billing", nil), m)
	}
	if err := deliver("a"); err != nil {
		t.Fatal(err)
	}
	if st, err := store.Claim(ctx, "billing/a", "probe", time.Minute); err != nil || st != middleware.Processed {
		t.Fatalf("public Claim after the middleware processed the key: %v %v", st, err)
	}
	// A claim taken through the public API holds the middleware off.
	if st, _ := store.Claim(ctx, "billing/b", "other", time.Minute); st != middleware.Claimed {
		t.Fatal(st)
	}
	if err := deliver("b"); !errors.Is(err, middleware.ErrInProgress) {
		t.Fatalf("delivery of a key claimed elsewhere: %v, want ErrInProgress", err)
	}
	if err := store.Release(ctx, "billing/b", "other"); err != nil {
		t.Fatal(err)
	}
	// A failure releases the middleware's claim.
	failing.Store(true)
	if err := deliver("b"); !errors.Is(err, fail) {
		t.Fatal(err)
	}
	if st, _ := store.Claim(ctx, "billing/b", "next", time.Minute); st != middleware.Claimed {
		t.Fatalf("key after a failed run: %v, want Claimed (released)", st)
	}
	// Long scoped keys (past the in-place buffer) hash like the string.
	long := strings.Repeat("k", 600)
	failing.Store(false)
	if err := deliver(long); err != nil {
		t.Fatal(err)
	}
	if st, _ := store.Claim(ctx, "billing/"+long, "probe", time.Minute); st != middleware.Processed {
		t.Fatalf("long key: %v", st)
	}
}

// TestMemoryStoreShardedBound: a store large enough to be sharded stays
// within MaxKeys and remembers (nearly all of) the MaxKeys/2 most recent
// keys.
func TestMemoryStoreShardedBound(t *testing.T) {
	ctx := t.Context()
	const maxKeys = 20000
	s := middleware.NewMemoryStore(middleware.MemoryStoreOptions{MaxKeys: maxKeys})
	n := 100000
	for i := range n {
		k := strconv.Itoa(i)
		if st, err := s.Claim(ctx, k, "t", time.Minute); err != nil || st != middleware.Claimed {
			t.Fatalf("Claim %s: %v %v", k, st, err)
		}
		if err := s.Done(ctx, k, "t", time.Hour); err != nil {
			t.Fatal(err)
		}
	}
	if l := s.Len(); l > maxKeys {
		t.Fatalf("Len %d > MaxKeys %d", l, maxKeys)
	}
	forgotten := 0
	for i := n - maxKeys/2; i < n; i++ {
		if st, _ := s.Claim(ctx, strconv.Itoa(i), "u", time.Minute); st != middleware.Processed {
			forgotten++
		}
	}
	t.Logf("%d of the %d most recent keys forgotten", forgotten, maxKeys/2)
	if forgotten > maxKeys/2/20 { // 5 %: the shards' share of recent keys varies by a few percent
		t.Fatalf("%d of the %d most recent keys forgotten", forgotten, maxKeys/2)
	}
}
