package natstransport_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// BenchmarkPaired measures the raw jetstream client and the adapter in
// alternating chunks of 100 messages (who goes first alternates too), so
// that load from elsewhere on a shared machine hits both alike. It reports
// the throughput of each and adapter/raw. One iteration moves
// 20000 messages per side (4000 under -short): run it with -benchtime 1x.
func BenchmarkPaired(b *testing.B) {
	total := 20000
	if testing.Short() {
		total = 4000
	}
	const chunk = 100
	e := newBenchEnv(b)
	ctx := context.Background()
	report := func(b *testing.B, raw, ad time.Duration) {
		b.ReportMetric(float64(total)/raw.Seconds(), "raw-msg/s")
		b.ReportMetric(float64(total)/ad.Seconds(), "adapter-msg/s")
		b.ReportMetric(raw.Seconds()/ad.Seconds(), "adapter/raw")
	}
	// alternate runs rawChunk and adChunk for total/chunk rounds.
	alternate := func(rawChunk, adChunk func(round int)) (raw, ad time.Duration) {
		for r := 0; r < total/chunk; r++ {
			timed := func(f func(int), acc *time.Duration) {
				start := time.Now()
				f(r)
				*acc += time.Since(start)
			}
			if r%2 == 0 {
				timed(rawChunk, &raw)
				timed(adChunk, &ad)
			} else {
				timed(adChunk, &ad)
				timed(rawChunk, &raw)
			}
		}
		return raw, ad
	}
	for _, size := range sizes {
		payload := make([]byte, size)
		b.Run("publish-sync/"+sizeName(size), func(b *testing.B) {
			for b.Loop() {
				rawSubj, adTopic := "courier."+e.topic(b), e.topic(b)
				raw, ad := alternate(func(int) {
					for range chunk {
						m := &nats.Msg{Subject: rawSubj, Data: payload, Header: nats.Header{}}
						m.Header[jetstream.MsgIDHeader] = []string{message.NewID()}
						if _, err := e.js.PublishMsg(ctx, m); err != nil {
							b.Fatal(err)
						}
					}
				}, func(int) {
					for range chunk {
						if err := e.tr.Publish(ctx, adTopic, &message.Message{Payload: payload}); err != nil {
							b.Fatal(err)
						}
					}
				})
				report(b, raw, ad)
			}
		})
		b.Run("publish-batch100/"+sizeName(size), func(b *testing.B) {
			for b.Loop() {
				rawSubj, adTopic := "courier."+e.topic(b), e.topic(b)
				raw, ad := alternate(func(int) {
					{
						futs := make([]jetstream.PubAckFuture, chunk)
						for j := range futs {
							m := &nats.Msg{Subject: rawSubj, Data: payload, Header: nats.Header{}}
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
				}, func(int) {
					{
						msgs := make([]*message.Message, chunk)
						for j := range msgs {
							msgs[j] = &message.Message{Payload: payload}
						}
						if err := e.tr.Publish(ctx, adTopic, msgs...); err != nil {
							b.Fatal(err)
						}
					}
				})
				report(b, raw, ad)
			}
		})
		b.Run("drain/"+sizeName(size), func(b *testing.B) {
			for b.Loop() {
				rawTopic, adTopic := e.topic(b), e.topic(b)
				e.fill(b, rawTopic, total, size)
				e.fill(b, adTopic, total, size)
				s, err := e.js.Stream(ctx, "COURIER_"+rawTopic)
				if err != nil {
					b.Fatal(err)
				}
				c, err := s.CreateConsumer(ctx, jetstream.ConsumerConfig{
					Durable: "raw", AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: drainInFlight,
					FilterSubject: "courier." + rawTopic, DeliverPolicy: jetstream.DeliverAllPolicy, AckWait: 30 * time.Second,
				})
				if err != nil {
					b.Fatal(err)
				}
				it, err := c.Messages(jetstream.PullMaxMessages(drainInFlight))
				if err != nil {
					b.Fatal(err)
				}
				o := transport.SubscribeOptions{Group: "ad", Start: transport.StartOldest, MaxInFlight: drainInFlight}
				gate, chunkDone := make(chan struct{}), make(chan struct{})
				var got atomic.Int64
				sctx, cancel := context.WithCancel(ctx)
				subDone := make(chan error, 1)
				go func() {
					subDone <- e.tr.Subscribe(sctx, adTopic, message.HandlerFunc(func(hctx context.Context, m *message.Message) error {
						n := got.Add(1)
						if n%chunk == 1 {
							select {
							case <-gate:
							case <-hctx.Done():
								return hctx.Err()
							}
						}
						if n%chunk == 0 {
							chunkDone <- struct{}{}
						}
						return nil
					}), o)
				}()
				// Both have their prefetch in place before timing starts.
				time.Sleep(200 * time.Millisecond)
				raw, ad := alternate(func(int) {
					for range chunk {
						m, err := it.Next()
						if err != nil {
							b.Fatal(err)
						}
						_ = m.Ack()
					}
				}, func(int) {
					gate <- struct{}{}
					<-chunkDone
				})
				it.Stop()
				cancel()
				<-subDone
				report(b, raw, ad)
			}
		})
	}
}
