package courierotel_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2/pstest"
	"github.com/twmb/franz-go/pkg/kfake"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	courierotel "github.com/courierkit/courier/contrib/otel"
	"github.com/courierkit/courier/contrib/otel/otelamqp"
	"github.com/courierkit/courier/contrib/otel/otelkafka"
	"github.com/courierkit/courier/internal/testenv"
	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	_ "github.com/courierkit/courier/transport/amqp"
	_ "github.com/courierkit/courier/transport/gcppubsub"
	_ "github.com/courierkit/courier/transport/kafka"
	_ "github.com/courierkit/courier/transport/nats"
)

// openURL returns a func that opens url for each service of runChain.
func openURL(url string) func(t *testing.T) transport.Conn {
	return func(t *testing.T) transport.Conn {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := transport.Open(ctx, url)
		if err != nil {
			t.Fatalf("open %s: %v", transport.Redact(url), err)
		}
		t.Cleanup(func() {
			sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer scancel()
			_ = c.Shutdown(sctx)
		})
		return c
	}
}

// unique returns a topic name of its own for a test run on a shared
// broker.
func unique(prefix string) string {
	return prefix + "-" + message.NewID()[24:]
}

// One order through three services is one trace on NATS JetStream.
func TestTraceAcrossThreeServicesNATS(t *testing.T) {
	url := testenv.NATS(t)
	orders, payments := unique("otel-orders"), unique("otel-payments")
	cleanupNATS(t, url, orders, payments)
	r := runChain(t, "nats", openURL(url), orders, payments)
	checkChain(t, "nats", r, orders, payments)
}

// One order through three services is one trace on RabbitMQ.
func TestTraceAcrossThreeServicesRabbitMQ(t *testing.T) {
	url := testenv.FindRabbitMQ(t)
	orders, payments := unique("otel-orders"), unique("otel-payments")
	cleanupRabbitMQ(t, url, map[string][]string{orders: {"billing"}, payments: {"shipping"}})
	r := runChain(t, "rabbitmq", openURL(url), orders, payments, courierotel.Options{Attributes: otelamqp.Attributes})
	checkChain(t, "rabbitmq", r, orders, payments)
	// From the amqp091.Delivery, by otelamqp.
	po := findSpan(r.spans, "process "+orders)
	if _, ok := attrOf(po, "messaging.rabbitmq.destination.routing_key"); !ok {
		t.Error("no routing key attribute")
	}
	if v, ok := attrOf(po, "messaging.rabbitmq.message.delivery_tag"); !ok || v.AsInt64() < 1 {
		t.Errorf("delivery tag attribute %v, %v", v.AsInterface(), ok)
	}
}

// kafkaURL starts an in-process kfake cluster (the Kafka protocol, real
// client code on both sides) for the test, or uses $KAFKA_BROKERS.
func kafkaURL(t testing.TB) string {
	addrs := testenv.Kafka(t, func(testing.TB) (string, func(), error) {
		c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.GroupMinSessionTimeout(time.Second))
		if err != nil {
			return "", nil, err
		}
		return strings.Join(c.ListenAddrs(), ","), c.Close, nil
	})
	return "kafka://" + addrs
}

// One order through three services is one trace on Kafka (kfake), with
// the record key as messaging.kafka.message.key.
func TestTraceAcrossThreeServicesKafka(t *testing.T) {
	url := kafkaURL(t)
	orders, payments := unique("otel-orders"), unique("otel-payments")
	r := runChain(t, "kafka", openURL(url), orders, payments, courierotel.Options{Attributes: otelkafka.Attributes})
	checkChain(t, "kafka", r, orders, payments)
	wantAttr(t, findSpan(r.spans, "send "+orders), "messaging.kafka.message.key", "customer-7")
	po := findSpan(r.spans, "process "+orders)
	wantAttr(t, po, "messaging.kafka.message.key", "customer-7")
	// From the *sarama.ConsumerMessage, by otelkafka.
	if _, ok := attrOf(po, "messaging.destination.partition.id"); !ok {
		t.Error("no partition attribute")
	}
	if v, ok := attrOf(po, "messaging.kafka.offset"); !ok || v.AsInt64() < 0 {
		t.Errorf("offset attribute %v, %v", v.AsInterface(), ok)
	}
	wantNoAttr(t, po, "messaging.kafka.message.tombstone")
}

// pubsubURL starts a private pstest server (the Pub/Sub client library's
// own fake) for the test, or uses $PUBSUB_EMULATOR_HOST.
func pubsubURL(t testing.TB) string {
	addr := testenv.PubSub(t, func(testing.TB) (string, func(), error) {
		srv := pstest.NewServerWithAddress("127.0.0.1:0")
		return srv.Addr, func() { _ = srv.Close() }, nil
	})
	return "gcppubsub://courier-test?emulator=" + addr + "&receive_goroutines=4"
}

// One order through three services is one trace on Pub/Sub (pstest), with
// the ordering key as messaging.gcp_pubsub.message.ordering_key.
func TestTraceAcrossThreeServicesPubSub(t *testing.T) {
	url := pubsubURL(t)
	orders, payments := unique("otel-orders"), unique("otel-payments")
	r := runChain(t, "gcp_pubsub", openURL(url), orders, payments)
	checkChain(t, "gcp_pubsub", r, orders, payments)
	wantAttr(t, findSpan(r.spans, "process "+orders), "messaging.gcp_pubsub.message.ordering_key", "customer-7")
}

// Lag on the real adapters: where the adapter implements
// transport.LagReporter, the gauge reports messages waiting for a declared
// group; where it does not, ObserveLag says so with ErrNoLag.
func TestLagOnAdapters(t *testing.T) {
	for _, tc := range []struct {
		name string
		url  func(t testing.TB) string
	}{{"nats", testenv.NATS}, {"rabbitmq", testenv.FindRabbitMQ}, {"kafka", kafkaURL}, {"gcppubsub", pubsubURL},
		{"sns", func(t testing.TB) string { return snsURL(t, "sns") }}, {"sqs", func(t testing.TB) string { return snsURL(t, "sqs") }}} {
		t.Run(tc.name, func(t *testing.T) {
			url := tc.url(t)
			topic := unique("otel-lag")
			switch tc.name {
			case "nats":
				cleanupNATS(t, url, topic)
			case "rabbitmq":
				cleanupRabbitMQ(t, url, map[string][]string{topic: {"late"}})
			case "sns", "sqs":
				cleanupSQS(t, url, topic)
			}
			conn := openURL(url)(t)
			inst, reader := newInst(t, tracetest.NewSpanRecorder(), courierotel.Options{})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := conn.Declare(ctx, topic, transport.SubscribeOptions{Group: "late"}); err != nil {
				t.Fatal(err)
			}
			// A transport may implement LagReporter yet say its broker
			// cannot tell (Pub/Sub: backlog is a Cloud Monitoring metric):
			// then the gauge must record nothing rather than a false 0.
			unsupported := false
			if lr, ok := conn.(transport.LagReporter); ok {
				_, lerr := lr.Lag(ctx, topic, "late")
				unsupported = errors.Is(lerr, transport.ErrUnsupported)
			}
			reg, err := inst.ObserveLag(inst.Conn(conn), courierotel.LagOptions{}, courierotel.LagTarget{Topic: topic, Group: "late"})
			if unsupported && err == nil {
				defer reg.Unregister()
				if err := conn.Publish(ctx, topic, message.New(nil), message.New(nil)); err != nil {
					t.Fatal(err)
				}
				if _, n := sumInt(t, collect(t, reader), "courier.messaging.consumer.lag", map[string]string{
					"messaging.destination.name": topic}); n != 0 {
					t.Fatalf("%s reports lag unsupported, yet %d lag points were recorded", tc.name, n)
				}
				t.Logf("%s: Lag returns ErrUnsupported; no lag points recorded, as it should", tc.name)
				return
			}
			if errors.Is(err, courierotel.ErrNoLag) {
				if _, ok := conn.(transport.LagReporter); ok {
					t.Fatal("ErrNoLag for a transport that implements LagReporter")
				}
				t.Skipf("%s does not implement transport.LagReporter (yet): %v", tc.name, err)
			}
			if err != nil {
				t.Fatal(err)
			}
			defer reg.Unregister()
			if err := conn.Publish(ctx, topic, message.New(nil), message.New(nil)); err != nil {
				t.Fatal(err)
			}
			deadline := time.Now().Add(10 * time.Second)
			for {
				got, n := sumInt(t, collect(t, reader), "courier.messaging.consumer.lag", map[string]string{
					"messaging.destination.name": topic, "messaging.consumer.group.name": "late"})
				if n > 0 && got == 2 {
					if tc.name == "kafka" {
						if _, pn := sumInt(t, collect(t, reader), "courier.messaging.consumer.lag", map[string]string{
							"messaging.destination.name": topic, "messaging.destination.partition.id": "0"}); pn != 1 {
							t.Errorf("kafka lag: %d points for partition 0, want 1", pn)
						}
					}
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("lag %d (%d points), want 2", got, n)
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}
