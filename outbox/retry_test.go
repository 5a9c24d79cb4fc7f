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
	"github.com/courierkit/courier/transport"
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
// after three failures in a row; the rows it did not try are not charged
// an attempt, so even with MaxAttempts 1 they are made dead only after a
// publish of their own failed.
func TestRowsNotTriedAreNotChargedAnAttempt(t *testing.T) {
	e := newEnv(t, 1) // one partition: all rows in one batch
	w := e.outbox(t, outbox.Options{})
	tr, _ := memSink(t, "t")
	f := &faulty{Publisher: tr, down: true}
	var dead, retried atomic.Int64
	e.startRelay(t, f, outbox.RelayOptions{PollInterval: 20 * time.Millisecond, RetryMin: time.Hour, MaxAttempts: 1,
		Hooks: outbox.Hooks{OnFailure: func(_ string, n int, d bool, _ error) {
			if d {
				dead.Add(int64(n))
			} else {
				retried.Add(int64(n))
			}
		}}})
	e.writeRows(t, w, "t", 6, 6, 6) // 6 keys, one row each, one call
	waitFor(t, 10*time.Second, "all rows dead", func() bool { return e.count(t, "dead_at IS NOT NULL") == 6 })
	// Batch 1: the group call and 3 single tries, 3 rows left untried;
	// batch 2: the same for those 3. Each row died of its own publish.
	if got := f.tries.Load(); got != 1+3+1+3 {
		t.Errorf("%d publish calls, want 8", got)
	}
	if n := e.count(t, "attempts = 1 AND last_error = 'injected failure'"); n != 6 {
		t.Errorf("%d rows with one failed attempt of their own, want 6", n)
	}
	if dead.Load() != 6 || retried.Load() != 0 {
		t.Errorf("OnFailure told of %d dead and %d retried rows, want 6 and 0", dead.Load(), retried.Load())
	}
}

// failFirst fails its first n calls, then publishes.
type failFirst struct {
	transport.Publisher
	n     atomic.Int64
	tried atomic.Int64
}

func (f *failFirst) Publish(ctx context.Context, topic string, msgs ...*message.Message) error {
	if f.tried.Add(1) <= f.n.Load() {
		return errInjected
	}
	return f.Publisher.Publish(ctx, topic, msgs...)
}

// A row the fallback left untried still comes before its key's later rows
// that did not fit in the batch.
func TestRowsNotTriedKeepTheirKeysOrder(t *testing.T) {
	e := newEnv(t, 1)
	w := e.outbox(t, outbox.Options{})
	tr, s := memSink(t, "t")
	f := &failFirst{Publisher: tr}
	f.n.Store(4) // the group call and 3 single tries of the first batch
	e.startRelay(t, f, outbox.RelayOptions{PollInterval: 20 * time.Millisecond, BatchSize: 6, RetryMin: time.Hour})
	ctx := context.Background()
	var msgs []*message.Message
	for _, k := range []string{"a", "b", "c", "d", "e", "f"} {
		msgs = append(msgs, &message.Message{Key: k, Payload: []byte("0")})
	}
	msgs = append(msgs, &message.Message{Key: "f", Payload: []byte("1")}) // beyond the batch
	if err := w.Publish(ctx, outbox.SQL(e.db), "t", msgs...); err != nil {
		t.Fatal(err)
	}
	s.waitN(t, 4, 10*time.Second) // d, e, f and f's second row; a, b, c wait an hour
	var f0 = -1
	for i, m := range s.snapshot() {
		if m.Key != "f" {
			continue
		}
		if string(m.Payload) == "0" {
			f0 = i
		} else if f0 < 0 {
			t.Fatalf("key f: row 1 published before row 0 (%d messages)", s.len())
		}
	}
	if e.count(t, "attempts = 1 AND msg_key IN ('a', 'b', 'c')") != 3 {
		t.Errorf("the 3 failed rows do not wait")
	}
}
