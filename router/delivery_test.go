package router

import (
	"context"
	"testing"
	"unsafe"

	"github.com/courierkit/courier/message"
)

// Delivery is read through message.Bound's memory (asDelivery): the two
// must keep one layout.
func TestDeliveryLayout(t *testing.T) {
	var d Delivery
	var b message.Bound
	if unsafe.Sizeof(d) != unsafe.Sizeof(b) || unsafe.Alignof(d) != unsafe.Alignof(b) ||
		unsafe.Offsetof(d.Message) != unsafe.Offsetof(b.Message) || unsafe.Offsetof(d.route) != unsafe.Offsetof(b.Value) {
		t.Fatal("router.Delivery and message.Bound no longer share a layout")
	}
}

// A handler's context keeps describing its own delivery after the
// handler returned, even when the same *Message is handed over again (a
// transport redelivering it) on another route, and building it allocates
// nothing for a new message.
func TestDeliveryContextKept(t *testing.T) {
	var kept []context.Context
	h := message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		kept = append(kept, ctx)
		return nil
	})
	r := New(nopSubscriber{}, Options{})
	for _, g := range []string{"a", "b"} {
		if err := r.Handle("t", g, h); err != nil {
			t.Fatal(err)
		}
	}
	for _, rt := range r.routes {
		rt.handler = rt.build(nil)
	}
	m := &message.Message{ID: "same"}
	_ = r.routes[0].Handle(context.Background(), m)
	_ = r.routes[1].Handle(context.Background(), m)
	for i, want := range []string{"a", "b"} {
		d := FromContext(kept[i])
		if d == nil || d.Message != m || d.Group() != want || d.Topic() != "t" {
			t.Errorf("context %d: delivery %+v, want group %q", i, d, want)
		}
	}
	if FromContext(context.Background()) != nil {
		t.Error("FromContext outside a router is not nil")
	}

	kept = kept[:0]
	ms := make([]message.Message, 64)
	i := 0
	allocs := testing.AllocsPerRun(len(ms)-1, func() {
		_ = r.routes[0].Handle(context.Background(), &ms[i])
		i++
	})
	if allocs != 0 {
		t.Errorf("Handle of a new message: %v allocations, want 0", allocs)
	}
	for j, ctx := range kept {
		if d := FromContext(ctx); d == nil || d.Message != &ms[j] {
			t.Fatalf("kept context %d lost its message", j)
		}
	}
}

// A nil message (a transport's bug) still reaches the handler chain with
// a Delivery whose Message is nil.
func TestDeliveryNilMessage(t *testing.T) {
	var got *Delivery
	r := New(nopSubscriber{}, Options{})
	if err := r.Handle("t", "g", message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		got = FromContext(ctx)
		return nil
	})); err != nil {
		t.Fatal(err)
	}
	rt := r.routes[0]
	rt.handler = rt.build(nil)
	_ = rt.Handle(context.Background(), nil)
	if got == nil || got.Message != nil || got.Group() != "g" {
		t.Errorf("delivery of a nil message: %+v", got)
	}
}

// The router's panic guard survives a nil message (a transport's bug):
// the handler's panic comes back as an error, not a second panic.
func TestPanicGuardNilMessage(t *testing.T) {
	r := New(nopSubscriber{}, Options{})
	if err := r.Handle("t", "g", message.HandlerFunc(func(_ context.Context, m *message.Message) error {
		_ = m.ID // panics on nil
		return nil
	})); err != nil {
		t.Fatal(err)
	}
	rt := r.routes[0]
	rt.handler = rt.build(nil)
	if err := rt.Handle(context.Background(), nil); err == nil {
		t.Fatal("no error for a panicking handler")
	}
}

// RouteID is unique per route, also for routes of the same name in two
// routers of one process.
func TestRouteIDUnique(t *testing.T) {
	seen := map[string]bool{}
	for range 2 {
		r := New(nopSubscriber{}, Options{})
		for _, g := range []string{"", "g"} {
			if err := r.Handle("t", g, message.HandlerFunc(func(context.Context, *message.Message) error { return nil })); err != nil {
				t.Fatal(err)
			}
		}
		for _, rt := range r.routes {
			d := FromContext(bind(context.Background(), &message.Message{}, rt))
			if id := d.RouteID(); id == "" || seen[id] {
				t.Fatalf("RouteID %q repeated or empty", id)
			} else {
				seen[id] = true
			}
		}
	}
}
