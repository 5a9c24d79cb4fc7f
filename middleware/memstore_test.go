package middleware_test

import (
	"testing"
	"testing/synctest"
	"time"

	"github.com/courierkit/courier/middleware"
	"github.com/courierkit/courier/middleware/storetest"
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
		s := middleware.NewMemoryStore(middleware.MemoryStoreOptions{MaxKeys: 3})
		for _, k := range []string{"a", "b", "c"} {
			if st, _ := s.Claim(ctx, k, "t", time.Minute); st != middleware.Claimed {
				t.Fatalf("claim %s: %v", k, st)
			}
			if err := s.Done(ctx, k, "t", time.Hour); err != nil {
				t.Fatal(err)
			}
			time.Sleep(time.Second) // a expires first, then b, then c
		}
		if st, _ := s.Claim(ctx, "d", "t", time.Minute); st != middleware.Claimed {
			t.Fatalf("claim d: %v", st)
		}
		if n := s.Len(); n != 3 {
			t.Fatalf("Len = %d, want 3 (bounded)", n)
		}
		// Making room for "d" evicted the record expiring soonest: "a".
		if st, _ := s.Claim(ctx, "a", "u", time.Minute); st != middleware.Claimed {
			t.Fatalf("a should have been evicted; Claim = %v", st)
		}
		if st, _ := s.Claim(ctx, "c", "u", time.Minute); st != middleware.Processed {
			t.Fatalf("c should remain processed; Claim = %v", st)
		}
		// Expired keys go before live ones.
		time.Sleep(2 * time.Minute)
		for _, k := range []string{"e", "f"} {
			if st, _ := s.Claim(ctx, k, "t", time.Minute); st != middleware.Claimed {
				t.Fatalf("claim %s: %v", k, st)
			}
		}
		if st, _ := s.Claim(ctx, "c", "u", time.Minute); st != middleware.Processed {
			t.Fatalf("c should remain processed after expired claims made room; Claim = %v", st)
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := s.Claim(ctx, "x", "t", time.Minute); err != middleware.ErrStoreClosed {
			t.Fatalf("Claim after Close: %v", err)
		}
	})
}
