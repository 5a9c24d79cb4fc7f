package amqptransport

import (
	"context"
	"errors"
	"fmt"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/courierkit/courier/transport"
)

var (
	_ transport.LagReporter = (*Transport)(nil)
	_ transport.Pinger      = (*Transport)(nil)
)

// ErrUnknownGroup is returned by Lag when the group's queue does not
// exist. The broker's *amqp091.Error (404 NOT_FOUND) stays reachable with
// errors.As.
var ErrUnknownGroup = errors.New("amqptransport: unknown group")

// errNotConnected is what Ping returns while the consuming connection is
// being re-established.
var errNotConnected = errors.New("amqptransport: ping: not connected to the broker (reconnecting)")

// Lag reports group's backlog on topic (transport.LagReporter): Pending is
// the ready message count of the group's queue "<topic>.<group>", read
// with a passive queue.declare on a short-lived channel of the consuming
// connection, which creates nothing. InFlight is -1: AMQP 0-9-1 reports
// only ready messages, and the unacknowledged count needs the management
// plugin's HTTP API, which this transport does not use. Messages nacked
// with a delay wait in a retry queue and are not counted until they come
// back. A missing queue is ErrUnknownGroup; the failed passive declare
// closes only its own channel. Lag waits for a reconnect within ctx and
// returns ctx.Err() when ctx ends first.
func (t *Transport) Lag(ctx context.Context, topic, group string) (transport.Lag, error) {
	out := transport.Lag{Topic: topic, Group: group, InFlight: -1}
	if err := ctx.Err(); err != nil {
		return out, err
	}
	if t.isStopping() {
		return out, transport.ErrClosed
	}
	if err := transport.CheckSubscribe(topic, transport.SubscribeOptions{Group: group}, t.caps.Limits); err != nil {
		return out, err
	}
	name := QueueName(topic, group)
	for {
		conn, _, err := t.sub.connection(ctx)
		if err != nil {
			return out, err
		}
		var q amqp.Queue
		err = t.onChannel(ctx, conn, func(ch *amqp.Channel) error {
			var err error
			q, err = ch.QueueDeclarePassive(name, true, false, false, false, nil)
			return err
		})
		if err == nil {
			out.Pending = int64(q.Messages)
			return out, nil
		}
		var ae *amqp.Error
		switch {
		case errors.Is(err, transport.ErrClosed), ctx.Err() != nil && errors.Is(err, ctx.Err()):
			return out, err
		case errors.As(err, &ae) && ae.Code == amqp.NotFound:
			return out, t.scrub(fmt.Errorf("%w %q on topic %q (no queue %q): %w", ErrUnknownGroup, group, topic, name, err))
		case !t.isConnLoss(conn, err):
			return out, t.scrub(fmt.Errorf("amqptransport: lag of group %q on topic %q (queue %q): %w", group, topic, name, err))
		}
		select {
		case <-ctx.Done():
			return out, ctx.Err()
		case <-t.done:
			return out, transport.ErrClosed
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// Ping checks the consuming connection with a round trip
// (transport.Pinger): it opens a channel and closes it again, each
// confirmed by the broker. It fails at once while the connection is being
// re-established (it does not wait for the reconnect), returns
// transport.ErrClosed after Close or Shutdown, and ctx.Err() when ctx ends
// first. The publishing connection is not checked: during a resource alarm
// the broker stops reading from it by design, and Publish waits for that
// to pass.
func (t *Transport) Ping(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	t.mu.Lock()
	stopping, conn := t.stopping, t.sub.conn
	t.mu.Unlock()
	if stopping {
		return transport.ErrClosed
	}
	if conn == nil || conn.IsClosed() {
		return errNotConnected
	}
	err := t.onChannel(ctx, conn, func(*amqp.Channel) error { return nil })
	if err == nil || errors.Is(err, transport.ErrClosed) || ctx.Err() != nil && errors.Is(err, ctx.Err()) {
		return err
	}
	return t.scrub(fmt.Errorf("amqptransport: ping: %w", err))
}

// onChannel opens a channel on conn, runs f on it and closes it, in a
// goroutine that Close waits for (a broker that stops answering cannot
// hold the caller past ctx; closing the connection ends the goroutine).
func (t *Transport) onChannel(ctx context.Context, conn *amqp.Connection, f func(*amqp.Channel) error) error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return transport.ErrClosed
	}
	t.bg.Add(1)
	t.chanStartLocked() // Shutdown lets it finish before closing conn
	t.mu.Unlock()
	res := make(chan error, 1)
	go func() {
		defer t.bg.Done()
		defer t.chanDone()
		ch, err := conn.Channel()
		if err != nil {
			res <- fmt.Errorf("open channel: %w", err)
			return
		}
		err = f(ch)
		// After a channel error (a passive declare of a missing queue)
		// the broker has closed the channel already; Close is then a
		// no-op returning amqp.ErrClosed.
		if cerr := ch.Close(); err == nil && cerr != nil && !errors.Is(cerr, amqp.ErrClosed) {
			err = fmt.Errorf("close channel: %w", cerr)
		}
		res <- err
	}()
	select {
	case err := <-res:
		if err != nil && t.isStopping() && t.isConnLoss(conn, err) {
			return transport.ErrClosed
		}
		return err
	case <-ctx.Done():
		return ctx.Err()
	case <-t.done:
		return transport.ErrClosed
	}
}
