package courierotel_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/courierkit/courier/transport"
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

// cleanupSQS deletes, at cleanup, the SQS queues whose names start with
// one of topics (the topic's queue on sqs://, "<topic>-<group>" on sns://)
// and the SNS topics named topics, through a connection of its own to url.
// The in-process goaws forgets everything with the test binary anyway; an
// external service (COURIER_SQS_ENDPOINT) keeps what is not deleted.
func cleanupSQS(t testing.TB, url string, topics ...string) {
	t.Helper()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := transport.Open(ctx, url)
		if err != nil {
			t.Errorf("cleanup: open: %v", err)
			return
		}
		defer conn.Close()
		var sq *sqs.Client
		var sn *sns.Client
		if !conn.As(&sq) || !conn.As(&sn) {
			t.Errorf("cleanup: %T gives no SQS/SNS client", conn)
			return
		}
		for _, topic := range topics {
			out, err := sq.ListQueues(ctx, &sqs.ListQueuesInput{QueueNamePrefix: aws.String(topic)})
			if err != nil {
				t.Errorf("cleanup: list queues %s: %v", topic, err)
				continue
			}
			for _, q := range out.QueueUrls {
				if !strings.Contains(q, "/"+topic) { // goaws ignores the prefix
					continue
				}
				if _, err := sq.DeleteQueue(ctx, &sqs.DeleteQueueInput{QueueUrl: aws.String(q)}); err != nil {
					t.Errorf("cleanup: delete queue %s: %v", q, err)
				}
			}
		}
		if !strings.HasPrefix(url, "sns:") {
			return
		}
		var next *string
		for {
			out, err := sn.ListTopics(ctx, &sns.ListTopicsInput{NextToken: next})
			if err != nil {
				t.Errorf("cleanup: list topics: %v", err)
				return
			}
			for _, tp := range out.Topics {
				arn := aws.ToString(tp.TopicArn)
				for _, topic := range topics {
					if strings.HasSuffix(arn, ":"+topic) {
						if _, err := sn.DeleteTopic(ctx, &sns.DeleteTopicInput{TopicArn: tp.TopicArn}); err != nil {
							t.Errorf("cleanup: delete topic %s: %v", arn, err)
						}
					}
				}
			}
			if out.NextToken == nil {
				return
			}
			next = out.NextToken
		}
	})
}
