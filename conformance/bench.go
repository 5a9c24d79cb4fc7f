package conformance

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// BenchOptions shape Bench.
type BenchOptions struct {
	// PayloadSize in bytes. Default 16.
	PayloadSize int
	// Publishers is how many goroutines publish at once. Default 1.
	Publishers int
	// Batch is how many messages one Publish call carries. Default 1.
	Batch int
	// Concurrency and MaxInFlight of the one subscription. Defaults 1 and
	// the transport's default.
	Concurrency, MaxInFlight int
}

// Bench measures the path every transport shares, publish → handler → ack,
// end to end: b.N messages published by Publishers goroutines to a
// declared group and handled by one subscription. It reports msg/s; with
// b.ReportAllocs (or -benchmem) allocs/op is per message. Adapters call it
// so that every transport reports the same figures:
//
//	func BenchmarkEndToEnd(b *testing.B) {
//		conformance.Bench(b, harness, conformance.BenchOptions{Publishers: 4})
//	}
func Bench(b *testing.B, h Harness, o BenchOptions) {
	s := &suite{h: h}
	s.defaults()
	if o.PayloadSize <= 0 {
		o.PayloadSize = 16
	}
	o.Publishers = max(o.Publishers, 1)
	o.Batch = max(o.Batch, 1)
	pub, sub := s.conn(b), s.conn(b)
	topic := s.name("bench")
	so := transport.SubscribeOptions{Group: s.name("g"), Concurrency: o.Concurrency, MaxInFlight: o.MaxInFlight}
	s.declare(b, sub, topic, so)

	var handled atomic.Int64
	done := make(chan struct{})
	target := int64(b.N)
	ctx, cancel := context.WithCancel(context.Background())
	subDone := make(chan error, 1)
	go func() {
		subDone <- sub.Subscribe(ctx, topic, message.HandlerFunc(func(context.Context, *message.Message) error {
			if handled.Add(1) == target {
				close(done)
			}
			return nil
		}), s.opts(so))
	}()
	defer func() {
		cancel()
		<-subDone
	}()
	payload := make([]byte, o.PayloadSize)
	b.SetBytes(int64(o.PayloadSize))
	b.ReportAllocs()
	b.ResetTimer()
	start := time.Now()
	var wg sync.WaitGroup
	per := b.N / o.Publishers
	for p := range o.Publishers {
		n := per
		if p == 0 {
			n += b.N % o.Publishers
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			// Publish copies what it needs, so one set of Message structs
			// is reused; each message gets a unique ID (brokers that
			// de-duplicate by ID, JetStream and SQS FIFO, would drop
			// repeats), built from a per-publisher prefix and a counter:
			// one allocation, cheaper than NewID.
			structs := make([]message.Message, o.Batch)
			batch := make([]*message.Message, 0, o.Batch)
			prefix := fmt.Sprintf("%s-%d-", topic, p)
			buf := make([]byte, 0, len(prefix)+20)
			for i := 0; i < n; {
				batch = batch[:0]
				for ; len(batch) < o.Batch && i < n; i++ {
					m := &structs[len(batch)]
					buf = strconv.AppendInt(append(buf[:0], prefix...), int64(i), 10)
					*m = message.Message{ID: string(buf), Payload: payload}
					batch = append(batch, m)
				}
				if err := pub.Publish(context.Background(), topic, batch...); err != nil {
					b.Errorf("Publish: %v", err)
					return
				}
			}
		}()
	}
	wg.Wait()
	select {
	case <-done:
	case err := <-subDone:
		b.Fatalf("subscription ended: %v (handled %d of %d)", err, handled.Load(), b.N)
	case <-time.After(s.h.Timeout + time.Duration(b.N)*time.Millisecond):
		b.Fatalf("handled %d of %d", handled.Load(), b.N)
	}
	el := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/el.Seconds(), "msg/s")
}
