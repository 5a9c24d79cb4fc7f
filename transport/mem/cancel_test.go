package memtransport_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"testing/synctest"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	memtransport "github.com/courierkit/courier/transport/mem"
)

// Messages a subscription fetched but did not start when its ctx was
// cancelled go back to their group untouched: in order, their attempt not
// counted, without NackDelay, and so never dead-lettered for running out
// of attempts they did not use.
func TestCancelReturnsUnstartedUntouched(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		c := newConn(t, memtransport.Options{})
		bg := context.Background()
		o := transport.SubscribeOptions{Group: "g", NackDelay: time.Hour, MaxAttempts: 1, DeadLetterTopic: "dlq"}
		if err := c.Declare(bg, "t", o); err != nil {
			t.Fatal(err)
		}
		if err := c.Declare(bg, "dlq", transport.SubscribeOptions{Group: "d"}); err != nil {
			t.Fatal(err)
		}
		for i := range 5 {
			if err := c.Publish(bg, "t", &message.Message{ID: fmt.Sprint("m", i)}); err != nil {
				t.Fatal(err)
			}
		}
		ctx, cancel := context.WithCancel(bg)
		var ran []string
		err := c.Subscribe(ctx, "t", message.HandlerFunc(func(_ context.Context, m *message.Message) error {
			ran = append(ran, m.ID)
			cancel()
			return nil
		}), o)
		if !errors.Is(err, context.Canceled) || !slices.Equal(ran, []string{"m0"}) {
			t.Fatalf("first subscription ran %v, returned %v", ran, err)
		}
		if l, err := c.Lag(bg, "t", "g"); err != nil || l.Pending != 4 || l.InFlight != 0 {
			t.Fatalf("Lag after the cancel = %+v, %v; want 4 pending", l, err)
		}
		ctx2, cancel2 := context.WithCancel(bg)
		var got []string
		_ = c.Subscribe(ctx2, "t", message.HandlerFunc(func(_ context.Context, m *message.Message) error {
			got = append(got, fmt.Sprintf("%s@%d", m.ID, m.Attempt))
			if len(got) == 4 {
				cancel2()
			}
			return nil
		}), o)
		if want := []string{"m1@1", "m2@1", "m3@1", "m4@1"}; !slices.Equal(got, want) {
			t.Errorf("second subscription got %v, want %v", got, want)
		}
		if l, err := c.Lag(bg, "dlq", "d"); err != nil || l.Pending != 0 {
			t.Errorf("dead-letter group: %+v, %v; want empty", l, err)
		}
	})
}
