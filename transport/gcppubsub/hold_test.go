package gcppubsubtransport_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// syncBuffer is a bytes.Buffer safe for a logger and a test at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A nack delay longer than MaxExtension is held only as long as the
// client extends the lease, then nacked: the message comes back and its
// flow-control slot (MaxInFlight 1 here) is free for it, instead of the
// lease lapsing while the old callback still waits out the delay.
func TestNackDelayCappedByMaxExtension(t *testing.T) {
	o := testOptions(emulator(t))
	o.MaxExtension = 2 * time.Second
	var logs syncBuffer
	o.Logger = slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	tr := open(t, o)
	topic := name("hold")
	bg := context.Background()
	so := transport.SubscribeOptions{Group: "g", MaxInFlight: 1}
	if err := tr.Declare(bg, topic, so); err != nil {
		t.Fatal(err)
	}
	if err := tr.Publish(bg, topic, &message.Message{ID: "x", Payload: []byte("p")}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(bg, 40*time.Second)
	defer cancel()
	var mu sync.Mutex
	runs := 0
	again := make(chan struct{})
	done := make(chan error, 1)
	go func() {
		done <- tr.Subscribe(ctx, topic, message.HandlerFunc(func(_ context.Context, m *message.Message) error {
			mu.Lock()
			defer mu.Unlock()
			runs++
			if runs == 1 {
				return message.RetryAfter(errors.New("later"), time.Hour)
			}
			if runs == 2 {
				close(again)
			}
			return nil
		}), so)
	}()
	select {
	case <-again:
	case <-ctx.Done():
		t.Fatal("a message nacked with a delay beyond MaxExtension was not redelivered while its subscriber ran")
	}
	cancel()
	<-done
	if !strings.Contains(logs.String(), "nack delay capped by max_extension") {
		t.Errorf("no debug log about the capped delay; logs:\n%s", logs.String())
	}
}
