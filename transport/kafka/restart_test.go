package kafkatransport_test

import (
	"context"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/courierkit/courier/internal/testenv"
	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// Consumption resumes on its own after the brokers went away and came back
// (google/go-cloud#2435): a group subscription and a group-less one both
// receive what is published after a kfake restart, and the group's
// committed offsets move past it.
func TestResumeAfterBrokerRestart(t *testing.T) {
	if testenv.KafkaExternal() {
		t.Skip("cannot restart the brokers of $" + testenv.KafkaEnvVar)
	}
	o := testOptions(t)
	tr := newTransport(t, o)
	pub := newTransport(t, o)
	ctx := context.Background()
	topic, group := name(t, "t"), name(t, "g")
	if err := tr.Declare(ctx, topic, transport.SubscribeOptions{Group: group}); err != nil {
		t.Fatal(err)
	}
	type seen struct {
		sync.Mutex
		ids map[string]bool
	}
	grp, plain := &seen{ids: map[string]bool{}}, &seen{ids: map[string]bool{}}
	handler := func(s *seen) message.Handler {
		return message.HandlerFunc(func(_ context.Context, m *message.Message) error {
			s.Lock()
			s.ids[m.ID] = true
			s.Unlock()
			return nil
		})
	}
	stopG := subscribe(t, tr, topic, handler(grp), transport.SubscribeOptions{Group: group})
	stopP := subscribe(t, tr, topic, handler(plain), transport.SubscribeOptions{})
	waitAssigned(t, tr, topic, group)
	publish := func(prefix string) []string {
		var ids []string
		var ms []*message.Message
		for i := range 10 {
			m := &message.Message{ID: prefix + strconv.Itoa(i), Key: strconv.Itoa(i)}
			ms = append(ms, m)
			ids = append(ids, m.ID)
		}
		deadline := time.Now().Add(30 * time.Second)
		for {
			err := pub.Publish(ctx, topic, ms...)
			if err == nil {
				return ids
			}
			if time.Now().After(deadline) {
				t.Fatalf("Publish after the restart: %v", err)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
	all := func(s *seen, ids []string) func() bool {
		return func() bool {
			s.Lock()
			defer s.Unlock()
			for _, id := range ids {
				if !s.ids[id] {
					return false
				}
			}
			return true
		}
	}
	before := publish("before-")
	waitFor(t, 20*time.Second, "delivery before the restart", func() bool { return all(grp, before)() && all(plain, before)() })

	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := restartKfake(rctx); err != nil {
		t.Fatal(err)
	}
	after := publish("after-")
	waitFor(t, 60*time.Second, "group delivery after the restart", all(grp, after))
	waitFor(t, 60*time.Second, "group-less delivery after the restart", all(plain, after))
	waitFor(t, 30*time.Second, "offsets committed past the restart", func() bool {
		lag, err := tr.Lag(ctx, topic, group)
		return err == nil && lag.Pending == 0
	})
	if err := stopG(); err != context.Canceled {
		t.Errorf("group Subscribe returned %v", err)
	}
	if err := stopP(); err != context.Canceled {
		t.Errorf("group-less Subscribe returned %v", err)
	}
}
