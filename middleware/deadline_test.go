package middleware

import (
	"context"
	"errors"
	"testing"
	"testing/synctest"
	"time"
)

func TestDeadlineCtxLikeWithDeadline(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		// Err without Done: from the clock.
		c, cancel := withDeadline(t.Context(), time.Now().Add(time.Second))
		if c.Err() != nil {
			t.Fatal(c.Err())
		}
		if d, ok := c.Deadline(); !ok || time.Until(d) != time.Second {
			t.Fatal(d, ok)
		}
		time.Sleep(time.Second)
		if !errors.Is(c.Err(), context.DeadlineExceeded) {
			t.Fatalf("Err after the deadline: %v", c.Err())
		}
		select {
		case <-c.Done(): // materialized late: already closed
		default:
			t.Fatal("Done not closed after the deadline")
		}
		cancel()
		cancel()

		// Done fires at the deadline.
		c, cancel = withDeadline(t.Context(), time.Now().Add(time.Second))
		start := time.Now()
		<-c.Done()
		if time.Since(start) != time.Second || !errors.Is(c.Err(), context.DeadlineExceeded) {
			t.Fatal(time.Since(start), c.Err())
		}
		cancel()

		// Parent cancellation reaches Done and Err.
		parent, pcancel := context.WithCancel(t.Context())
		c, cancel = withDeadline(parent, time.Now().Add(time.Hour))
		pcancel()
		if !errors.Is(c.Err(), context.Canceled) {
			t.Fatal(c.Err())
		}
		<-c.Done()
		cancel()

		// Derived contexts end with it, without a goroutine per child.
		c, cancel = withDeadline(t.Context(), time.Now().Add(time.Second))
		child, ccancel := context.WithCancel(c)
		defer ccancel()
		fired := make(chan struct{})
		stop := context.AfterFunc(c, func() { close(fired) })
		defer stop()
		<-child.Done()
		<-fired
		if !errors.Is(child.Err(), context.DeadlineExceeded) {
			t.Fatal(child.Err())
		}
		cancel()

		// Released: Canceled, with or without a materialized child.
		c, cancel = withDeadline(t.Context(), time.Now().Add(time.Hour))
		cancel()
		if !errors.Is(c.Err(), context.Canceled) {
			t.Fatal(c.Err())
		}
		<-c.Done()
		c, cancel = withDeadline(t.Context(), time.Now().Add(time.Hour))
		_ = c.Done()
		cancel()
		<-c.Done()
		if !errors.Is(c.Err(), context.Canceled) {
			t.Fatal(c.Err())
		}

		// A parent deadline earlier than ours wins.
		p2, p2cancel := context.WithTimeout(t.Context(), time.Second)
		defer p2cancel()
		c, cancel = withDeadline(p2, time.Now().Add(time.Hour))
		defer cancel()
		if d, _ := c.Deadline(); time.Until(d) != time.Second {
			t.Fatal(time.Until(d))
		}
		// Values pass through.
		type k struct{}
		if withValue, _ := withDeadline(context.WithValue(t.Context(), k{}, 7), time.Now()); withValue.Value(k{}) != 7 {
			t.Fatal("value lost")
		}
	})
}

func TestLazyCancelCtx(t *testing.T) {
	c := newDeadlineCtx(t.Context(), time.Time{})
	if _, ok := c.Deadline(); ok {
		t.Fatal("deadline without one")
	}
	if c.Err() != nil {
		t.Fatal(c.Err())
	}
	done := c.Done()
	c.release()
	<-done
	if !errors.Is(c.Err(), context.Canceled) {
		t.Fatal(c.Err())
	}
}
