package courierotel_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	amqp "github.com/rabbitmq/amqp091-go"

	amqptransport "github.com/courierkit/courier/transport/amqp"
)

// The adapter tests run on the machine's shared brokers, so each removes
// what it made there. Register the cleanup before opening the test's
// connections: cleanups run last-registered first, so the deletes come
// after the consumers are closed.

// cleanupNATS deletes, at cleanup, every JetStream stream whose name
// contains one of topics (the transport provisions "COURIER_"+topic).
func cleanupNATS(t testing.TB, url string, topics ...string) {
	t.Helper()
	t.Cleanup(func() {
		nc, err := nats.Connect(url, nats.Name("courierotel-test-cleanup"))
		if err != nil {
			t.Errorf("cleanup: connect %s: %v", url, err)
			return
		}
		defer nc.Close()
		js, err := jetstream.New(nc)
		if err != nil {
			t.Errorf("cleanup: %v", err)
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		var names []string
		lister := js.StreamNames(ctx)
		for name := range lister.Name() {
			for _, topic := range topics {
				if strings.Contains(name, topic) {
					names = append(names, name)
					break
				}
			}
		}
		if err := lister.Err(); err != nil {
			t.Errorf("cleanup: list streams: %v", err)
		}
		for _, name := range names {
			if err := js.DeleteStream(ctx, name); err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
				t.Errorf("cleanup: delete stream %s: %v", name, err)
			}
		}
	})
}

// cleanupRabbitMQ deletes, at cleanup, the exchange of each topic and the
// queue of each (topic, group) the test used; retry queues expire on
// their own (x-expires).
func cleanupRabbitMQ(t testing.TB, url string, groups map[string][]string) {
	t.Helper()
	t.Cleanup(func() {
		c, err := amqp.Dial(url)
		if err != nil {
			t.Errorf("cleanup: dial: %v", err)
			return
		}
		defer c.Close()
		// A failed delete closes its channel: one channel per delete.
		del := func(what string, f func(ch *amqp.Channel) error) {
			ch, err := c.Channel()
			if err != nil {
				t.Errorf("cleanup: channel: %v", err)
				return
			}
			defer ch.Close()
			var ae *amqp.Error
			if err := f(ch); err != nil && !(errors.As(err, &ae) && ae.Code == amqp.NotFound) {
				t.Errorf("cleanup: delete %s: %v", what, err)
			}
		}
		for topic, gs := range groups {
			for _, g := range gs {
				q := amqptransport.QueueName(topic, g)
				del("queue "+q, func(ch *amqp.Channel) error { _, err := ch.QueueDelete(q, false, false, false); return err })
			}
			del("exchange "+topic, func(ch *amqp.Channel) error { return ch.ExchangeDelete(topic, false, false) })
		}
	})
}
