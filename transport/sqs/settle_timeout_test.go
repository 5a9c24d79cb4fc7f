package sqstransport_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	sqstransport "github.com/courierkit/courier/transport/sqs"
)

// A nack, a move to the redrive queue or a dead-letter publish that the
// service never answers must not hold Shutdown(ctx) for ever: each settle
// call has its own deadline (settleTimeout, shortened here).
func TestStalledSettleDoesNotHoldShutdown(t *testing.T) {
	defer sqstransport.SetSettleTimeout(300 * time.Millisecond)()
	for _, tc := range []struct {
		name string
		err  error
		o    sqstransport.Options
		so   transport.SubscribeOptions
	}{
		{"nack", errors.New("transient"), sqstransport.Options{}, transport.SubscribeOptions{}},
		{"redrive", message.Permanent(errors.New("bad")), sqstransport.Options{MaxReceiveCount: 5}, transport.SubscribeOptions{}},
		{"deadletter", message.Permanent(errors.New("bad")), sqstransport.Options{}, transport.SubscribeOptions{DeadLetterTopic: "dlq"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := newStubFIFO(t)
			s.add("m1", "k")
			hang := make(chan struct{})
			defer close(hang)
			s.mu.Lock()
			s.hang = hang
			s.mu.Unlock()
			o := tc.o
			o.Mode, o.Endpoint, o.Region, o.WaitTime = sqstransport.ModeSQS, s.srv.URL, "us-east-1", time.Second
			o.AccessKeyID, o.SecretAccessKey = "AKIDEXAMPLE", "secretsecret"
			tr, err := sqstransport.New(context.Background(), o)
			if err != nil {
				t.Fatal(err)
			}
			defer tr.Close()
			handled := make(chan struct{})
			subDone := make(chan error, 1)
			so := tc.so
			so.Group = "g"
			go func() {
				subDone <- tr.Subscribe(context.Background(), "q", message.HandlerFunc(func(context.Context, *message.Message) error {
					close(handled)
					return tc.err
				}), so)
			}()
			select {
			case <-handled:
			case err := <-subDone:
				t.Fatalf("Subscribe: %v", err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
			defer cancel()
			sd := make(chan error, 1)
			go func() { sd <- tr.Shutdown(ctx) }()
			select {
			case <-sd:
			case <-time.After(20 * time.Second):
				t.Fatal("Shutdown still blocked 20s after its ctx ended: a settle call has no deadline")
			}
			if err := <-subDone; !errors.Is(err, transport.ErrClosed) {
				t.Errorf("Subscribe: %v", err)
			}
		})
	}
}
