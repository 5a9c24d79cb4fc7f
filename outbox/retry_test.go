package outbox_test

import (
	"context"
	"errors"
	"sync"
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
