package sqstransport_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	sqstransport "github.com/courierkit/courier/transport/sqs"
)

func openStub(t *testing.T, s *stubFIFO) *sqstransport.Transport {
	t.Helper()
	tr, err := sqstransport.New(context.Background(), sqstransport.Options{
		Mode: sqstransport.ModeSQS, FIFO: true, Endpoint: s.srv.URL,
		AccessKeyID: "AKIDEXAMPLE", SecretAccessKey: "secretsecret", Region: "us-east-1", WaitTime: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	return tr
}

// AWS may return several messages of one message group in one
// ReceiveMessage. When the first fails, the ones received behind it must
// not run before its redelivery: they go back unrun and come again after
// it, so the group is handled in order.
func TestFIFOGroupNackKeepsOrder(t *testing.T) {
	for _, conc := range []int{1, 4} {
		t.Run(fmt.Sprint("concurrency", conc), func(t *testing.T) {
			s := newStubFIFO(t)
			ids := []string{"a1", "a2", "a3", "b1", "b2"}
			for _, id := range ids {
				s.add(id, id[:1])
			}
			tr := openStub(t, s)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			var mu sync.Mutex
			var runs []string
			ok := map[string]bool{}
			err := tr.Subscribe(ctx, "q", message.HandlerFunc(func(_ context.Context, m *message.Message) error {
				mu.Lock()
				defer mu.Unlock()
				runs = append(runs, fmt.Sprintf("%s@%d", m.ID, m.Attempt))
				if (m.ID == "a1" || m.ID == "b2") && m.Attempt == 1 {
					return errors.New("transient")
				}
				ok[m.ID] = true
				if len(ok) == len(ids) {
					cancel()
				}
				return nil
			}), transport.SubscribeOptions{Group: "g", OrderedByKey: true, Concurrency: conc, MaxInFlight: 10})
			if !errors.Is(err, context.Canceled) {
				t.Fatalf("Subscribe: %v (runs %v)", err, runs)
			}
			mu.Lock()
			defer mu.Unlock()
			// Per group, in order: a failed message runs again before the
			// next one runs at all.
			for _, g := range []string{"a", "b"} {
				var seq []string
				for _, r := range runs {
					if r[:1] == g {
						seq = append(seq, r)
					}
				}
				want := map[string][]string{
					"a": {"a1@1", "a1@2", "a2@2", "a3@2"},
					"b": {"b1@1", "b2@1", "b2@2"},
				}[g]
				if !slices.Equal(seq, want) {
					t.Errorf("group %s ran %v, want %v (server calls %v)", g, seq, want, s.log())
				}
			}
			if n := s.remaining(); n != 0 {
				t.Errorf("%d messages left in the queue", n)
			}
		})
	}
}

// A message that failed for good (deleted here: no dead-letter topic, no
// redrive policy) leaves its group: the ones received behind it run at
// once, not after a redelivery.
func TestFIFOGroupPermanentFailureMovesOn(t *testing.T) {
	s := newStubFIFO(t)
	for _, id := range []string{"a1", "a2", "a3"} {
		s.add(id, "a")
	}
	tr := openStub(t, s)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var mu sync.Mutex
	var runs []string
	err := tr.Subscribe(ctx, "q", message.HandlerFunc(func(_ context.Context, m *message.Message) error {
		mu.Lock()
		defer mu.Unlock()
		runs = append(runs, fmt.Sprintf("%s@%d", m.ID, m.Attempt))
		if len(runs) == 3 {
			cancel()
		}
		if m.ID == "a1" {
			return message.Permanent(errors.New("bad"))
		}
		return nil
	}), transport.SubscribeOptions{Group: "g", OrderedByKey: true, Concurrency: 2, MaxInFlight: 10})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("Subscribe: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if want := []string{"a1@1", "a2@1", "a3@1"}; !slices.Equal(runs, want) {
		t.Errorf("ran %v, want %v (server calls %v)", runs, want, s.log())
	}
}
