package amqptransport

import (
	"context"
	"encoding/binary"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/courierkit/courier/conformance"
	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// The benchmarks run raw amqp091-go and the adapter side by side on the
// same broker, with the same settings: publisher confirms, mandatory,
// persistent messages, batches of benchBatch messages per confirm wait,
// prefetch benchPrefetch, one consumer acking each message after its
// handler. Run them with a fixed count, e.g.
//
//	go test -run '^$' -bench . -benchtime 20000x ./transport/amqp/

const (
	benchBatch    = 100
	benchPrefetch = 64
)

var benchSizes = []struct {
	name string
	size int
}{{"16B", 16}, {"1KiB", 1024}}

// benchTopic declares a topic exchange and one durable classic queue bound
// with "#", as the adapter would, and deletes both when b ends.
func benchTopic(b *testing.B, url string) (topic, queue string) {
	b.Helper()
	topic = uniq("bench")
	queue = QueueName(topic, "g")
	_, ch := rawChannel(b, url)
	if err := ch.ExchangeDeclare(topic, "topic", true, false, false, false, nil); err != nil {
		b.Fatal(err)
	}
	if _, err := ch.QueueDeclare(queue, true, false, false, false, nil); err != nil {
		b.Fatal(err)
	}
	if err := ch.QueueBind(queue, "#", topic, false, nil); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		c, err := amqp.Dial(url)
		if err != nil {
			return
		}
		defer c.Close()
		if ch, err := c.Channel(); err == nil {
			_, _ = ch.QueueDelete(queue, false, false, false)
			_ = ch.ExchangeDelete(topic, false, false)
		}
	})
	return topic, queue
}

// rawPublish publishes n messages of payload in confirmed batches.
func rawPublish(b *testing.B, ch *amqp.Channel, topic string, n int, payload []byte) {
	b.Helper()
	ctx := context.Background()
	dcs := make([]*amqp.DeferredConfirmation, 0, benchBatch)
	for sent := 0; sent < n; {
		dcs = dcs[:0]
		for i := 0; i < benchBatch && sent < n; i++ {
			dc, err := ch.PublishWithDeferredConfirmWithContext(ctx, topic, "", true, false, amqp.Publishing{
				MessageId: message.NewID(), DeliveryMode: amqp.Persistent, Timestamp: time.Now(), Body: payload,
			})
			if err != nil {
				b.Fatal(err)
			}
			dcs = append(dcs, dc)
			sent++
		}
		for _, dc := range dcs {
			if ok, err := dc.WaitContext(ctx); err != nil || !ok {
				b.Fatalf("confirm: %v %v", ok, err)
			}
		}
	}
}

func rawConfirmChannel(b *testing.B, url string) *amqp.Channel {
	b.Helper()
	_, ch := rawChannel(b, url)
	if err := ch.Confirm(false); err != nil {
		b.Fatal(err)
	}
	// Drain returns like a real mandatory publisher must.
	go func() {
		for range ch.NotifyReturn(make(chan amqp.Return, 16)) {
		}
	}()
	return ch
}

func adapterPublish(b *testing.B, tr *Transport, topic string, n int, payload []byte) {
	b.Helper()
	ctx := context.Background()
	msgs := make([]*message.Message, benchBatch)
	for sent := 0; sent < n; {
		k := min(benchBatch, n-sent)
		for i := range k {
			msgs[i] = &message.Message{Payload: payload}
		}
		if err := tr.Publish(ctx, topic, msgs[:k]...); err != nil {
			b.Fatal(err)
		}
		sent += k
	}
}

func report(b *testing.B, n int, d time.Duration) {
	b.ReportMetric(float64(n)/d.Seconds(), "msg/s")
}

// BenchmarkPublish: confirmed publishing, batches of 100.
func BenchmarkPublish(b *testing.B) {
	url := brokerURL(b)
	for _, sz := range benchSizes {
		payload := make([]byte, sz.size)
		b.Run("raw/"+sz.name, func(b *testing.B) {
			topic, _ := benchTopic(b, url)
			ch := rawConfirmChannel(b, url)
			b.ResetTimer()
			start := time.Now()
			rawPublish(b, ch, topic, b.N, payload)
			report(b, b.N, time.Since(start))
		})
		b.Run("adapter/"+sz.name, func(b *testing.B) {
			topic, _ := benchTopic(b, url)
			tr := openT(b, Options{URL: url})
			b.ResetTimer()
			start := time.Now()
			adapterPublish(b, tr, topic, b.N, payload)
			report(b, b.N, time.Since(start))
		})
	}
}

// BenchmarkDrain: consuming a backlog of b.N messages with prefetch 64,
// one ack per message.
func BenchmarkDrain(b *testing.B) {
	url := brokerURL(b)
	for _, sz := range benchSizes {
		payload := make([]byte, sz.size)
		b.Run("raw/"+sz.name, func(b *testing.B) {
			topic, queue := benchTopic(b, url)
			rawPublish(b, rawConfirmChannel(b, url), topic, b.N, payload)
			_, ch := rawChannel(b, url)
			b.ResetTimer()
			start := time.Now()
			if err := ch.Qos(benchPrefetch, 0, false); err != nil {
				b.Fatal(err)
			}
			dl, err := ch.Consume(queue, "bench", false, false, false, false, nil)
			if err != nil {
				b.Fatal(err)
			}
			for i := 0; i < b.N; i++ {
				d := <-dl
				if err := d.Ack(false); err != nil {
					b.Fatal(err)
				}
			}
			report(b, b.N, time.Since(start))
			b.StopTimer()
			_ = ch.Cancel("bench", false)
		})
		b.Run("adapter/"+sz.name, func(b *testing.B) {
			topic, _ := benchTopic(b, url)
			rawPublish(b, rawConfirmChannel(b, url), topic, b.N, payload)
			tr := openT(b, Options{URL: url})
			ctx, cancel := context.WithCancel(context.Background())
			var n atomic.Int64
			all := make(chan struct{})
			b.ResetTimer()
			start := time.Now()
			done := make(chan error, 1)
			go func() {
				done <- tr.Subscribe(ctx, topic, message.HandlerFunc(func(context.Context, *message.Message) error {
					if n.Add(1) == int64(b.N) {
						close(all)
					}
					return nil
				}), transport.SubscribeOptions{Group: "g", MaxInFlight: benchPrefetch})
			}()
			<-all
			report(b, b.N, time.Since(start))
			b.StopTimer()
			cancel()
			<-done
		})
	}
}

// BenchmarkLatency offers benchLatencyRate msg/s (one message per Publish,
// from a pool of publishers) and reports end-to-end latency percentiles,
// measured from each message's scheduled send time (so a stall counts for
// every message it delays) to its arrival at the handler.
func BenchmarkLatency(b *testing.B) {
	const rate = 1000 // msg/s
	url := brokerURL(b)
	for _, sz := range benchSizes {
		size := max(sz.size, 8)
		b.Run("raw/"+sz.name, func(b *testing.B) {
			topic, queue := benchTopic(b, url)
			_, cch := rawChannel(b, url)
			if err := cch.Qos(benchPrefetch, 0, false); err != nil {
				b.Fatal(err)
			}
			dl, err := cch.Consume(queue, "lat", false, false, false, false, nil)
			if err != nil {
				b.Fatal(err)
			}
			lat := make([]time.Duration, 0, b.N)
			got := make(chan struct{})
			go func() {
				defer close(got)
				for d := range dl {
					sched := time.Unix(0, int64(binary.BigEndian.Uint64(d.Body)))
					lat = append(lat, time.Since(sched))
					_ = d.Ack(false)
					if len(lat) == b.N {
						return
					}
				}
			}()
			var pubs []*amqp.Channel
			for range 8 {
				pubs = append(pubs, rawConfirmChannel(b, url))
			}
			b.ResetTimer()
			paced(b, rate, len(pubs), func(w int, sched time.Time) {
				body := make([]byte, size)
				binary.BigEndian.PutUint64(body, uint64(sched.UnixNano()))
				dc, err := pubs[w].PublishWithDeferredConfirmWithContext(context.Background(), topic, "", true, false, amqp.Publishing{
					MessageId: message.NewID(), DeliveryMode: amqp.Persistent, Timestamp: time.Now(), Body: body,
				})
				if err == nil {
					_, err = dc.WaitContext(context.Background())
				}
				if err != nil {
					b.Error(err)
				}
			})
			<-got
			b.StopTimer()
			_ = cch.Cancel("lat", false)
			percentiles(b, lat)
		})
		b.Run("adapter/"+sz.name, func(b *testing.B) {
			topic, _ := benchTopic(b, url)
			pub := openT(b, Options{URL: url, PublishChannels: 8})
			sub := openT(b, Options{URL: url})
			var mu sync.Mutex
			lat := make([]time.Duration, 0, b.N)
			all := make(chan struct{})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				done <- sub.Subscribe(ctx, topic, message.HandlerFunc(func(_ context.Context, m *message.Message) error {
					sched := time.Unix(0, int64(binary.BigEndian.Uint64(m.Payload)))
					mu.Lock()
					lat = append(lat, time.Since(sched))
					if len(lat) == b.N {
						close(all)
					}
					mu.Unlock()
					return nil
				}), transport.SubscribeOptions{Group: "g", MaxInFlight: benchPrefetch})
			}()
			b.ResetTimer()
			paced(b, rate, 8, func(_ int, sched time.Time) {
				body := make([]byte, size)
				binary.BigEndian.PutUint64(body, uint64(sched.UnixNano()))
				if err := pub.Publish(context.Background(), topic, &message.Message{Payload: body}); err != nil {
					b.Error(err)
				}
			})
			<-all
			b.StopTimer()
			cancel()
			<-done
			mu.Lock()
			defer mu.Unlock()
			percentiles(b, lat)
		})
	}
}

// paced calls send b.N times at rate per second, spread over workers
// goroutines, passing each call its scheduled time.
func paced(b *testing.B, rate, workers int, send func(worker int, sched time.Time)) {
	interval := time.Second / time.Duration(rate)
	jobs := make(chan time.Time, b.N)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for sched := range jobs {
				send(w, sched)
			}
		}()
	}
	start := time.Now()
	for i := 0; i < b.N; i++ {
		sched := start.Add(time.Duration(i) * interval)
		if d := time.Until(sched); d > 0 {
			time.Sleep(d)
		}
		jobs <- sched
	}
	close(jobs)
	wg.Wait()
}

func percentiles(b *testing.B, lat []time.Duration) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	p := func(q float64) float64 {
		return float64(lat[min(len(lat)-1, int(q*float64(len(lat))))].Microseconds())
	}
	b.ReportMetric(p(0.50), "p50-µs")
	b.ReportMetric(p(0.99), "p99-µs")
	b.ReportMetric(float64(len(lat)), "msgs")
}

// BenchmarkPublishSideBySide alternates raw and adapter publishing in
// chunks of 1000 messages within one run, so that load from elsewhere on
// a shared machine hits both alike, and reports both rates and their
// ratio (adapter/raw, in percent).
func BenchmarkPublishSideBySide(b *testing.B) {
	url := brokerURL(b)
	for _, sz := range benchSizes {
		payload := make([]byte, sz.size)
		b.Run(sz.name, func(b *testing.B) {
			rawTopic, _ := benchTopic(b, url)
			adTopic, _ := benchTopic(b, url)
			ch := rawConfirmChannel(b, url)
			tr := openT(b, Options{URL: url})
			var rawT, adT time.Duration
			b.ResetTimer()
			for done := 0; done < b.N; {
				k := min(1000, b.N-done)
				start := time.Now()
				rawPublish(b, ch, rawTopic, k, payload)
				mid := time.Now()
				adapterPublish(b, tr, adTopic, k, payload)
				adT += time.Since(mid)
				rawT += mid.Sub(start)
				done += k
			}
			b.StopTimer()
			raw, ad := float64(b.N)/rawT.Seconds(), float64(b.N)/adT.Seconds()
			b.ReportMetric(raw, "raw-msg/s")
			b.ReportMetric(ad, "adapter-msg/s")
			b.ReportMetric(100*ad/raw, "adapter-%")
		})
	}
}

// BenchmarkEndToEnd is the suite's shared publish → handler → ack figure.
func BenchmarkEndToEnd(b *testing.B) {
	url := brokerURL(b)
	prefix := uniq("amqpbench")
	cleanupPrefix(b, url, prefix)
	h := conformance.Harness{Prefix: prefix, Open: func(ctx context.Context) (transport.Conn, error) {
		return New(ctx, Options{URL: url})
	}}
	for _, sz := range benchSizes {
		b.Run(sz.name, func(b *testing.B) {
			conformance.Bench(b, h, conformance.BenchOptions{PayloadSize: sz.size, Publishers: 4, Batch: benchBatch, MaxInFlight: benchPrefetch})
		})
	}
}

// BenchmarkDrainSideBySide drains two equal backlogs, raw and adapter,
// alternating chunks of 1000 messages (each side pauses while the other
// runs, holding at most its prefetch), and reports both rates and their
// ratio.
func BenchmarkDrainSideBySide(b *testing.B) {
	url := brokerURL(b)
	const chunk = 1000
	for _, sz := range benchSizes {
		payload := make([]byte, sz.size)
		b.Run(sz.name, func(b *testing.B) {
			rawTopic, rawQueue := benchTopic(b, url)
			adTopic, _ := benchTopic(b, url)
			pub := rawConfirmChannel(b, url)
			// Fill both backlogs alike (interleaved), so neither queue is
			// further paged out than the other.
			for done := 0; done < b.N; done += chunk {
				rawPublish(b, pub, rawTopic, min(chunk, b.N-done), payload)
				rawPublish(b, pub, adTopic, min(chunk, b.N-done), payload)
			}

			_, ch := rawChannel(b, url)
			if err := ch.Qos(benchPrefetch, 0, false); err != nil {
				b.Fatal(err)
			}
			dl, err := ch.Consume(rawQueue, "bench", false, false, false, false, nil)
			if err != nil {
				b.Fatal(err)
			}
			tr := openT(b, Options{URL: url})
			gate := make(chan struct{}) // lets the adapter's handler take one chunk
			chunkDone := make(chan struct{})
			var handled atomic.Int64
			ctx, cancel := context.WithCancel(context.Background())
			subDone := make(chan error, 1)
			go func() {
				subDone <- tr.Subscribe(ctx, adTopic, message.HandlerFunc(func(hctx context.Context, _ *message.Message) error {
					n := handled.Add(1)
					if n%chunk == 1 { // first of a chunk: wait for the go
						select {
						case <-gate:
						case <-hctx.Done():
							return hctx.Err()
						}
					}
					if n%chunk == 0 || n == int64(b.N) {
						chunkDone <- struct{}{}
					}
					return nil
				}), transport.SubscribeOptions{Group: "g", MaxInFlight: benchPrefetch})
			}()
			var rawT, adT time.Duration
			b.ResetTimer()
			for done := 0; done < b.N; {
				k := min(chunk, b.N-done)
				start := time.Now()
				for range k {
					d := <-dl
					if err := d.Ack(false); err != nil {
						b.Fatal(err)
					}
				}
				mid := time.Now()
				gate <- struct{}{}
				<-chunkDone
				adT += time.Since(mid)
				rawT += mid.Sub(start)
				done += k
			}
			b.StopTimer()
			cancel()
			<-subDone
			_ = ch.Cancel("bench", false)
			raw, ad := float64(b.N)/rawT.Seconds(), float64(b.N)/adT.Seconds()
			b.ReportMetric(raw, "raw-msg/s")
			b.ReportMetric(ad, "adapter-msg/s")
			b.ReportMetric(100*ad/raw, "adapter-%")
		})
	}
}
