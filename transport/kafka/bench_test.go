package kafkatransport_test

import (
	"context"
	"encoding/binary"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	kafkatransport "github.com/courierkit/courier/transport/kafka"
)

// The benchmarks put raw sarama and the adapter side by side on the same
// kfake cluster: raw is a SyncProducer sending batches with SendMessages
// and a consumer group handler that marks each message; the adapter is
// Publish with the same batches and Subscribe with a handler that acks.
// The drain benchmarks read records the adapter published (with their ID
// header) on both sides. Besides msg/s they report cpu-ns/msg, the
// process's CPU time per message (steadier on a shared machine). Run
// rounds as separate go test runs (each starts its own kfake cluster):
//
//	for i in 1 2 3 4 5; do go test -run '^$' -bench Publish -benchtime 20000x ./transport/kafka; done
//	for i in 1 2 3 4 5; do go test -run '^$' -bench 'Drain/.*/16B' -benchtime 1000000x ./transport/kafka; done
//	for i in 1 2 3 4 5; do go test -run '^$' -bench 'Drain/.*/1KiB' -benchtime 200000x ./transport/kafka; done
//	for i in 1 2; do go test -run '^$' -bench Latency -benchtime 2000x ./transport/kafka; done

var benchSizes = []struct {
	name string
	size int
}{{"16B", 16}, {"1KiB", 1024}}

const benchBatch = 100

// rawConfig is the adapter's producer and consumer configuration, built by
// hand the way a sarama user would.
func rawConfig(b *testing.B) *sarama.Config {
	c := sarama.NewConfig()
	c.Version = sarama.V2_8_0_0
	c.Producer.Idempotent = true
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Retry.Max = 10
	c.Net.MaxOpenRequests = 1
	c.Producer.Return.Successes = true
	c.Consumer.Offsets.Initial = sarama.OffsetOldest
	c.Consumer.Offsets.AutoCommit.Interval = 200 * time.Millisecond
	c.Consumer.Group.Rebalance.GroupStrategies = []sarama.BalanceStrategy{sarama.NewBalanceStrategySticky()}
	c.Consumer.Group.Heartbeat.Interval = 500 * time.Millisecond
	c.Consumer.Group.Session.Timeout = 6 * time.Second
	if err := c.Validate(); err != nil {
		b.Fatal(err)
	}
	return c
}

func benchTopic(b *testing.B, tr *kafkatransport.Transport) string {
	topic := name(b, "bench")
	if err := tr.Declare(context.Background(), topic, transport.SubscribeOptions{Group: topic + "-declare"}); err != nil {
		b.Fatal(err)
	}
	return topic
}

func rawProducer(b *testing.B) sarama.SyncProducer {
	p, err := sarama.NewSyncProducer(brokers(b), rawConfig(b))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { p.Close() })
	return p
}

func rawBatch(topic string, payload []byte, n int, withID bool) []*sarama.ProducerMessage {
	ms := make([]*sarama.ProducerMessage, n)
	for i := range ms {
		ms[i] = &sarama.ProducerMessage{Topic: topic, Value: sarama.ByteEncoder(payload)}
		if withID {
			ms[i].Headers = []sarama.RecordHeader{{Key: []byte(kafkatransport.HeaderID), Value: []byte(message.NewID())}}
		}
	}
	return ms
}

func courierBatch(payload []byte, n int) []*message.Message {
	ms := make([]*message.Message, n)
	for i := range ms {
		ms[i] = &message.Message{Payload: payload}
	}
	return ms
}

func reportRate(b *testing.B, n int, d time.Duration) {
	b.ReportMetric(float64(n)/d.Seconds(), "msg/s")
}

// reportCPU reports the process CPU time (both cores, kfake included) per
// message: steadier than msg/s on a shared machine.
func reportCPU(b *testing.B, n int, cpu int64) {
	b.ReportMetric(float64(cpu)/float64(n), "cpu-ns/msg")
}

// BenchmarkPublish: b.N messages in Publish calls of 100, acks=all,
// idempotent producer, both sides.
func BenchmarkPublish(b *testing.B) {
	for _, sz := range benchSizes {
		payload := make([]byte, sz.size)
		// raw+id carries the same 36-byte ID header as the adapter's
		// records, separating the adapter's cost from the ID's bytes.
		for _, v := range []struct {
			name string
			id   bool
		}{{"raw", false}, {"raw+id", true}} {
			b.Run(v.name+"/"+sz.name, func(b *testing.B) {
				tr := newTransport(b, testOptions(b))
				topic := benchTopic(b, tr)
				p := rawProducer(b)
				b.SetBytes(int64(sz.size))
				b.ResetTimer()
				start, cpu := time.Now(), kafkatransport.ProcessCPU()
				for i := 0; i < b.N; i += benchBatch {
					if err := p.SendMessages(rawBatch(topic, payload, min(benchBatch, b.N-i), v.id)); err != nil {
						b.Fatal(err)
					}
				}
				reportRate(b, b.N, time.Since(start))
				reportCPU(b, b.N, kafkatransport.ProcessCPU()-cpu)
			})
		}
		b.Run("courier/"+sz.name, func(b *testing.B) {
			tr := newTransport(b, testOptions(b))
			topic := benchTopic(b, tr)
			ctx := context.Background()
			b.SetBytes(int64(sz.size))
			b.ResetTimer()
			start, cpu := time.Now(), kafkatransport.ProcessCPU()
			for i := 0; i < b.N; i += benchBatch {
				if err := tr.Publish(ctx, topic, courierBatch(payload, min(benchBatch, b.N-i))...); err != nil {
					b.Fatal(err)
				}
			}
			reportRate(b, b.N, time.Since(start))
			reportCPU(b, b.N, kafkatransport.ProcessCPU()-cpu)
		})
	}
}

// fill publishes n messages of size bytes to a new topic.
func fill(b *testing.B, tr *kafkatransport.Transport, n, size int) string {
	topic := benchTopic(b, tr)
	payload := make([]byte, size)
	for i := 0; i < n; i += 500 {
		if err := tr.Publish(context.Background(), topic, courierBatch(payload, min(500, n-i))...); err != nil {
			b.Fatal(err)
		}
	}
	return topic
}

// counter times the drain from the first message handled to the n-th.
type counter struct {
	n     int64
	count atomic.Int64
	first atomic.Int64 // unix nanos of the first message
	cpu0  atomic.Int64 // process CPU at the first message
	cpu   int64        // process CPU from the first message to the n-th
	done  chan struct{}
	once  sync.Once
	end   time.Time
}

func newCounter(n int) *counter { return &counter{n: int64(n), done: make(chan struct{})} }

func (c *counter) hit() {
	if c.count.Add(1) == 1 {
		c.cpu0.Store(kafkatransport.ProcessCPU())
		c.first.Store(time.Now().UnixNano())
	}
	if c.count.Load() >= c.n {
		c.once.Do(func() { c.end = time.Now(); c.cpu = kafkatransport.ProcessCPU() - c.cpu0.Load(); close(c.done) })
	}
}

func (c *counter) wait(b *testing.B) time.Duration {
	select {
	case <-c.done:
	case <-time.After(2 * time.Minute):
		b.Fatalf("drained %d of %d", c.count.Load(), c.n)
	}
	reportCPU(b, int(c.n), c.cpu)
	return c.end.Sub(time.Unix(0, c.first.Load()))
}

type rawHandler struct{ c *counter }

func (rawHandler) Setup(sarama.ConsumerGroupSession) error   { return nil }
func (rawHandler) Cleanup(sarama.ConsumerGroupSession) error { return nil }
func (h rawHandler) ConsumeClaim(s sarama.ConsumerGroupSession, c sarama.ConsumerGroupClaim) error {
	for m := range c.Messages() {
		if h.c != nil {
			h.c.hit()
		}
		s.MarkMessage(m, "")
	}
	return nil
}

// BenchmarkDrain: a backlog of b.N messages read by a consumer group from
// the oldest offset, from the first message handled to the last (the group
// join is left out of the figure).
func BenchmarkDrain(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run("raw/"+sz.name, func(b *testing.B) {
			tr := newTransport(b, testOptions(b))
			topic := fill(b, tr, b.N, sz.size)
			cg, err := sarama.NewConsumerGroup(brokers(b), topic+"-raw", rawConfig(b))
			if err != nil {
				b.Fatal(err)
			}
			c := newCounter(b.N)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				defer close(done)
				for ctx.Err() == nil {
					_ = cg.Consume(ctx, []string{topic}, rawHandler{c})
				}
			}()
			b.SetBytes(int64(sz.size))
			b.ResetTimer()
			reportRate(b, b.N, c.wait(b))
			b.StopTimer()
			cancel()
			<-done
			cg.Close()
		})
		// MaxInFlight 256 makes the adapter fetch 1 MiB per partition,
		// sarama's default, which the raw side uses.
		b.Run("courier/"+sz.name, func(b *testing.B) {
			tr := newTransport(b, testOptions(b))
			topic := fill(b, tr, b.N, sz.size)
			c := newCounter(b.N)
			stop := subscribe(b, tr, topic, message.HandlerFunc(func(context.Context, *message.Message) error {
				c.hit()
				return nil
			}), transport.SubscribeOptions{Group: topic + "-courier", Start: transport.StartOldest, MaxInFlight: 256})
			b.SetBytes(int64(sz.size))
			b.ResetTimer()
			reportRate(b, b.N, c.wait(b))
			b.StopTimer()
			stop()
		})
	}
}

// latencies collects end-to-end latencies (publish call to handler).
type latencies struct {
	mu   sync.Mutex
	d    []time.Duration
	n    int
	done chan struct{}
}

func (l *latencies) add(sent int64) {
	d := time.Since(time.Unix(0, sent))
	l.mu.Lock()
	defer l.mu.Unlock()
	l.d = append(l.d, d)
	if len(l.d) == l.n {
		close(l.done)
	}
}

func (l *latencies) report(b *testing.B) {
	select {
	case <-l.done:
	case <-time.After(time.Minute):
		b.Fatalf("received %d of %d", len(l.d), l.n)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	slices.Sort(l.d)
	q := func(p float64) float64 { return float64(l.d[int(p*float64(len(l.d)-1))].Microseconds()) / 1000 }
	b.ReportMetric(q(0.5), "p50-ms")
	b.ReportMetric(q(0.99), "p99-ms")
}

const latencyRate = 1000 // offered messages per second

// schedule calls send b.N times at latencyRate on an absolute schedule
// (a late send does not push the next ones back).
func schedule(b *testing.B, send func(i int)) {
	start := time.Now()
	interval := time.Second / latencyRate
	for i := 0; i < b.N; i++ {
		if d := time.Until(start.Add(time.Duration(i) * interval)); d > 0 {
			time.Sleep(d)
		}
		send(i)
	}
}

func stamp(size int) []byte {
	p := make([]byte, max(size, 8))
	binary.BigEndian.PutUint64(p, uint64(time.Now().UnixNano()))
	return p[:max(size, 8)]
}

type rawLatency struct {
	l     *latencies
	ready chan struct{}
	once  sync.Once
}

func (*rawLatency) Setup(sarama.ConsumerGroupSession) error   { return nil }
func (*rawLatency) Cleanup(sarama.ConsumerGroupSession) error { return nil }
func (h *rawLatency) ConsumeClaim(s sarama.ConsumerGroupSession, c sarama.ConsumerGroupClaim) error {
	for m := range c.Messages() {
		if strings.HasPrefix(string(m.Value), "probe") {
			h.once.Do(func() { close(h.ready) })
		} else {
			h.l.add(int64(binary.BigEndian.Uint64(m.Value)))
		}
		s.MarkMessage(m, "")
	}
	return nil
}

// BenchmarkLatency: end-to-end latency at a fixed offered rate of 1000
// msg/s, one message per Publish call, p50 and p99 in milliseconds.
func BenchmarkLatency(b *testing.B) {
	for _, sz := range benchSizes {
		b.Run("raw/"+sz.name, func(b *testing.B) {
			tr := newTransport(b, testOptions(b))
			topic := benchTopic(b, tr)
			p := rawProducer(b)
			cfg := rawConfig(b)
			cfg.Consumer.Offsets.Initial = sarama.OffsetNewest
			cg, err := sarama.NewConsumerGroup(brokers(b), topic+"-raw", cfg)
			if err != nil {
				b.Fatal(err)
			}
			h := &rawLatency{l: &latencies{n: b.N, done: make(chan struct{})}, ready: make(chan struct{})}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() {
				defer close(done)
				for ctx.Err() == nil {
					_ = cg.Consume(ctx, []string{topic}, h)
				}
			}()
			waitReady(b, h.ready, func() error {
				_, _, err := p.SendMessage(&sarama.ProducerMessage{Topic: topic, Value: sarama.StringEncoder("probe")})
				return err
			})
			b.ResetTimer()
			schedule(b, func(int) {
				if _, _, err := p.SendMessage(&sarama.ProducerMessage{Topic: topic, Value: sarama.ByteEncoder(stamp(sz.size))}); err != nil {
					b.Error(err)
				}
			})
			h.l.report(b)
			b.StopTimer()
			cancel()
			<-done
			cg.Close()
		})
		for _, v := range []struct{ name string }{{"courier"}} {
			b.Run(v.name+"/"+sz.name, func(b *testing.B) {
				tr := newTransport(b, testOptions(b))
				topic := benchTopic(b, tr)
				l := &latencies{n: b.N, done: make(chan struct{})}
				ready := make(chan struct{})
				var once sync.Once
				stop := subscribe(b, tr, topic, message.HandlerFunc(func(_ context.Context, m *message.Message) error {
					if strings.HasPrefix(string(m.Payload), "probe") {
						once.Do(func() { close(ready) })
					} else {
						l.add(int64(binary.BigEndian.Uint64(m.Payload)))
					}
					return nil
				}), transport.SubscribeOptions{Group: topic + "-courier"})
				ctx := context.Background()
				waitReady(b, ready, func() error { return tr.Publish(ctx, topic, message.New([]byte("probe"))) })
				b.ResetTimer()
				schedule(b, func(int) {
					if err := tr.Publish(ctx, topic, &message.Message{Payload: stamp(sz.size)}); err != nil {
						b.Error(err)
					}
				})
				l.report(b)
				b.StopTimer()
				stop()
			})
		}
	}
}

// waitReady publishes probes until the consumer got one (its group joined).
func waitReady(b *testing.B, ready chan struct{}, probe func() error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := probe(); err != nil {
			b.Fatal(err)
		}
		select {
		case <-ready:
			return
		case <-time.After(200 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			b.Fatal("consumer not ready after 30s")
		}
	}
}
