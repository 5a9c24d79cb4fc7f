package middleware

import (
	"context"
	"sync"
	"sync/atomic"
	"time"
)

// deadlineCtx is context.WithDeadline (or, with a zero deadline,
// context.WithCancel) made lazy: the timer and the
// done channel (a real context.WithDeadline child) are created only when
// someone asks for Done or registers an AfterFunc — a handler that does
// no I/O and returns fast never pays for a runtime timer. Err and
// Deadline answer from the clock without one. Observable behaviour is
// that of context.WithDeadline(parent, d): Done closes at the deadline or
// when parent ends, Err reports DeadlineExceeded or the parent's error,
// Value passes through, and contexts derived from it are cancelled with
// it (through AfterFunc, without a goroutine).
type deadlineCtx struct {
	context.Context // parent
	deadline        time.Time

	mu       sync.Mutex // guards child and cancel
	child    context.Context
	cancel   context.CancelFunc
	made     atomic.Bool // child exists (set under mu)
	released atomic.Bool
}

func newDeadlineCtx(parent context.Context, d time.Time) *deadlineCtx {
	return &deadlineCtx{Context: parent, deadline: d}
}

// withDeadline has context.WithDeadline's shape, for tests.
func withDeadline(parent context.Context, d time.Time) (*deadlineCtx, func()) {
	c := newDeadlineCtx(parent, d)
	return c, c.release
}

// materialize returns the real WithDeadline child, creating it once.
func (c *deadlineCtx) materialize() context.Context {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.child == nil {
		if c.deadline.IsZero() {
			c.child, c.cancel = context.WithCancel(c.Context)
		} else {
			c.child, c.cancel = context.WithDeadline(c.Context, c.deadline)
		}
		c.made.Store(true)
		if c.released.Load() {
			c.cancel()
		}
	}
	return c.child
}

func (c *deadlineCtx) Deadline() (time.Time, bool) {
	pd, ok := c.Context.Deadline()
	if c.deadline.IsZero() || ok && pd.Before(c.deadline) {
		return pd, ok
	}
	return c.deadline, true
}

func (c *deadlineCtx) Done() <-chan struct{} { return c.materialize().Done() }

func (c *deadlineCtx) Err() error {
	if c.made.Load() {
		c.mu.Lock()
		child := c.child
		c.mu.Unlock()
		return child.Err()
	}
	if err := c.Context.Err(); err != nil {
		return err
	}
	if c.released.Load() {
		return context.Canceled
	}
	if !c.deadline.IsZero() && !time.Now().Before(c.deadline) {
		return context.DeadlineExceeded
	}
	return nil
}

// AfterFunc lets context.AfterFunc, and contexts derived with
// WithCancel and friends, hook into c without a watching goroutine.
func (c *deadlineCtx) AfterFunc(f func()) func() bool {
	return context.AfterFunc(c.materialize(), f)
}

// release is the CancelFunc: it ends the context (Canceled, unless it
// already ended) and frees the timer.
// Without a child it is two atomic operations: a child made
// concurrently sees released and cancels itself.
func (c *deadlineCtx) release() {
	if c.released.Swap(true) || !c.made.Load() {
		return
	}
	c.mu.Lock()
	c.cancel()
	c.mu.Unlock()
}

// Value passes through; String names the context in panics and logs.
func (c *deadlineCtx) String() string { return "middleware.Timeout(" + c.deadline.String() + ")" }
