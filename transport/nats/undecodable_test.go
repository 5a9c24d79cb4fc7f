package natstransport_test

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	natstransport "github.com/courierkit/courier/transport/nats"
)

// publishUndecodable stores a message on topic's subject that claims
// courier's header quoting but carries a value that is not quoted
// correctly: the adapter cannot read it as a courier message.
func publishUndecodable(t *testing.T, tr *natstransport.Transport, topic string) {
	t.Helper()
	js := jsOf(t, tr)
	m := nats.NewMsg("courier." + topic)
	m.Header.Set("Courier-Quoted", "1")
	m.Header.Set("X-Bad", `"unterminated`)
	m.Header.Set("X-Kept", `"fine"`)
	m.Data = []byte("raw payload")
	if _, err := js.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
}

// An undecodable message goes down the dead-letter path with the reason,
// never to the handler: to the dead-letter topic (with its payload and the
// headers it came with, the adapter's own left out) when one is set, and
// the Settled hook reports it; the messages around it are handled.
func TestUndecodableToDeadLetterTopic(t *testing.T) {
	srv := newServer(t, nil)
	tr := open(t, natstransport.Options{URL: srv.URL()})
	ctx := ctxT(t, 20*time.Second)
	var mu sync.Mutex
	var settled []transport.Settlement
	o := transport.SubscribeOptions{Group: "g", DeadLetterTopic: "undec-dlq", Settled: func(_ context.Context, _ *message.Message, s transport.Settlement) {
		mu.Lock()
		settled = append(settled, s)
		mu.Unlock()
	}}
	if err := tr.Declare(ctx, "undec", o); err != nil {
		t.Fatal(err)
	}
	if err := tr.Declare(ctx, "undec-dlq", transport.SubscribeOptions{Group: "ops"}); err != nil {
		t.Fatal(err)
	}
	if err := tr.Publish(ctx, "undec", &message.Message{ID: "before", Payload: []byte("a")}); err != nil {
		t.Fatal(err)
	}
	publishUndecodable(t, tr, "undec")
	if err := tr.Publish(ctx, "undec", &message.Message{ID: "after", Payload: []byte("b")}); err != nil {
		t.Fatal(err)
	}
	var handled sync.Map
	var calls atomic.Int32
	subscribe(t, tr, "undec", o, func(_ context.Context, m *message.Message) error {
		calls.Add(1)
		handled.Store(m.ID, true)
		return nil
	})
	dead := make(chan *message.Message, 4)
	subscribe(t, tr, "undec-dlq", transport.SubscribeOptions{Group: "ops"}, func(_ context.Context, m *message.Message) error {
		dead <- m
		return nil
	})
	var dm *message.Message
	select {
	case dm = <-dead:
	case <-ctx.Done():
		t.Fatal("the undecodable message did not reach the dead-letter topic")
	}
	if string(dm.Payload) != "raw payload" {
		t.Errorf("dead letter payload %q, want the raw payload", dm.Payload)
	}
	if r := dm.Headers[message.HeaderDeadLetterReason]; !strings.Contains(r, "malformed quoted") {
		t.Errorf("dead letter reason %q, want the decode error", r)
	}
	if dm.Headers["X-Bad"] != `"unterminated` || dm.Headers["X-Kept"] != `"fine"` {
		t.Errorf("dead letter headers %v, want X-Bad and X-Kept as they came", dm.Headers)
	}
	if _, ok := dm.Headers["Courier-Quoted"]; ok {
		t.Errorf("dead letter carries the adapter's own header: %v", dm.Headers)
	}
	waitFor(t, 10*time.Second, "both good messages handled", func() bool {
		_, a := handled.Load("before")
		_, b := handled.Load("after")
		return a && b
	})
	waitFor(t, 5*time.Second, "three settlements", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(settled) == 3
	})
	if n := calls.Load(); n != 2 {
		t.Errorf("handler ran %d times, want 2 (never for the undecodable message)", n)
	}
	mu.Lock()
	defer mu.Unlock()
	var dl int
	for _, s := range settled {
		if s.Outcome == transport.DeadLettered {
			dl++
			if s.DeadLetterTopic != "undec-dlq" || !message.IsPermanent(s.HandlerErr) || !strings.Contains(s.HandlerErr.Error(), "malformed quoted") {
				t.Errorf("settlement %+v, want dead-lettered to undec-dlq with the permanent decode error", s)
			}
		}
	}
	if dl != 1 {
		t.Errorf("%d dead-lettered settlements, want 1: %+v", dl, settled)
	}
}

// Without a dead-letter topic an undecodable message is terminated on the
// server (not redelivered, not pending), as before.
func TestUndecodableTerminatedWithoutDeadLetterTopic(t *testing.T) {
	srv := newServer(t, nil)
	tr := open(t, natstransport.Options{URL: srv.URL()})
	ctx := ctxT(t, 20*time.Second)
	o := transport.SubscribeOptions{Group: "g", AckWait: time.Second}
	if err := tr.Declare(ctx, "undect", o); err != nil {
		t.Fatal(err)
	}
	publishUndecodable(t, tr, "undect")
	if err := tr.Publish(ctx, "undect", &message.Message{ID: "good", Payload: []byte("y")}); err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	subscribe(t, tr, "undect", o, func(context.Context, *message.Message) error {
		calls.Add(1)
		return nil
	})
	s, _ := jsOf(t, tr).Stream(ctx, "COURIER_undect")
	c, _ := s.Consumer(ctx, "g")
	waitFor(t, 10*time.Second, "nothing pending", func() bool {
		ci, err := c.Info(ctx)
		return err == nil && ci.NumAckPending == 0 && ci.NumPending == 0 && calls.Load() == 1
	})
	time.Sleep(1500 * time.Millisecond) // past AckWait: it has not come back
	if n := calls.Load(); n != 1 {
		t.Fatalf("handler ran %d times, want 1 (the good message only)", n)
	}
}
