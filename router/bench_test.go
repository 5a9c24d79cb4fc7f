package router_test

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/router"
	"github.com/courierkit/courier/transport"
	memtransport "github.com/courierkit/courier/transport/mem"
)

// benchEndToEnd publishes b.N messages (unique IDs, 16-byte payload) from
// pubs goroutines to a declared group on a private mem broker and waits
// until the subscription handled them all: directly on the transport
// (viaRouter false) or through a Router with mw as router middleware.
// One op is one message.
func benchEndToEnd(b *testing.B, viaRouter bool, conc, pubs int, mw []message.Middleware) {
	mem, err := memtransport.New(context.Background(), memtransport.Options{MaxBacklog: 1 << 20})
	if err != nil {
		b.Fatal(err)
	}
	defer mem.Close()
	so := transport.SubscribeOptions{Group: "g", Concurrency: conc}
	if err := mem.Declare(context.Background(), "bench", so); err != nil {
		b.Fatal(err)
	}
	var handled atomic.Int64
	target := int64(b.N)
	done := make(chan struct{})
	h := message.HandlerFunc(func(context.Context, *message.Message) error {
		if handled.Add(1) == target {
			close(done)
		}
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	if viaRouter {
		r := router.New(mem, router.Options{Middleware: mw})
		if err := r.Add(router.Route{Topic: "bench", Handler: h, Subscribe: so}); err != nil {
			b.Fatal(err)
		}
		go func() { stopped <- r.Run(ctx) }()
	} else {
		go func() { stopped <- mem.Subscribe(ctx, "bench", message.Chain(h, mw...), so) }()
	}
	defer func() { cancel(); <-stopped }()

	ids := make([]string, b.N)
	for i := range ids {
		ids[i] = "m-" + strconv.Itoa(i)
	}
	payload := make([]byte, 16)
	b.ReportAllocs()
	b.ResetTimer()
	cpu := cpuTime()
	start := time.Now()
	var wg sync.WaitGroup
	for p := range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := p; i < b.N; i += pubs {
				if err := mem.Publish(context.Background(), "bench", &message.Message{ID: ids[i], Payload: payload}); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	select {
	case <-done:
	case <-time.After(time.Minute):
		b.Fatalf("handled %d of %d", handled.Load(), b.N)
	}
	el := time.Since(start)
	b.StopTimer()
	b.ReportMetric(float64(cpuTime()-cpu)/float64(b.N), "cpu-ns/op")
	b.ReportMetric(float64(b.N)/el.Seconds(), "msg/s")
}

// cpuTime is the process's user+system CPU time so far: on a shared,
// loaded machine wall time per op mostly measures waiting for a core.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkRouterOverhead compares the mem transport's end-to-end
// throughput with and without a Router at the same concurrency.
func BenchmarkRouterOverhead(b *testing.B) {
	for _, c := range []struct{ conc, pubs int }{{1, 1}, {4, 4}} {
		name := "conc" + strconv.Itoa(c.conc) + "/pub" + strconv.Itoa(c.pubs)
		b.Run(name+"/transport", func(b *testing.B) { benchEndToEnd(b, false, c.conc, c.pubs, nil) })
		b.Run(name+"/router", func(b *testing.B) { benchEndToEnd(b, true, c.conc, c.pubs, nil) })
	}
}
