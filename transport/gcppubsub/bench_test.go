package gcppubsubtransport_test

// Benchmarks: the raw pubsub/v2 client and this adapter side by side, on the
// same pstest server with the same settings; one op is one message and each
// reports msg/s. Run:
//
//	go test -run '^$' -bench . -benchtime 2000x ./transport/gcppubsub/

import (
	"context"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/courierkit/courier/conformance"
	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	gcppubsubtransport "github.com/courierkit/courier/transport/gcppubsub"
)

const benchPayload = 64

func rawClient(b *testing.B, addr string) *pubsub.Client {
	b.Helper()
	c, err := pubsub.NewClient(context.Background(), project,
		option.WithEndpoint(addr), option.WithoutAuthentication(),
		option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())),
		option.WithTelemetryDisabled())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close() })
	return c
}

// rawSetup creates topic and, when sub, the subscription "<topic>.g" as
// the adapter would.
func rawSetup(b *testing.B, c *pubsub.Client, topic string, sub bool) (topicPath, subPath string) {
	b.Helper()
	ctx := context.Background()
	topicPath = "projects/" + project + "/topics/" + topic
	subPath = "projects/" + project + "/subscriptions/" + topic + ".g"
	if _, err := c.TopicAdminClient.CreateTopic(ctx, &pubsubpb.Topic{Name: topicPath}); err != nil {
		b.Fatal(err)
	}
	if !sub {
		return topicPath, ""
	}
	if _, err := c.SubscriptionAdminClient.CreateSubscription(ctx, &pubsubpb.Subscription{
		Name: subPath, Topic: topicPath, AckDeadlineSeconds: 10,
	}); err != nil {
		b.Fatal(err)
	}
	return topicPath, subPath
}

// BenchmarkPublish: messages of 64 B, awaited until Pub/Sub stored them,
// published alternately through the raw client and through the adapter in
// rounds of 1000, so that both see the same machine load (the machine is
// shared); it reports each side's msg/s and the adapter's share of raw.
// batch100 is one goroutine publishing 100 messages per call, 4pub four
// goroutines publishing one message per call (bound by the client's 10ms
// batching delay). The topics have no subscriptions: pstest scans every
// stored message of a subscription under its server lock every 10ms,
// which would measure pstest's backlog rather than the client.
func BenchmarkPublish(b *testing.B) {
	for _, shape := range []struct {
		name       string
		publishers int
		batch      int
	}{{"batch100", 1, 100}, {"4pub", 4, 1}} {
		b.Run(shape.name, func(b *testing.B) {
			addr := emulator(b)
			c := rawClient(b, addr)
			tp, _ := rawSetup(b, c, name("braw"), false)
			p := c.Publisher(tp)
			defer p.Stop()
			tr := open(b, testOptions(addr))
			topic := name("bad")
			// Create the topic outside the timed part, as for raw.
			if err := tr.Publish(context.Background(), topic, message.New(nil)); err != nil {
				b.Fatal(err)
			}
			payload := make([]byte, benchPayload)
			raw := func(n int) error {
				rs := make([]*pubsub.PublishResult, n)
				for i := range n {
					rs[i] = p.Publish(context.Background(), &pubsub.Message{Data: payload, Attributes: map[string]string{"courier-id": "bench"}})
				}
				for _, r := range rs {
					if _, err := r.Get(context.Background()); err != nil {
						return err
					}
				}
				return nil
			}
			adapter := func(n int) error {
				msgs := make([]*message.Message, n)
				for i := range msgs {
					msgs[i] = &message.Message{ID: "bench", Payload: payload}
				}
				return tr.Publish(context.Background(), topic, msgs...)
			}
			var rawT, adT, rawCPU, adCPU time.Duration
			b.ResetTimer()
			for done := 0; done < b.N; {
				k := min(1000, b.N-done)
				// Alternate which side goes first, so neither always runs
				// right after the other's publishes.
				first, second, ft, st, fc, sc := raw, adapter, &rawT, &adT, &rawCPU, &adCPU
				if (done/1000)%2 == 1 {
					first, second, ft, st, fc, sc = adapter, raw, &adT, &rawT, &adCPU, &rawCPU
				}
				t0, c0 := time.Now(), cpuTime()
				parallel(b, k, shape.publishers, shape.batch, first)
				t1, c1 := time.Now(), cpuTime()
				parallel(b, k, shape.publishers, shape.batch, second)
				*ft += t1.Sub(t0)
				*st += time.Since(t1)
				*fc += c1 - c0
				*sc += cpuTime() - c1
				done += k
			}
			b.StopTimer()
			rawRate := float64(b.N) / rawT.Seconds()
			adRate := float64(b.N) / adT.Seconds()
			b.ReportMetric(rawRate, "raw-msg/s")
			b.ReportMetric(adRate, "adapter-msg/s")
			b.ReportMetric(100*adRate/rawRate, "adapter/raw-%")
			// CPU time of the whole process (client and in-process pstest)
			// per message: less sensitive to other load than wall time.
			b.ReportMetric(float64(rawCPU.Microseconds())/float64(b.N), "raw-cpu-µs/msg")
			b.ReportMetric(float64(adCPU.Microseconds())/float64(b.N), "adapter-cpu-µs/msg")
		})
	}
}

// cpuTime is the process's user plus system CPU time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// parallel runs total messages through publish from publishers
// goroutines, batch at a time.
func parallel(b *testing.B, total, publishers, batch int, publish func(n int) error) {
	var wg sync.WaitGroup
	per := total / publishers
	for p := range publishers {
		n := per
		if p == 0 {
			n += total % publishers
		}
		wg.Go(func() {
			for n > 0 {
				k := min(batch, n)
				if err := publish(k); err != nil {
					b.Error(err)
					return
				}
				n -= k
			}
		})
	}
	wg.Wait()
}

// BenchmarkDrain: backlogs of 64-byte messages received and acked with 16
// streams and 64 messages outstanding, the raw client and the adapter
// taking turns in rounds of 1000 (each round: fill the backlog untimed,
// then time from the start of receiving until the last ack). The raw
// callback acks; the adapter's handler returns nil, 16 handlers at once.
// pstest delivers about one message per stream every 10ms, which bounds
// both sides.
func BenchmarkDrain(b *testing.B) {
	addr := emulator(b)
	c := rawClient(b, addr)
	tp, sp := rawSetup(b, c, name("draw"), true)
	tr := open(b, testOptions(addr))
	topic := name("dad")
	o := transport.SubscribeOptions{Group: "g", Concurrency: 16, MaxInFlight: 64, AckWait: 10 * time.Second}
	if err := tr.Declare(context.Background(), topic, o); err != nil {
		b.Fatal(err)
	}
	p := c.Publisher(tp)
	defer p.Stop()
	pa := c.Publisher("projects/" + project + "/topics/" + topic)
	defer pa.Stop()
	payload := make([]byte, benchPayload)
	fill := func(p *pubsub.Publisher, n int) {
		rs := make([]*pubsub.PublishResult, n)
		for i := range rs {
			rs[i] = p.Publish(context.Background(), &pubsub.Message{Data: payload, Attributes: map[string]string{"courier-id": "bench"}})
		}
		for _, r := range rs {
			if _, err := r.Get(context.Background()); err != nil {
				b.Fatal(err)
			}
		}
	}
	raw := func(n int) time.Duration {
		fill(p, n)
		sub := c.Subscriber(sp)
		sub.ReceiveSettings.NumGoroutines = 16
		sub.ReceiveSettings.MaxOutstandingMessages = 64
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var got atomic.Int64
		var el time.Duration
		start := time.Now()
		err := sub.Receive(ctx, func(_ context.Context, m *pubsub.Message) {
			m.Ack()
			if got.Add(1) == int64(n) {
				el = time.Since(start)
				cancel()
			}
		})
		if err != nil {
			b.Fatal(err)
		}
		return el
	}
	adapter := func(n int) time.Duration {
		fill(pa, n)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var got atomic.Int64
		var el time.Duration
		start := time.Now()
		err := tr.Subscribe(ctx, topic, message.HandlerFunc(func(context.Context, *message.Message) error {
			if got.Add(1) == int64(n) {
				el = time.Since(start)
				cancel()
			}
			return nil
		}), o)
		if err != context.Canceled {
			b.Fatal(err)
		}
		return el
	}
	var rawT, adT time.Duration
	b.ResetTimer()
	for done, round := 0, 0; done < b.N; round++ {
		k := min(1000, b.N-done)
		if round%2 == 0 {
			rawT += raw(k)
			adT += adapter(k)
		} else {
			adT += adapter(k)
			rawT += raw(k)
		}
		done += k
	}
	b.StopTimer()
	rawRate := float64(b.N) / rawT.Seconds()
	adRate := float64(b.N) / adT.Seconds()
	b.ReportMetric(rawRate, "raw-msg/s")
	b.ReportMetric(adRate, "adapter-msg/s")
	b.ReportMetric(100*adRate/rawRate, "adapter/raw-%")
}

// BenchmarkEndToEnd is the shared conformance.Bench (publish → handler →
// ack, one subscription) on pstest.
func BenchmarkEndToEnd(b *testing.B) {
	addr := emulator(b)
	h := conformance.Harness{
		Open: func(ctx context.Context) (transport.Conn, error) {
			return gcppubsubtransport.New(ctx, testOptions(addr))
		},
		SubscribeOptions: transport.SubscribeOptions{AckWait: 10 * time.Second},
	}
	b.Run("64B/4pub/conc16", func(b *testing.B) {
		conformance.Bench(b, h, conformance.BenchOptions{PayloadSize: benchPayload, Publishers: 4, Concurrency: 16, MaxInFlight: 64})
	})
}
