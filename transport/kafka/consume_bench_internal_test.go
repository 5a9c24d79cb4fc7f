package kafkatransport

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// BenchmarkConsumePath measures the adapter's own work per received
// record, without a broker: three partitions whose records arrive on
// channels the way sarama's partition consumers deliver them, taken by the
// subscription (Concurrency 1, MaxInFlight 256) and acked by a handler
// that does nothing; "raw" is a loop per partition that only marks each
// record's offset, as the raw sarama handler of BenchmarkDrain does. The
// difference is what the adapter adds per message; allocs/op counts the
// feeding side's record allocations on both.
//
//	go test -run '^$' -bench ConsumePath -count 5 ./transport/kafka
func BenchmarkConsumePath(b *testing.B) {
	const parts = 3
	id := []byte("0193a5b2-7c4d-7e8f-9a0b-1c2d3e4f5a6b")
	payload := make([]byte, 16)
	feed := func(b *testing.B, chans []chan *sarama.ConsumerMessage) {
		var wg sync.WaitGroup
		for p, ch := range chans {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for off := int64(0); off < int64((b.N+parts-1-p)/parts); off++ {
					ch <- &sarama.ConsumerMessage{Topic: "t", Partition: int32(p), Offset: off, Value: payload,
						Headers: []*sarama.RecordHeader{{Key: []byte(HeaderID), Value: id}}}
				}
			}()
		}
		wg.Wait()
	}
	b.Run("raw", func(b *testing.B) {
		chans := make([]chan *sarama.ConsumerMessage, parts)
		var marked [parts]atomic.Int64
		var done atomic.Int64
		all := make(chan struct{})
		for p := range chans {
			chans[p] = make(chan *sarama.ConsumerMessage, 256)
			go func() {
				for cm := range chans[p] {
					marked[p].Store(cm.Offset + 1)
					if done.Add(1) == int64(b.N) {
						close(all)
					}
				}
			}()
		}
		b.ReportAllocs()
		b.ResetTimer()
		cpu := ProcessCPU()
		feed(b, chans)
		<-all
		b.ReportMetric(float64(ProcessCPU()-cpu)/float64(b.N), "cpu-ns/op")
		b.StopTimer()
		for _, ch := range chans {
			close(ch)
		}
	})
	b.Run("courier", func(b *testing.B) {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		tr := &Transport{o: Options{}.withDefaults()}
		tr.log = tr.o.Logger
		so := transport.SubscribeOptions{MaxInFlight: 256}.Defaults()
		var done atomic.Int64
		all := make(chan struct{})
		s := &subscription{t: tr, topic: "t", opts: so, lim: newLimiter(so.MaxInFlight), parts: map[*partState]struct{}{},
			serial: new(sync.Mutex)}
		s.q.signal = make(chan struct{}, 1)
		s.disp = transport.NewDispatcher(ctx, message.HandlerFunc(func(context.Context, *message.Message) error {
			if done.Add(1) == int64(b.N) {
				close(all)
			}
			return nil
		}), transport.DispatchOptions{Topic: "t", Subscribe: so})
		feedDone := make(chan struct{})
		go func() { defer close(feedDone); s.feed() }()
		chans := make([]chan *sarama.ConsumerMessage, parts)
		var marked [parts]atomic.Int64
		var loops sync.WaitGroup
		for p := range chans {
			chans[p] = make(chan *sarama.ConsumerMessage, 256)
			pt := s.newPart(int32(p), ctx, func(next int64) { marked[p].Store(next) }, nil)
			loops.Add(1)
			go func() { defer loops.Done(); s.consumeLoop(pt, chans[p]) }()
		}
		b.ReportAllocs()
		b.ResetTimer()
		cpu := ProcessCPU()
		feed(b, chans)
		select {
		case <-all:
		case <-time.After(time.Minute):
			b.Fatalf("handled %d of %d", done.Load(), b.N)
		}
		b.ReportMetric(float64(ProcessCPU()-cpu)/float64(b.N), "cpu-ns/op")
		b.StopTimer()
		for _, ch := range chans {
			close(ch)
		}
		loops.Wait()
		s.q.close()
		<-feedDone
		if err := s.disp.Stop(context.Background()); err != nil {
			b.Fatal(err)
		}
		var sum int64
		for p := range marked {
			sum += marked[p].Load()
		}
		if sum != int64(b.N) {
			b.Fatalf("marked %d offsets, want %d", sum, b.N)
		}
	})
}
