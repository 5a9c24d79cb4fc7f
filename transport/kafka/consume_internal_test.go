package kafkatransport

import (
	"context"
	"sync"
	"testing"

	"github.com/IBM/sarama"

	"github.com/courierkit/courier/transport"
)

// revoke marks the committable offset itself even when an ack has already
// recorded it as marked: ack (and ackRun) call MarkOffset after unlocking
// the partition, so revoke can run in between, and the session commits
// when revoke returns. Here the acking goroutine is held inside its mark
// call (standing in for being descheduled after the unlock) while revoke
// runs: revoke must mark the acked record's next offset before it returns.
// It skipped the mark, and the commit missed the record, which the
// partition's next owner then read again.
func TestRevokeMarksOffsetAnAckHasNotMarkedYet(t *testing.T) {
	so := transport.SubscribeOptions{MaxInFlight: 8}.Defaults()
	s := &subscription{topic: "t", opts: so, lim: newLimiter(so.MaxInFlight), parts: map[*partState]struct{}{}}
	s.q.signal = make(chan struct{}, 1)

	var mu sync.Mutex
	var marks []int64
	inAck, release := make(chan struct{}), make(chan struct{})
	first := true
	mark := func(next int64) {
		mu.Lock()
		marks = append(marks, next)
		hold := first
		first = false
		mu.Unlock()
		if hold { // the ack's mark: wait while revoke runs
			close(inAck)
			<-release
		}
	}
	pt := s.newPart(0, context.Background(), mark, nil)
	d := &delivery{pt: pt, cm: &sarama.ConsumerMessage{Topic: "t", Partition: 0, Offset: 41}}
	if got := pt.admit([]*delivery{d}); len(got) != 1 {
		t.Fatalf("admit returned %d deliveries, want 1", len(got))
	}
	s.lim.acquire(context.Background(), 1)
	pt.mu.Lock()
	pt.inDispatch++
	pt.mu.Unlock()

	acked := make(chan struct{})
	go func() { defer close(acked); pt.ack(d) }()
	<-inAck
	pt.revoke()
	mu.Lock()
	got := append([]int64(nil), marks...)
	mu.Unlock()
	close(release)
	<-acked
	if len(got) != 2 || got[1] != 42 {
		t.Fatalf("marks when revoke returned: %v, want [42 42] (the ack's, still in progress, and revoke's)", got)
	}
}
