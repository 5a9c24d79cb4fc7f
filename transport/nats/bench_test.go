package natstransport_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	natstransport "github.com/courierkit/courier/transport/nats"
)

// The benchmarks run the raw nats.go jetstream client and the adapter
// side by side against one embedded server (file storage), on the same
// stream layout: publish (every message acknowledged), drain (ack each),
// 16 B and 1 KiB payloads, and end-to-end latency at a fixed rate.
//
//	go test -run '^$' -bench . -benchtime 20000x ./transport/nats/

var sizes = []int{16, 1024}

func sizeName(n int) string {
	if n >= 1024 {
		return strconv.Itoa(n/1024) + "KiB"
	}
	return strconv.Itoa(n) + "B"
}

type benchEnv struct {
	srv *testServer
	tr  *natstransport.Transport
	js  jetstream.JetStream
	nc  *nats.Conn
	n   atomic.Int64
}

func newBenchEnv(b *testing.B) *benchEnv {
	b.Helper()
	e := &benchEnv{srv: newServer(b, nil)}
	e.tr = open(b, natstransport.Options{URL: e.srv.URL()})
	nc, err := nats.Connect(e.srv.URL())
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	e.nc = nc
	e.js, err = jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	return e
}

// topic returns a fresh topic whose stream exists (made by the adapter, as
// the raw client would use it).
func (e *benchEnv) topic(b *testing.B) string {
	t := fmt.Sprintf("bench-%d", e.n.Add(1))
	if err := e.tr.Declare(context.Background(), t, transport.SubscribeOptions{Group: "warm"}); err != nil {
		b.Fatal(err)
	}
	return t
}

func msgsPerSec(b *testing.B, n int) {
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "msg/s")
}

// BenchmarkPublish: one acknowledged publish per call, and batches of 100
// (asynchronous publishes, every ack awaited before the call returns).
// b.N counts messages in both.
func BenchmarkPublish(b *testing.B) {
	e := newBenchEnv(b)
	ctx := context.Background()
	for _, size := range sizes {
		payload := make([]byte, size)
		b.Run("sync/raw/"+sizeName(size), func(b *testing.B) {
			subj := "courier." + e.topic(b)
			b.SetBytes(int64(size))
			for i := 0; b.Loop(); i++ {
				m := &nats.Msg{Subject: subj, Data: payload, Header: nats.Header{}}
				m.Header[jetstream.MsgIDHeader] = []string{message.NewID()}
				if _, err := e.js.PublishMsg(ctx, m); err != nil {
					b.Fatal(err)
				}
			}
			msgsPerSec(b, b.N)
		})
		b.Run("sync/adapter/"+sizeName(size), func(b *testing.B) {
			topic := e.topic(b)
			b.SetBytes(int64(size))
			for b.Loop() {
				if err := e.tr.Publish(ctx, topic, &message.Message{Payload: payload}); err != nil {
					b.Fatal(err)
				}
			}
			msgsPerSec(b, b.N)
		})
		const batch = 100
		b.Run("batch100/raw/"+sizeName(size), func(b *testing.B) {
			subj := "courier." + e.topic(b)
			b.SetBytes(int64(size))
			b.ResetTimer()
			for sent := 0; sent < b.N; sent += batch {
				futs := make([]jetstream.PubAckFuture, min(batch, b.N-sent))
				for j := range futs {
					m := &nats.Msg{Subject: subj, Data: payload, Header: nats.Header{}}
					m.Header[jetstream.MsgIDHeader] = []string{message.NewID()}
					f, err := e.js.PublishMsgAsync(m)
					if err != nil {
						b.Fatal(err)
					}
					futs[j] = f
				}
				for _, f := range futs {
					select {
					case <-f.Ok():
					case err := <-f.Err():
						b.Fatal(err)
					}
				}
			}
			msgsPerSec(b, b.N)
		})
		b.Run("batch100/adapter/"+sizeName(size), func(b *testing.B) {
			topic := e.topic(b)
			b.SetBytes(int64(size))
			b.ResetTimer()
			for sent := 0; sent < b.N; sent += batch {
				msgs := make([]*message.Message, min(batch, b.N-sent))
				for j := range msgs {
					msgs[j] = &message.Message{Payload: payload}
				}
				if err := e.tr.Publish(ctx, topic, msgs...); err != nil {
					b.Fatal(err)
				}
			}
			msgsPerSec(b, b.N)
		})
	}
}

// fill publishes n messages to topic with the adapter (outside the timer).
func (e *benchEnv) fill(b *testing.B, topic string, n, size int) {
	b.Helper()
	payload := make([]byte, size)
	for i := 0; i < n; i += 1000 {
		msgs := make([]*message.Message, min(1000, n-i))
		for j := range msgs {
			msgs[j] = &message.Message{Key: "k" + strconv.Itoa(j%16), Payload: payload}
		}
		if err := e.tr.Publish(context.Background(), topic, msgs...); err != nil {
			b.Fatal(err)
		}
	}
}

const drainInFlight = 256

// BenchmarkDrain: b.N stored messages consumed by a durable consumer,
// each acked, with the same prefetch (256) for both.
func BenchmarkDrain(b *testing.B) {
	e := newBenchEnv(b)
	for _, size := range sizes {
		b.Run("raw/"+sizeName(size), func(b *testing.B) {
			topic := e.topic(b)
			ctx := context.Background()
			s, err := e.js.Stream(ctx, "COURIER_"+topic)
			if err != nil {
				b.Fatal(err)
			}
			c, err := s.CreateConsumer(ctx, jetstream.ConsumerConfig{
				Durable: "raw", AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: drainInFlight,
				FilterSubject: "courier." + topic, DeliverPolicy: jetstream.DeliverAllPolicy, AckWait: 30 * time.Second,
			})
			if err != nil {
				b.Fatal(err)
			}
			e.fill(b, topic, b.N, size)
			b.SetBytes(int64(size))
			b.ResetTimer()
			it, err := c.Messages(jetstream.PullMaxMessages(drainInFlight))
			if err != nil {
				b.Fatal(err)
			}
			for range b.N {
				m, err := it.Next()
				if err != nil {
					b.Fatal(err)
				}
				if err := m.Ack(); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			it.Stop()
			msgsPerSec(b, b.N)
		})
		b.Run("adapter/"+sizeName(size), func(b *testing.B) {
			topic := e.topic(b)
			o := transport.SubscribeOptions{Group: "ad", Start: transport.StartOldest, MaxInFlight: drainInFlight}
			if err := e.tr.Declare(context.Background(), topic, o); err != nil {
				b.Fatal(err)
			}
			e.fill(b, topic, b.N, size)
			b.SetBytes(int64(size))
			var got atomic.Int64
			done := make(chan struct{})
			target := int64(b.N)
			ctx, cancel := context.WithCancel(context.Background())
			subDone := make(chan error, 1)
			b.ResetTimer()
			go func() {
				subDone <- e.tr.Subscribe(ctx, topic, message.HandlerFunc(func(context.Context, *message.Message) error {
					if got.Add(1) == target {
						close(done)
					}
					return nil
				}), o)
			}()
			<-done
			b.StopTimer()
			cancel()
			<-subDone
			msgsPerSec(b, b.N)
		})
	}
}

// BenchmarkLatency: publish at a fixed offered rate (1000 msg/s, one
// acknowledged publish each) while a durable consumer acks; reports the
// p50 and p99 of publish-start to handler-entry. b.N is the message count.
func BenchmarkLatency(b *testing.B) {
	const rate = 1000
	e := newBenchEnv(b)
	for _, size := range sizes {
		run := func(b *testing.B, publish func(ctx context.Context, payload []byte) error, consume func(ctx context.Context, got func(payload []byte))) {
			lat := make([]time.Duration, 0, b.N)
			latCh := make(chan time.Duration, b.N)
			ctx, cancel := context.WithCancel(context.Background())
			consDone := make(chan struct{})
			go func() {
				defer close(consDone)
				consume(ctx, func(p []byte) {
					sent := int64(binary.BigEndian.Uint64(p))
					latCh <- time.Duration(time.Now().UnixNano() - sent)
				})
			}()
			time.Sleep(100 * time.Millisecond) // consumer pull request in place (setup, not a result wait)
			payload := make([]byte, max(size, 8))
			// Message i is due at start + i/rate (absolute schedule: a
			// late send does not shift the ones after it).
			b.ResetTimer()
			start := time.Now()
			for i := range b.N {
				if d := time.Until(start.Add(time.Duration(i) * time.Second / rate)); d > 0 {
					time.Sleep(d)
				}
				binary.BigEndian.PutUint64(payload, uint64(time.Now().UnixNano()))
				if err := publish(ctx, slices.Clone(payload)); err != nil {
					b.Fatal(err)
				}
			}
			deadline := time.After(30 * time.Second)
			for len(lat) < b.N {
				select {
				case d := <-latCh:
					lat = append(lat, d)
				case <-deadline:
					b.Fatalf("received %d of %d", len(lat), b.N)
				}
			}
			b.StopTimer()
			cancel()
			<-consDone
			slices.Sort(lat)
			b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
			b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msg/s")
		}
		b.Run("raw/"+sizeName(size), func(b *testing.B) {
			topic := e.topic(b)
			subj := "courier." + topic
			s, _ := e.js.Stream(context.Background(), "COURIER_"+topic)
			c, err := s.CreateConsumer(context.Background(), jetstream.ConsumerConfig{Durable: "raw", AckPolicy: jetstream.AckExplicitPolicy, FilterSubject: subj, MaxAckPending: 64})
			if err != nil {
				b.Fatal(err)
			}
			run(b, func(ctx context.Context, p []byte) error {
				m := &nats.Msg{Subject: subj, Data: p, Header: nats.Header{}}
				m.Header[jetstream.MsgIDHeader] = []string{message.NewID()}
				_, err := e.js.PublishMsg(ctx, m)
				return err
			}, func(ctx context.Context, got func([]byte)) {
				it, err := c.Messages(jetstream.PullMaxMessages(64))
				if err != nil {
					b.Error(err)
					return
				}
				defer it.Stop()
				for {
					m, err := it.Next(jetstream.NextContext(ctx))
					if err != nil {
						return
					}
					got(m.Data())
					_ = m.Ack()
				}
			})
		})
		b.Run("adapter/"+sizeName(size), func(b *testing.B) {
			topic := e.topic(b)
			o := transport.SubscribeOptions{Group: "ad"}
			if err := e.tr.Declare(context.Background(), topic, o); err != nil {
				b.Fatal(err)
			}
			sub := open(b, natstransport.Options{URL: e.srv.URL()})
			run(b, func(ctx context.Context, p []byte) error {
				return e.tr.Publish(ctx, topic, &message.Message{Payload: p})
			}, func(ctx context.Context, got func([]byte)) {
				_ = sub.Subscribe(ctx, topic, message.HandlerFunc(func(_ context.Context, m *message.Message) error {
					got(m.Payload)
					return nil
				}), o)
			})
		})
	}
}
