package memtransport_test

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	memtransport "github.com/courierkit/courier/transport/mem"
)

func newConn(t *testing.T, o memtransport.Options) *memtransport.Transport {
	t.Helper()
	c, err := memtransport.New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// A full backlog blocks Publish until a subscriber makes room or ctx ends;
// a single call larger than the backlog is a LimitError.
func TestBacklogBlocksPublish(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newConn(t, memtransport.Options{MaxBacklog: 4})
		ctx := context.Background()
		if err := c.Declare(ctx, "orders", transport.SubscribeOptions{Group: "g"}); err != nil {
			t.Fatal(err)
		}
		for i := range 4 {
			if err := c.Publish(ctx, "orders", message.New([]byte(strconv.Itoa(i)))); err != nil {
				t.Fatal(err)
			}
		}
		tctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		if err := c.Publish(tctx, "orders", message.New(nil)); err != context.DeadlineExceeded {
			t.Fatalf("Publish into a full backlog = %v, want DeadlineExceeded", err)
		}
		var le *transport.LimitError
		if err := c.Publish(ctx, "orders", make5()...); !errors.As(err, &le) || le.What != "batch" {
			t.Fatalf("batch over the backlog = %v", err)
		}

		published := make(chan error, 1)
		go func() { published <- c.Publish(ctx, "orders", message.New([]byte("late"))) }()
		synctest.Wait()
		select {
		case err := <-published:
			t.Fatalf("Publish returned %v while the backlog was full", err)
		default:
		}
		var got []string
		var mu sync.Mutex
		sctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			c.Subscribe(sctx, "orders", message.HandlerFunc(func(_ context.Context, m *message.Message) error {
				mu.Lock()
				got = append(got, string(m.Payload))
				mu.Unlock()
				return nil
			}), transport.SubscribeOptions{Group: "g"})
		}()
		if err := <-published; err != nil {
			t.Fatalf("blocked Publish: %v", err)
		}
		synctest.Wait()
		stop()
		<-done
		if strings.Join(got, ",") != "0,1,2,3,late" {
			t.Errorf("delivered %v", got)
		}
	})
}

func make5() []*message.Message {
	out := make([]*message.Message, 5)
	for i := range out {
		out[i] = message.New(nil)
	}
	return out
}

// A nacked message of an ordered key comes back before the key's later
// messages, with or without a delay.
func TestOrderedNackKeepsKeyOrder(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newConn(t, memtransport.Options{})
		ctx := context.Background()
		o := transport.SubscribeOptions{Group: "g", Concurrency: 4, OrderedByKey: true}
		c.Declare(ctx, "t", o)
		var msgs []*message.Message
		for i := range 10 {
			m := message.New([]byte(strconv.Itoa(i)))
			m.Key = "k" + strconv.Itoa(i%2)
			msgs = append(msgs, m)
		}
		c.Publish(ctx, "t", msgs...)
		var mu sync.Mutex
		seq := map[string][]string{}
		failed := map[string]bool{}
		sctx, stop := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() {
			defer close(done)
			c.Subscribe(sctx, "t", message.HandlerFunc(func(_ context.Context, m *message.Message) error {
				mu.Lock()
				defer mu.Unlock()
				p := string(m.Payload)
				if (p == "2" || p == "5") && !failed[p] {
					failed[p] = true
					if p == "5" {
						return message.RetryAfter(errors.New("later"), time.Second)
					}
					return errors.New("again")
				}
				seq[m.Key] = append(seq[m.Key], p)
				return nil
			}), o)
		}()
		time.Sleep(2 * time.Second)
		synctest.Wait()
		stop()
		<-done
		if a, b := strings.Join(seq["k0"], ","), strings.Join(seq["k1"], ","); a != "0,2,4,6,8" || b != "1,3,5,7,9" {
			t.Errorf("per-key order after nacks: k0 %s, k1 %s", a, b)
		}
	})
}

func TestOpenURL(t *testing.T) {
	ctx := context.Background()
	a, err := transport.Open(ctx, "mem://shared-test?max_backlog=100&max_payload=10")
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := transport.Open(ctx, "mem://shared-test")
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	var ba, bb *memtransport.Broker
	if !a.As(&ba) || !b.As(&bb) || ba != bb || ba != memtransport.Named("shared-test") {
		t.Error("mem://NAME should connect to one named broker")
	}
	if a.Capabilities().Limits.MaxPayload != 10 {
		t.Errorf("max_payload not applied: %+v", a.Capabilities().Limits)
	}
	c, _ := transport.Open(ctx, "mem://")
	defer c.Close()
	var bc *memtransport.Broker
	if c.As(&bc); bc == ba {
		t.Error("mem:// should be a private broker")
	}
	for _, bad := range []string{"mem://x:1", "mem://u@x", "mem://x/path", "mem:opaque", "mem://?nope=1"} {
		if _, err := transport.Open(ctx, bad); err == nil {
			t.Errorf("%s: no error", bad)
		}
	}
}

func TestStartOldestUnsupported(t *testing.T) {
	c := newConn(t, memtransport.Options{})
	err := c.Subscribe(context.Background(), "t", message.HandlerFunc(func(context.Context, *message.Message) error { return nil }), transport.SubscribeOptions{Start: transport.StartOldest})
	if !errors.Is(err, transport.ErrUnsupported) {
		t.Fatalf("err = %v", err)
	}
}

func TestLag(t *testing.T) {
	c := newConn(t, memtransport.Options{})
	ctx := context.Background()
	c.Declare(ctx, "t", transport.SubscribeOptions{Group: "g"})
	c.Publish(ctx, "t", make5()...)
	l, err := c.Lag(ctx, "t", "g")
	if err != nil || l.Pending != 5 || l.InFlight != 0 {
		t.Fatalf("lag %+v, %v", l, err)
	}
	if _, err := c.Lag(ctx, "t", "nope"); err == nil {
		t.Error("lag of a missing group")
	}
	c.Close()
	if _, err := c.Lag(ctx, "t", "g"); !errors.Is(err, transport.ErrClosed) {
		t.Errorf("Lag after Close = %v", err)
	}
}

// Publishes on one Conn do not stop when another Conn to the same broker
// closes, and messages survive a subscriber's Conn closing.
func TestCloseKeepsBrokerState(t *testing.T) {
	b := memtransport.NewBroker()
	ctx := context.Background()
	c1 := newConn(t, memtransport.Options{Broker: b})
	c1.Declare(ctx, "t", transport.SubscribeOptions{Group: "g"})
	c1.Close()
	c2 := newConn(t, memtransport.Options{Broker: b})
	if err := c2.Publish(ctx, "t", message.New([]byte("kept"))); err != nil {
		t.Fatal(err)
	}
	l, _ := c2.Lag(ctx, "t", "g")
	if l.Pending != 1 {
		t.Errorf("pending %d", l.Pending)
	}
}
