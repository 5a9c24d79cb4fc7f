package outbox_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/outbox"
)

// slowFailing takes d per publish and fails it, recording when each call
// started and ended.
type slowFailing struct {
	d      time.Duration
	mu     sync.Mutex
	starts []time.Time
	ends   []time.Time
}

func (s *slowFailing) Publish(ctx context.Context, topic string, msgs ...*message.Message) error {
	s.mu.Lock()
	s.starts = append(s.starts, time.Now())
	s.mu.Unlock()
	select {
	case <-time.After(s.d):
	case <-ctx.Done():
	}
	s.mu.Lock()
	s.ends = append(s.ends, time.Now())
	s.mu.Unlock()
	return errors.New("broker slow and failing")
}

func (s *slowFailing) Close() error { return nil }

func (s *slowFailing) calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.ends)
}

// The retry delay counts from the failure, not from the batch's start: a
// publish slower than the delay does not make the row due again at once.
// With RetryMin = RetryMax the delay is 50-100% of it (the jitter).
func TestRetryDelayCountsFromTheFailure(t *testing.T) {
	e := newEnv(t, 1)
	w := e.outbox(t, outbox.Options{})
	const delay = 400 * time.Millisecond
	p := &slowFailing{d: 600 * time.Millisecond}
	e.startRelay(t, p, outbox.RelayOptions{PollInterval: 10 * time.Millisecond, RetryMin: delay, RetryMax: delay})
	if err := w.Publish(context.Background(), outbox.SQL(e.db), "t", &message.Message{ID: "x", Key: "k"}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "three tries", func() bool { return p.calls() >= 3 })
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := 1; i < 3; i++ {
		if gap := p.starts[i].Sub(p.ends[i-1]); gap < delay/2 {
			t.Errorf("try %d came %v after the failure before it, under the least delay %v", i+1, gap, delay/2)
		}
	}
}

// When the transport fails everything, the one-by-one fallback gives up
// after three failures in a row; the rows it did not try are put off, not
// charged an attempt, and never made dead, even with MaxAttempts 1.
func TestRowsNotTriedAreNotChargedAnAttempt(t *testing.T) {
	e := newEnv(t, 1) // one partition: all rows in one batch
	w := e.outbox(t, outbox.Options{})
	tr, _ := memSink(t, "t")
	f := &faulty{Publisher: tr, down: true}
	var dead, put atomic.Int64
	e.startRelay(t, f, outbox.RelayOptions{PollInterval: 20 * time.Millisecond, RetryMin: time.Hour, MaxAttempts: 1,
		Hooks: outbox.Hooks{OnFailure: func(_ string, n int, d bool, _ error) {
			if d {
				dead.Add(int64(n))
			} else {
				put.Add(int64(n))
			}
		}}})
	e.writeRows(t, w, "t", 6, 6, 6) // 6 keys, one row each, one call
	waitFor(t, 10*time.Second, "the batch to commit", func() bool { return e.count(t, "attempts > 0 OR available_at > now()") == 6 })
	if got := f.tries.Load(); got != 1+3 {
		t.Errorf("%d publish calls, want the group call and 3 single tries", got)
	}
	if n := e.count(t, "dead_at IS NOT NULL AND attempts = 1"); n != 3 {
		t.Errorf("%d rows made dead, want the 3 tried", n)
	}
	if n := e.count(t, "dead_at IS NULL AND attempts = 0 AND available_at > now() AND last_error LIKE '%not tried%'"); n != 3 {
		t.Errorf("%d rows put off without an attempt, want 3", n)
	}
	if dead.Load() != 3 || put.Load() != 3 {
		t.Errorf("OnFailure told of %d dead and %d retried rows, want 3 and 3", dead.Load(), put.Load())
	}
}
