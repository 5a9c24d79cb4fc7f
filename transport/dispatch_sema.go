package transport

import (
	"context"
	"slices"
	"sync"
)

// sema is the Dispatcher's MaxInFlight bound: a counting semaphore that
// takes and returns several tokens under one lock, so a batch of messages
// costs one round instead of a channel operation per message. Waiters
// queue in arrival order and a release wakes only as many of them as it
// returns tokens (no stampede of every blocked Deliver per release).
type sema struct {
	mu      sync.Mutex
	free    int
	waiters []chan struct{}
}

func newSema(n int) *sema { return &sema{free: n} }

// acquire takes between 1 and n tokens, waiting while none is free. It
// returns ctx.Err() when ctx ends first and ErrClosed when closed does.
func (s *sema) acquire(ctx context.Context, closed <-chan struct{}, n int) (int, error) {
	s.mu.Lock()
	for s.free == 0 {
		wake := make(chan struct{})
		s.waiters = append(s.waiters, wake)
		s.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			s.leave(wake)
			return 0, ctx.Err()
		case <-closed:
			s.leave(wake)
			return 0, ErrClosed
		}
		s.mu.Lock()
	}
	k := min(n, s.free)
	s.free -= k
	s.wakeLocked(s.free) // tokens left: let the next waiters try
	s.mu.Unlock()
	return k, nil
}

// leave drops a waiter that gave up; when it had been woken already, the
// wake-up goes to the next one.
func (s *sema) leave(wake chan struct{}) {
	s.mu.Lock()
	if i := slices.Index(s.waiters, wake); i >= 0 {
		s.waiters = slices.Delete(s.waiters, i, i+1)
	} else {
		s.wakeLocked(s.free)
	}
	s.mu.Unlock()
}

// release returns n tokens.
func (s *sema) release(n int) {
	s.mu.Lock()
	s.free += n
	s.wakeLocked(n)
	s.mu.Unlock()
}

// wakeLocked wakes up to n waiters, oldest first. Called with mu held.
func (s *sema) wakeLocked(n int) {
	for ; n > 0 && len(s.waiters) > 0; n-- {
		close(s.waiters[0])
		s.waiters[0] = nil
		s.waiters = s.waiters[1:]
	}
}
