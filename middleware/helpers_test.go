package middleware_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/cenkalti/backoff/v5"
	"go.uber.org/goleak"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// recorder is a transport.Publisher that keeps what it is given (a test
// double for the dead-letter side of unit tests; the end-to-end tests use
// the mem transport).
type recorder struct {
	mu   sync.Mutex
	got  []published
	fail error
}

type published struct {
	topic  string
	m      *message.Message
	ctx    context.Context
	ctxErr error // ctx.Err() when Publish was called
}

func (r *recorder) Publish(ctx context.Context, topic string, msgs ...*message.Message) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fail != nil {
		return r.fail
	}
	for _, m := range msgs {
		r.got = append(r.got, published{topic, m.Copy(), ctx, ctx.Err()})
	}
	return nil
}

func (r *recorder) Close() error { return nil }

func (r *recorder) all() []published {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]published(nil), r.got...)
}

// counter is a handler that fails its first n calls with err.
type counter struct {
	mu    sync.Mutex
	calls int
	n     int
	err   error
}

func (c *counter) Handle(ctx context.Context, m *message.Message) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	if c.calls <= c.n {
		return c.err
	}
	return nil
}

func (c *counter) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.calls
}

var errBoom = errors.New("boom")

func msg(id string) *message.Message {
	return &message.Message{ID: id, Topic: "orders", Attempt: 1, Payload: []byte("x")}
}

// backoffConst is a constant backoff policy for tests.
type backoffConst time.Duration

func (b backoffConst) policy() backoff.BackOff { return backoff.NewConstantBackOff(time.Duration(b)) }

type transportPublisher = transport.Publisher
