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
	m := &message.Message{ID: "x"}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		_ = rt.Handle(ctx, m)
	}
}

type nopSubscriber struct{}

func (nopSubscriber) Subscribe(ctx context.Context, _ string, _ message.Handler, _ transport.SubscribeOptions) error {
	<-ctx.Done()
	return ctx.Err()
}
func (nopSubscriber) Close() error { return nil }
