package middleware_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/middleware"
	"github.com/courierkit/courier/router"
)

func TestIdempotencyDuplicateProcessedOnce(t *testing.T) {
	store := middleware.NewMemoryStore(middleware.MemoryStoreOptions{})
	h := &counter{}
	mw := middleware.Idempotency(store, middleware.IdempotencyOptions{})(h)
	for range 3 {
		if err := mw.Handle(t.Context(), msg("a")); err != nil {
			t.Fatal(err)
		}
	}
	if h.count() != 1 {
		t.Fatalf("handler ran %d times for one message ID, want 1", h.count())
	}
}

func TestIdempotencyConcurrentDeliveries(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := middleware.NewMemoryStore(middleware.MemoryStoreOptions{})
		var runs atomic.Int32
		release := make(chan struct{})
		mw := middleware.Idempotency(store, middleware.IdempotencyOptions{InProgressDelay: 7 * time.Second})(
			message.HandlerFunc(func(context.Context, *message.Message) error {
				runs.Add(1)
				<-release
				return nil
			}))
		const n = 8
		errs := make(chan error, n)
		var wg sync.WaitGroup
		for range n {
			wg.Add(1)
			go func() { defer wg.Done(); errs <- mw.Handle(t.Context(), msg("dup")) }()
		}
		synctest.Wait()
		close(release)
		wg.Wait()
		close(errs)
		inProgress := 0
		for err := range errs {
			if err == nil {
				continue
			}
			if !errors.Is(err, middleware.ErrInProgress) {
				t.Fatal(err)
			}
			if d, _ := message.RetryDelay(err); d != 7*time.Second {
				t.Fatalf("in-progress delay %v", d)
			}
			inProgress++
		}
		if runs.Load() != 1 || inProgress != n-1 {
			t.Fatalf("%d runs, %d in progress; want 1 and %d", runs.Load(), inProgress, n-1)
		}
		// The redeliveries then find it processed.
		if err := mw.Handle(t.Context(), msg("dup")); err != nil || runs.Load() != 1 {
			t.Fatalf("redelivery: %v, runs %d", err, runs.Load())
		}
	})
}

func TestIdempotencyFailureReleases(t *testing.T) {
	store := middleware.NewMemoryStore(middleware.MemoryStoreOptions{})
	h := &counter{n: 1, err: errBoom}
	mw := middleware.Idempotency(store, middleware.IdempotencyOptions{})(h)
	if err := mw.Handle(t.Context(), msg("a")); !errors.Is(err, errBoom) {
		t.Fatal(err)
	}
	if err := mw.Handle(t.Context(), msg("a")); err != nil {
		t.Fatal(err)
	}
	if err := mw.Handle(t.Context(), msg("a")); err != nil {
		t.Fatal(err)
	}
	if h.count() != 2 {
		t.Fatalf("runs %d, want 2 (fail, then the redelivery runs, then a duplicate is skipped)", h.count())
	}
}

func TestIdempotencyPanicReleases(t *testing.T) {
	store := middleware.NewMemoryStore(middleware.MemoryStoreOptions{})
	first := true
	mw := message.Chain(message.HandlerFunc(func(context.Context, *message.Message) error {
		if first {
			first = false
			panic("kaboom")
		}
		return nil
	}), middleware.Recover(middleware.RecoverOptions{}), middleware.Idempotency(store, middleware.IdempotencyOptions{}))
	// Recover outside Idempotency here, so the panic crosses it.
	var pe *middleware.PanicError
	if err := mw.Handle(t.Context(), msg("a")); !errors.As(err, &pe) {
		t.Fatal(err)
	}
	if err := mw.Handle(t.Context(), msg("a")); err != nil {
		t.Fatalf("after a panic the claim must be released: %v", err)
	}
}

func TestIdempotencyCrashedClaimExpires(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		store := middleware.NewMemoryStore(middleware.MemoryStoreOptions{})
		// A crashed process left a claim behind.
		if st, _ := store.Claim(t.Context(), "a", "crashed-process", time.Minute); st != middleware.Claimed {
			t.Fatal(st)
		}
		h := &counter{}
		mw := middleware.Idempotency(store, middleware.IdempotencyOptions{ClaimTTL: time.Minute})(h)
		if err := mw.Handle(t.Context(), msg("a")); !errors.Is(err, middleware.ErrInProgress) {
			t.Fatal(err)
		}
		time.Sleep(time.Minute + time.Second)
		if err := mw.Handle(t.Context(), msg("a")); err != nil || h.count() != 1 {
			t.Fatalf("after the claim expired: %v, runs %d", err, h.count())
		}
	})
}

type failingStore struct{ middleware.IdempotencyStore }

func (failingStore) Claim(context.Context, string, string, time.Duration) (middleware.ClaimState, error) {
	return 0, errors.New("store down")
}

// Release after a failed Claim (the middleware gives back a claim the store
// may have taken before failing) finds nothing to release.
func (s failingStore) Release(ctx context.Context, key, token string) error {
	if s.IdempotencyStore == nil {
		return errors.New("store down")
	}
	return s.IdempotencyStore.Release(ctx, key, token)
}

func TestIdempotencyStoreFailure(t *testing.T) {
	h := &counter{}
	err := middleware.Idempotency(failingStore{}, middleware.IdempotencyOptions{})(h).Handle(t.Context(), msg("a"))
	if err == nil || h.count() != 0 || message.IsPermanent(err) {
		t.Fatalf("fail closed: %v, runs %d", err, h.count())
	}
	open := middleware.Idempotency(failingStore{middleware.NewMemoryStore(middleware.MemoryStoreOptions{})}, middleware.IdempotencyOptions{FailOpen: true})(h)
	if err := open.Handle(t.Context(), msg("a")); err != nil || h.count() != 1 {
		t.Fatalf("fail open: %v, runs %d", err, h.count())
	}
}

func TestIdempotencyScopeAndKey(t *testing.T) {
	store := middleware.NewMemoryStore(middleware.MemoryStoreOptions{})
	h := &counter{}
	mw := middleware.Idempotency(store, middleware.IdempotencyOptions{
		Key: func(m *message.Message) string { return m.Header("order") },
	})(h)
	deliver := func(id, order, group string) {
		m := msg(id)
		m.Headers = message.Header{"order": order}
		if err := mw.Handle(router.NewContext(t.Context(), m, "orders", group, nil), m); err != nil {
			t.Fatal(err)
		}
	}
	deliver("m1", "o1", "billing")
	deliver("m2", "o1", "billing")  // same business key: skipped
	deliver("m3", "o1", "shipping") // another group processes it too
	deliver("m4", "o2", "billing")
	if h.count() != 3 {
		t.Fatalf("runs %d, want 3", h.count())
	}
	for _, k := range []string{"billing/o1", "shipping/o1", "billing/o2"} {
		if st, _ := store.Claim(t.Context(), k, "probe", time.Minute); st != middleware.Processed {
			t.Fatalf("key %q: %v", k, st)
		}
	}
}
