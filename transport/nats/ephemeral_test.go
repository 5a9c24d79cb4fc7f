package natstransport_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	natstransport "github.com/courierkit/courier/transport/nats"
)

// TestEphemeralRecreateKeepsNacked: an ephemeral consumer that vanishes
// while a message waits out a nack delay (settled from the subscription's
// view, unacked on the server) is recreated no later than that message,
// which is then delivered again, although a newer message was received
// and acked after it.
func TestEphemeralRecreateKeepsNacked(t *testing.T) {
	srv := newServer(t, nil)
	ctx := ctxT(t, 40*time.Second)
	tr := open(t, natstransport.Options{URL: srv.URL()})
	for _, id := range []string{"one", "two"} {
		if err := tr.Publish(ctx, "eph", &message.Message{ID: id, Payload: []byte(id)}); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	runs := map[string]int{}
	settled := map[string]transport.Settlement{}
	again := make(chan struct{}, 1)
	o := transport.SubscribeOptions{Start: transport.StartOldest,
		Settled: func(_ context.Context, m *message.Message, s transport.Settlement) {
			mu.Lock()
			settled[m.ID] = s
			mu.Unlock()
		}}
	subscribe(t, tr, "eph", o, func(_ context.Context, m *message.Message) error {
		mu.Lock()
		runs[m.ID]++
		n := runs[m.ID]
		mu.Unlock()
		if m.ID != "one" {
			return nil
		}
		if n == 1 {
			// Longer than the test: only a recreated consumer brings
			// it back in time.
			return message.RetryAfter(errors.New("later"), time.Hour)
		}
		select {
		case again <- struct{}{}:
		default:
		}
		return nil
	})
	waitFor(t, 10*time.Second, "one nacked and two acked", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(settled) == 2
	})
	st, err := jsOf(t, tr).Stream(ctx, "COURIER_eph")
	if err != nil {
		t.Fatal(err)
	}
	for n := range st.ConsumerNames(ctx).Name() {
		if err := st.DeleteConsumer(ctx, n); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-again:
	case <-ctx.Done():
		t.Fatal("the nacked message was never delivered again after the ephemeral consumer was recreated")
	}
	mu.Lock()
	defer mu.Unlock()
	if runs["two"] < 1 {
		t.Errorf("runs %v", runs)
	}
}
