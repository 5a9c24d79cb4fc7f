package memtransport_test

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	memtransport "github.com/courierkit/courier/transport/mem"
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Dead letters sent to a topic that has no group are discarded, like any
// publish there; the transport warns once per such topic.
func TestDeadLetterTopicWithoutGroupWarnsOnce(t *testing.T) {
	var logs lockedBuffer
	c := newConn(t, memtransport.Options{Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	bg := context.Background()
	o := transport.SubscribeOptions{Group: "g", DeadLetterTopic: "nowhere"}
	if err := c.Declare(bg, "t", o); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := c.Publish(bg, "t", message.New([]byte("x"))); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(bg)
	n := 0
	_ = c.Subscribe(ctx, "t", message.HandlerFunc(func(context.Context, *message.Message) error {
		if n++; n == 3 {
			cancel()
		}
		return message.Permanent(errors.New("bad"))
	}), o)
	if got := strings.Count(logs.String(), "dead-letter topic has no group"); got != 1 {
		t.Errorf("%d warnings, want 1; logs:\n%s", got, logs.String())
	}
}
