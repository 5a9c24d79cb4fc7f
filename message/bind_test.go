package message_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/courierkit/courier/message"
)

type keyA struct{}
type keyB struct{}
type parentKey struct{}

func TestBind(t *testing.T) {
	parent, cancel := context.WithDeadline(context.WithValue(context.Background(), parentKey{}, "p"), time.Now().Add(time.Hour))
	defer cancel()
	m := &message.Message{ID: "1"}
	ctx := m.Bind(parent, keyA{}, 42)

	b := message.BoundFrom(ctx, keyA{})
	if b == nil || b.Message != m || b.Value != 42 {
		t.Fatalf("BoundFrom = %+v, want message %p and 42", b, m)
	}
	if got := ctx.Value(keyA{}); got != b {
		t.Errorf("Value(key) = %v, want the *Bound", got)
	}
	if n := testing.AllocsPerRun(100, func() { _ = message.BoundFrom(ctx, keyA{}) }); n != 0 {
		t.Errorf("BoundFrom: %v allocations, want 0", n)
	}
	if got := ctx.Value(parentKey{}); got != "p" {
		t.Errorf("Value(parent's key) = %v, want p", got)
	}
	if message.BoundFrom(ctx, keyB{}) != nil || message.BoundFrom(parent, keyA{}) != nil {
		t.Error("BoundFrom found a binding under another key or in the parent")
	}
	if d1, ok1 := ctx.Deadline(); !ok1 {
		t.Error("the parent's deadline is lost")
	} else if d2, _ := parent.Deadline(); !d1.Equal(d2) {
		t.Errorf("deadline %v, want %v", d1, d2)
	}
	cancel()
	select {
	case <-ctx.Done():
	case <-time.After(time.Second):
		t.Fatal("Done does not follow the parent")
	}
	if ctx.Err() != context.Canceled {
		t.Errorf("Err = %v", ctx.Err())
	}
}

// An inner binding under another key keeps the outer one reachable; one
// under the same key hides it.
func TestBindNested(t *testing.T) {
	outer, inner := &message.Message{ID: "outer"}, &message.Message{ID: "inner"}
	ctx := outer.Bind(context.Background(), keyA{}, "a")
	ctx2 := inner.Bind(ctx, keyB{}, "b")
	if b := message.BoundFrom(ctx2, keyA{}); b == nil || b.Message != outer {
		t.Errorf("outer binding under another key: %+v", b)
	}
	if b := message.BoundFrom(ctx2, keyB{}); b == nil || b.Message != inner {
		t.Errorf("inner binding: %+v", b)
	}
	ctx3 := inner.Bind(ctx, keyA{}, "a2")
	if b := message.BoundFrom(ctx3, keyA{}); b == nil || b.Message != inner || b.Value != "a2" {
		t.Errorf("same key: the innermost binding wins, got %+v", b)
	}
}

// The first Bind of a message allocates nothing; binding it again gives a
// new context and leaves the first one as it was (a handler may keep it).
func TestBindAgain(t *testing.T) {
	ctx := context.Background()
	ms := make([]message.Message, 100)
	i := 0
	allocs := testing.AllocsPerRun(len(ms)-1, func() {
		_ = ms[i].Bind(ctx, keyA{}, &ms[i])
		i++
	})
	if allocs != 0 {
		t.Errorf("first Bind of a message: %v allocations, want 0", allocs)
	}
	m := &message.Message{ID: "x"}
	first := m.Bind(ctx, keyA{}, "first")
	second := m.Bind(ctx, keyA{}, "second")
	if b := message.BoundFrom(first, keyA{}); b.Value != "first" || b.Message != m {
		t.Errorf("the first context changed: %+v", b)
	}
	if b := message.BoundFrom(second, keyA{}); b.Value != "second" || b.Message != m {
		t.Errorf("second context: %+v", b)
	}
	// A copy does not share the original's binding.
	c := m.Copy()
	third := c.Bind(ctx, keyA{}, "copy")
	if b := message.BoundFrom(third, keyA{}); b.Message != c || b.Value != "copy" {
		t.Errorf("copy's binding: %+v", b)
	}
	if b := message.BoundFrom(first, keyA{}); b.Value != "first" {
		t.Errorf("binding the copy changed the original's: %+v", b)
	}
}

// Concurrent binds of one message (a transport that hands one *Message to
// two handlers) each get their own, intact binding (run with -race).
func TestBindConcurrent(t *testing.T) {
	for range 50 {
		m := &message.Message{ID: "shared"}
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Go(func() {
				ctx := m.Bind(context.Background(), keyA{}, g)
				for range 10 {
					if b := message.BoundFrom(ctx, keyA{}); b.Value != g || b.Message != m {
						t.Errorf("goroutine %d sees %+v", g, b)
						return
					}
				}
			})
		}
		wg.Wait()
	}
}

func TestBindNilParent(t *testing.T) {
	defer func() {
		if recover() == nil {
			t.Error("Bind with a nil parent did not panic")
		}
	}()
	//nolint:staticcheck // the nil context is the point
	_ = (&message.Message{}).Bind(nil, keyA{}, 1)
}

func ExampleMessage_Bind() {
	type routeKey struct{}
	m := &message.Message{ID: "order-1"}
	ctx := m.Bind(context.Background(), routeKey{}, "orders/billing")

	// Deeper in the handler chain, which sees only ctx:
	b := message.BoundFrom(ctx, routeKey{})
	fmt.Println(b.Message.ID, b.Value)
	// Output: order-1 orders/billing
}

type nativeRecord struct{ id string }

func (n *nativeRecord) As(target any) bool {
	p, ok := target.(**nativeRecord)
	if ok {
		*p = n
	}
	return ok
}

func TestSetNative(t *testing.T) {
	rec := &nativeRecord{id: "n1"}
	m := &message.Message{}
	if n := testing.AllocsPerRun(100, func() { m.SetNative(rec) }); n != 0 {
		t.Errorf("SetNative: %v allocations, want 0", n)
	}
	var got *nativeRecord
	if !m.As(&got) || got != rec {
		t.Fatalf("As after SetNative: %v", got)
	}
	var s string
	if m.As(&s) {
		t.Error("As set a target of the wrong type")
	}
	if m.Copy().As(&got) {
		t.Error("a copy reaches the native message")
	}
	m.SetAs(func(target any) bool { return target == nil })
	if !m.As(nil) || m.As(&got) {
		t.Error("SetAs does not replace SetNative")
	}
	m.SetNative(nil)
	if m.As(&got) {
		t.Error("SetNative(nil) kept the native message")
	}
	m.SetAs(nil)
	if m.As(nil) {
		t.Error("SetAs(nil) kept a function")
	}
}
