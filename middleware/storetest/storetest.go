// Package storetest is a test suite for middleware.IdempotencyStore
// implementations: every store (in-memory, Redis, PostgreSQL) runs the
// same cases, so the Idempotency middleware can rely on the semantics
// documented on the interface. The last cases run the store under the
// Idempotency middleware itself: concurrent deliveries of one message run
// the handler once, a failure or panic releases the claim, and a
// processed message is skipped.
//
//	func TestStore(t *testing.T) {
//		storetest.Run(t, storetest.Harness{
//			New: func(t *testing.T) middleware.IdempotencyStore { return newStore(t) },
//		})
//	}
package storetest

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/courierkit/courier/middleware"
)

// Harness connects the suite to one store implementation.
type Harness struct {
	// New returns a store whose keys do not collide with other cases'
	// (a fresh store, or one with a unique key prefix). The suite closes
	// nothing: register cleanups on t. Required.
	New func(t *testing.T) middleware.IdempotencyStore
	// Run wraps each case; nil runs it as is. The in-memory store passes
	// a function that runs the case in a testing/synctest bubble, so
	// Advance can be time.Sleep on the fake clock.
	Run func(t *testing.T, f func(t *testing.T))
	// Advance moves the store's clock forward by at least d (miniredis
	// FastForward, a sleep inside a synctest bubble). Nil: the expiry
	// cases use short TTLs (ShortTTL) and poll the store in real time
	// until the key expires, failing after 10s.
	Advance func(t *testing.T, d time.Duration)
	// ShortTTL is the TTL of the expiry cases when Advance is nil; the
	// store's expiry resolution must be finer. Default 150ms.
	ShortTTL time.Duration
}

// Run runs every case as a subtest of t.
func Run(t *testing.T, h Harness) {
	if h.New == nil {
		t.Fatal("storetest: Harness.New is required")
	}
	if h.ShortTTL <= 0 {
		h.ShortTTL = 150 * time.Millisecond
	}
	s := &suite{h: h}
	cases := []suiteCase{
		{"ClaimFree", "a free key is claimed; another token then finds it in progress; the holder claims again", s.claimFree},
		{"DoneIsProcessed", "after Done every token finds the key processed", s.doneProcessed},
		{"DoneByOtherToken", "Done marks the key processed whoever holds the claim", s.doneOtherToken},
		{"DoneWithoutClaim", "Done on a free key records it processed", s.doneWithoutClaim},
		{"ReleaseFrees", "Release by the holder frees the key for a new token", s.releaseFrees},
		{"ReleaseByOther", "Release by a token that does not hold the claim changes nothing", s.releaseByOther},
		{"ReleaseKeepsProcessed", "Release never removes a processed record", s.releaseKeepsProcessed},
		{"ReleaseFreeKey", "Release of a free key is a no-op without error", s.releaseFree},
		{"ClaimExpires", "a claim whose TTL passed counts as free (a crashed handler does not block the message forever)", s.claimExpires},
		{"ProcessedExpires", "a processed record is forgotten after its retention", s.processedExpires},
		{"ConcurrentClaims", "of many concurrent claims of one free key exactly one wins", s.concurrentClaims},
		{"KeysIndependent", "keys are independent and opaque: long keys and unusual characters work", s.keysIndependent},
		{"CancelledContext", "a cancelled context returns its error", s.cancelled},
	}
	cases = append(cases, s.middlewareCases()...)
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Log(c.what)
			if h.Run != nil {
				h.Run(t, c.f)
				return
			}
			c.f(t)
		})
	}
}

type suite struct{ h Harness }

const long = time.Hour

func ctxT(t *testing.T) context.Context { return t.Context() }

func claim(t *testing.T, st middleware.IdempotencyStore, key, token string, ttl time.Duration) middleware.ClaimState {
	t.Helper()
	s, err := st.Claim(ctxT(t), key, token, ttl)
	if err != nil {
		t.Fatalf("Claim(%q, %q): %v", key, token, err)
	}
	return s
}

func expect(t *testing.T, st middleware.IdempotencyStore, key, token string, ttl time.Duration, want middleware.ClaimState) {
	t.Helper()
	if got := claim(t, st, key, token, ttl); got != want {
		t.Fatalf("Claim(%q, %q) = %v, want %v", key, token, got, want)
	}
}

func done(t *testing.T, st middleware.IdempotencyStore, key, token string, retention time.Duration) {
	t.Helper()
	if err := st.Done(ctxT(t), key, token, retention); err != nil {
		t.Fatalf("Done(%q, %q): %v", key, token, err)
	}
}

func release(t *testing.T, st middleware.IdempotencyStore, key, token string) {
	t.Helper()
	if err := st.Release(ctxT(t), key, token); err != nil {
		t.Fatalf("Release(%q, %q): %v", key, token, err)
	}
}

func (s *suite) claimFree(t *testing.T) {
	st := s.h.New(t)
	expect(t, st, "k1", "a", long, middleware.Claimed)
	expect(t, st, "k1", "b", long, middleware.InProgress)
	expect(t, st, "k1", "a", long, middleware.Claimed)
	expect(t, st, "k2", "b", long, middleware.Claimed)
}

func (s *suite) doneProcessed(t *testing.T) {
	st := s.h.New(t)
	expect(t, st, "k", "a", long, middleware.Claimed)
	done(t, st, "k", "a", long)
	expect(t, st, "k", "a", long, middleware.Processed)
	expect(t, st, "k", "b", long, middleware.Processed)
}

func (s *suite) doneOtherToken(t *testing.T) {
	st := s.h.New(t)
	expect(t, st, "k", "a", long, middleware.Claimed)
	done(t, st, "k", "b", long)
	expect(t, st, "k", "c", long, middleware.Processed)
	release(t, st, "k", "a")
	expect(t, st, "k", "c", long, middleware.Processed)
}

func (s *suite) doneWithoutClaim(t *testing.T) {
	st := s.h.New(t)
	done(t, st, "k", "a", long)
	expect(t, st, "k", "b", long, middleware.Processed)
}

func (s *suite) releaseFrees(t *testing.T) {
	st := s.h.New(t)
	expect(t, st, "k", "a", long, middleware.Claimed)
	release(t, st, "k", "a")
	expect(t, st, "k", "b", long, middleware.Claimed)
	expect(t, st, "k", "a", long, middleware.InProgress)
}

func (s *suite) releaseByOther(t *testing.T) {
	st := s.h.New(t)
	expect(t, st, "k", "a", long, middleware.Claimed)
	release(t, st, "k", "b")
	expect(t, st, "k", "c", long, middleware.InProgress)
}

func (s *suite) releaseKeepsProcessed(t *testing.T) {
	st := s.h.New(t)
	expect(t, st, "k", "a", long, middleware.Claimed)
	done(t, st, "k", "a", long)
	release(t, st, "k", "a")
	expect(t, st, "k", "b", long, middleware.Processed)
}

func (s *suite) releaseFree(t *testing.T) {
	st := s.h.New(t)
	release(t, st, "never-claimed", "a")
	expect(t, st, "never-claimed", "a", long, middleware.Claimed)
}

// waitFree waits until token can claim key, by Advance or by polling.
func (s *suite) waitFree(t *testing.T, st middleware.IdempotencyStore, key, token string, after time.Duration) {
	t.Helper()
	if s.h.Advance != nil {
		s.h.Advance(t, after+time.Millisecond)
		expect(t, st, key, token, long, middleware.Claimed)
		return
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		if claim(t, st, key, token, long) == middleware.Claimed {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("key %q still not free 10s after its %v expiry", key, after)
		}
		time.Sleep(after / 5)
	}
}

func (s *suite) ttl() time.Duration {
	if s.h.Advance != nil {
		return time.Minute
	}
	return s.h.ShortTTL
}

func (s *suite) claimExpires(t *testing.T) {
	st := s.h.New(t)
	ttl := s.ttl()
	expect(t, st, "k", "crashed", ttl, middleware.Claimed)
	expect(t, st, "k", "b", long, middleware.InProgress)
	s.waitFree(t, st, "k", "b", ttl)
	// The late holder can no longer release the new claim.
	release(t, st, "k", "crashed")
	expect(t, st, "k", "c", long, middleware.InProgress)
}

func (s *suite) processedExpires(t *testing.T) {
	st := s.h.New(t)
	ttl := s.ttl()
	expect(t, st, "k", "a", long, middleware.Claimed)
	done(t, st, "k", "a", ttl)
	expect(t, st, "k", "b", long, middleware.Processed)
	s.waitFree(t, st, "k", "b", ttl)
}

func (s *suite) concurrentClaims(t *testing.T) {
	st := s.h.New(t)
	const keys, racers = 20, 8
	var mu sync.Mutex
	wins := make(map[string]int)
	var wg sync.WaitGroup
	errs := make(chan error, keys*racers)
	for k := range keys {
		key := fmt.Sprintf("race-%d", k)
		for r := range racers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				state, err := st.Claim(context.Background(), key, fmt.Sprintf("tok-%d", r), long)
				if err != nil {
					errs <- err
					return
				}
				if state == middleware.Claimed {
					mu.Lock()
					wins[key]++
					mu.Unlock()
				} else if state != middleware.InProgress {
					errs <- fmt.Errorf("Claim(%q) = %v, want claimed or in-progress", key, state)
				}
			}()
		}
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for k := range keys {
		key := fmt.Sprintf("race-%d", k)
		if wins[key] != 1 {
			t.Fatalf("key %q claimed %d times by concurrent claimers, want exactly 1", key, wins[key])
		}
	}
}

func (s *suite) keysIndependent(t *testing.T) {
	st := s.h.New(t)
	keys := []string{
		"group/0190a7c2-6f1e-7c3a-9d2b-5f3e8a1b2c4d",
		"group/0190a7c2-6f1e-7c3a-9d2b-5f3e8a1b2c4e",
		"a:b:c", "with space", "ünïcødé/キー", "%_'\"\\;--", strings.Repeat("x", 512),
	}
	for i, k := range keys {
		expect(t, st, k, "a", long, middleware.Claimed)
		if i%2 == 0 {
			done(t, st, k, "a", long)
		}
	}
	for i, k := range keys {
		want := middleware.InProgress
		if i%2 == 0 {
			want = middleware.Processed
		}
		expect(t, st, k, "b", long, want)
	}
}

func (s *suite) cancelled(t *testing.T) {
	st := s.h.New(t)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := st.Claim(ctx, "k", "a", long); !errors.Is(err, context.Canceled) {
		t.Fatalf("Claim with a cancelled context: %v, want context.Canceled", err)
	}
	if err := st.Done(ctx, "k", "a", long); !errors.Is(err, context.Canceled) {
		t.Fatalf("Done with a cancelled context: %v, want context.Canceled", err)
	}
	if err := st.Release(ctx, "k", "a"); !errors.Is(err, context.Canceled) {
		t.Fatalf("Release with a cancelled context: %v, want context.Canceled", err)
	}
	// Nothing happened.
	expect(t, st, "k", "a", long, middleware.Claimed)
}
