package memtransport_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	memtransport "github.com/courierkit/courier/transport/mem"
)

// In an ordered group, a key whose first message waits out a long nack
// delay, with thousands of messages queued behind it, must not keep other
// keys' messages from being delivered; its own messages still come in
// order once the delay ends, and Lag counts the waiting ones as pending.
func TestOrderedBusyKeyDoesNotStarveOthers(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		const behind = 5000
		c := newConn(t, memtransport.Options{MaxBacklog: 20000})
		bg := context.Background()
		o := transport.SubscribeOptions{Group: "g", OrderedByKey: true, Concurrency: 2}
		if err := c.Declare(bg, "t", o); err != nil {
			t.Fatal(err)
		}
		var msgs []*message.Message
		for i := range behind + 1 {
			msgs = append(msgs, &message.Message{ID: fmt.Sprint("a", i), Key: "a"})
		}
		msgs = append(msgs, &message.Message{ID: "b0", Key: "b"})
		if err := c.Publish(bg, "t", msgs...); err != nil {
			t.Fatal(err)
		}
		var mu sync.Mutex
		var runs []string
		ctx, cancel := context.WithCancel(bg)
		done := make(chan error, 1)
		go func() {
			done <- c.Subscribe(ctx, "t", message.HandlerFunc(func(_ context.Context, m *message.Message) error {
				mu.Lock()
				runs = append(runs, fmt.Sprintf("%s@%d", m.ID, m.Attempt))
				mu.Unlock()
				if m.ID == "a0" && m.Attempt == 1 {
					return message.RetryAfter(errors.New("later"), time.Hour)
				}
				return nil
			}), o)
		}()
		synctest.Wait()
		mu.Lock()
		got := append([]string(nil), runs...)
		mu.Unlock()
		if len(got) != 2 || !(got[0] == "b0@1" || got[1] == "b0@1") {
			t.Fatalf("before the delay ended the handler ran %v, want a0@1 and b0@1", got)
		}
		l, err := c.Lag(bg, "t", "g")
		if err != nil || l.Pending != behind+1 || l.InFlight != 0 {
			t.Fatalf("Lag = %+v, %v; want Pending %d, InFlight 0", l, err, behind+1)
		}

		time.Sleep(time.Hour)
		synctest.Wait()
		mu.Lock()
		var a []string
		for _, r := range runs {
			if r[0] == 'a' {
				a = append(a, r)
			}
		}
		mu.Unlock()
		if len(a) != behind+2 || a[0] != "a0@1" || a[1] != "a0@2" {
			t.Fatalf("key a ran %d times, starting %v", len(a), a[:min(len(a), 3)])
		}
		for i, r := range a[2:] {
			if want := fmt.Sprintf("a%d@1", i+1); r != want {
				t.Fatalf("key a's run %d was %s, want %s", i+2, r, want)
			}
		}
		if l, err := c.Lag(bg, "t", "g"); err != nil || l.Pending != 0 || l.InFlight != 0 {
			t.Fatalf("Lag after draining = %+v, %v", l, err)
		}
		cancel()
		if err := <-done; !errors.Is(err, context.Canceled) {
			t.Fatalf("Subscribe: %v", err)
		}
	})
}
