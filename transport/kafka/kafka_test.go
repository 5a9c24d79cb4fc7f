package kafkatransport_test

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	kafkatransport "github.com/courierkit/courier/transport/kafka"
)

// subscribe runs Subscribe in the background until the test ends and
// reports its return value.
func subscribe(t testing.TB, tr transport.Subscriber, topic string, h message.Handler, o transport.SubscribeOptions) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tr.Subscribe(ctx, topic, h, o) }()
	var once sync.Once
	var err error
	stop = func() error {
		once.Do(func() {
			cancel()
			select {
			case err = <-done:
			case <-time.After(30 * time.Second):
				err = errors.New("Subscribe did not return within 30s of its ctx ending")
			}
		})
		return err
	}
	t.Cleanup(func() { stop() })
	return stop
}

// waitAssigned waits until group has members owning every partition of
// topic (the group join on kfake takes around a second).
func waitAssigned(t testing.TB, tr *kafkatransport.Transport, topic, group string) {
	t.Helper()
	var admin sarama.ClusterAdmin
	if !tr.As(&admin) {
		t.Fatal("As(*sarama.ClusterAdmin) = false")
	}
	waitFor(t, 20*time.Second, "group "+group+" to own "+topic, func() bool {
		ds, err := admin.DescribeConsumerGroups([]string{group})
		if err != nil || len(ds) == 0 || ds[0].State != "Stable" || len(ds[0].Members) == 0 {
			return false
		}
		for _, m := range ds[0].Members {
			a, err := m.GetMemberAssignment()
			if err == nil && len(a.Topics[topic]) > 0 {
				return true
			}
		}
		return false
	})
}

func TestRoundTrip(t *testing.T) {
	tr := newTransport(t, testOptions(t))
	ctx := context.Background()
	topic, group := name(t, "t"), name(t, "g")
	got := make(chan *message.Message, 10)
	subscribe(t, tr, topic, message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		var cm *sarama.ConsumerMessage
		var sess sarama.ConsumerGroupSession
		if !m.As(&cm) || cm.Topic != topic || !m.As(&sess) || sess == nil {
			t.Errorf("message As: native message or session missing")
		}
		got <- m
		return nil
	}), transport.SubscribeOptions{Group: group})
	waitAssigned(t, tr, topic, group)
	in := &message.Message{ID: "id-1", Key: "k", Headers: message.Header{"a": "1", "content-type": "text/plain", "empty": ""}, Payload: []byte("hello\x00world")}
	if err := tr.Publish(ctx, topic, in); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		if m.ID != in.ID || m.Key != in.Key || !bytes.Equal(m.Payload, in.Payload) || len(m.Headers) != 3 || m.Headers["a"] != "1" || m.Headers["empty"] != "" {
			t.Fatalf("got %+v, want %+v", m, in)
		}
		if m.Topic != topic || m.Attempt != 1 || m.Time.IsZero() || time.Since(m.Time) > time.Minute {
			t.Fatalf("received fields: topic %q attempt %d time %v", m.Topic, m.Attempt, m.Time)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("no delivery")
	}
}
