package transport

import (
	"context"
	"sync"
)

// sema is the Dispatcher's MaxInFlight bound: a counting semaphore that
// takes and returns several tokens under one lock, so a batch of messages
// costs one round instead of a channel operation per message.
type sema struct {
	mu      sync.Mutex
	free    int
	waiters int
	wake    chan struct{} // closed (and replaced) when tokens return to waiters
}

func newSema(n int) *sema { return &sema{free: n, wake: make(chan struct{})} }

// acquire takes between 1 and n tokens, waiting while none is free. It
// returns ctx.Err() when ctx ends first and ErrClosed when closed does.
func (s *sema) acquire(ctx context.Context, closed <-chan struct{}, n int) (int, error) {
	s.mu.Lock()
	for s.free == 0 {
		s.waiters++
		wake := s.wake
		s.mu.Unlock()
		select {
		case <-wake:
		case <-ctx.Done():
			s.leave()
			return 0, ctx.Err()
		case <-closed:
			s.leave()
			return 0, ErrClosed
		}
		s.mu.Lock()
		s.waiters--
	}
	k := min(n, s.free)
	s.free -= k
	s.mu.Unlock()
	return k, nil
}

func (s *sema) leave() {
	s.mu.Lock()
	s.waiters--
	s.mu.Unlock()
}

// release returns n tokens.
func (s *sema) release(n int) {
	s.mu.Lock()
	s.free += n
	if s.waiters > 0 {
		close(s.wake)
		s.wake = make(chan struct{})
	}
	s.mu.Unlock()
}
