package router

import (
	"context"
	"testing"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// BenchmarkRouteHandle is the router's own per-message work (delivery
// context, in-flight accounting, drain check, panic guard, counters),
// isolated from any transport.
func BenchmarkRouteHandle(b *testing.B) {
	r := New(nopSubscriber{}, Options{})
	if err := r.Handle("t", "g", message.HandlerFunc(func(context.Context, *message.Message) error { return nil })); err != nil {
		b.Fatal(err)
	}
	rt := r.routes[0]
	rt.handler = rt.build(nil)
	// Each delivery is a new *Message, as transports make them: a message
	// from a ring is reset before it is handed over again (the reset,
	// ~3 ns, is part of the figure).
	ms := make([]message.Message, 1024)
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		m := &ms[i%len(ms)]
		*m = message.Message{ID: "x"}
		_ = rt.Handle(ctx, m)
		i++
	}
}

type nopSubscriber struct{}

func (nopSubscriber) Subscribe(ctx context.Context, _ string, _ message.Handler, _ transport.SubscribeOptions) error {
	<-ctx.Done()
	return ctx.Err()
}
func (nopSubscriber) Close() error { return nil }
