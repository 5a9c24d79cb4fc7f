package middleware_test

import (
	"context"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/middleware"
	"github.com/courierkit/courier/router"
	"github.com/courierkit/courier/transport"
	memtransport "github.com/courierkit/courier/transport/mem"
)

func benchIDs(n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = "m-" + strconv.Itoa(i)
	}
	return ids
}

func fullStack() []message.Middleware {
	return middleware.Recommended(middleware.StackOptions{
		Store: middleware.NewMemoryStore(middleware.MemoryStoreOptions{}),
	})
}

// BenchmarkMiddleware is each middleware's own cost on the success path:
// a no-op handler wrapped in it, called directly (no transport) with a
// Router delivery context, a fresh message ID per call.
func BenchmarkMiddleware(b *testing.B) {
	quiet := slog.New(slog.DiscardHandler)
	cases := []struct {
		name string
		mw   func() []message.Middleware
	}{
		{"Bare", func() []message.Middleware { return nil }},
		{"Recover", func() []message.Middleware {
			return []message.Middleware{middleware.Recover(middleware.RecoverOptions{})}
		}},
		{"CorrelationID", func() []message.Middleware {
			return []message.Middleware{middleware.CorrelationID(middleware.CorrelationOptions{})}
		}},
		{"LoggingOff", func() []message.Middleware {
			return []message.Middleware{middleware.Logging(middleware.LoggingOptions{Logger: quiet})}
		}},
		{"Retry", func() []message.Middleware { return []message.Middleware{middleware.Retry(middleware.RetryOptions{})} }},
		{"Redelivery", func() []message.Middleware {
			return []message.Middleware{middleware.Redelivery(middleware.RedeliveryOptions{})}
		}},
		{"DeadLetter", func() []message.Middleware {
			return []message.Middleware{middleware.DeadLetter(middleware.DeadLetterOptions{})}
		}},
		{"IdempotencyMemory", func() []message.Middleware {
			return []message.Middleware{middleware.Idempotency(middleware.NewMemoryStore(middleware.MemoryStoreOptions{}), middleware.IdempotencyOptions{})}
		}},
		{"CircuitBreaker", func() []message.Middleware {
			return []message.Middleware{middleware.CircuitBreaker(middleware.BreakerOptions{})}
		}},
		{"Timeout", func() []message.Middleware {
			return []message.Middleware{middleware.Timeout(middleware.TimeoutOptions{})}
		}},
		{"RateLimitInf", func() []message.Middleware {
			return []message.Middleware{middleware.RateLimit(middleware.RateLimitOptions{Limit: rate.Inf})}
		}},
		{"RateLimitHigh", func() []message.Middleware {
			return []message.Middleware{middleware.RateLimit(middleware.RateLimitOptions{Limit: 1e9, Burst: 1 << 20})}
		}},
		{"Recommended", fullStack},
	}
	for _, c := range cases {
		b.Run(c.name, func(b *testing.B) {
			h := message.Chain(message.HandlerFunc(func(context.Context, *message.Message) error { return nil }), c.mw()...)
			ids := benchIDs(b.N)
			m := &message.Message{Topic: "bench", Attempt: 1, Headers: message.Header{"a": "b"}}
			ctx := router.NewContext(context.Background(), m, "bench", "g", nil)
			b.ReportAllocs()
			b.ResetTimer()
			cpu := cpuTime()
			for i := range b.N {
				m.ID = ids[i]
				delete(m.Headers, message.HeaderCorrelationID)
				if err := h.Handle(ctx, m); err != nil {
					b.Fatal(err)
				}
			}
			reportCPU(b, cpu)
		})
	}
}

// BenchmarkStackOnMem is publish → router → handler → ack on the mem
// transport, with a bare handler and with the full recommended stack
// (idempotency on the in-memory store); the difference per op is the
// stack's per-message overhead.
//
// The headers variants publish messages with one header (a content type),
// as most real messages have: CorrelationID then adds its header to an
// existing map instead of allocating the map (336 bytes) itself.
func BenchmarkStackOnMem(b *testing.B) {
	for _, headers := range []bool{false, true} {
		for _, conc := range []int{1, 4} {
			for _, stack := range []bool{false, true} {
				name := "conc" + strconv.Itoa(conc)
				if headers {
					name += "/headers"
				}
				if stack {
					name += "/recommended"
				} else {
					name += "/bare"
				}
				b.Run(name, func(b *testing.B) {
					var mw []message.Middleware
					if stack {
						mw = fullStack()
					}
					benchEndToEnd(b, conc, mw, headers)
				})
			}
		}
	}
}

func benchEndToEnd(b *testing.B, conc int, mw []message.Middleware, headers bool) {
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
	r := router.New(mem, router.Options{Middleware: mw})
	if err := r.Add(router.Route{Topic: "bench", Subscribe: so, Handler: message.HandlerFunc(func(context.Context, *message.Message) error {
		if handled.Add(1) == target {
			close(done)
		}
		return nil
	})}); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() { stopped <- r.Run(ctx) }()
	defer func() { cancel(); <-stopped }()
	ids := benchIDs(b.N)
	payload := make([]byte, 16)
	b.ReportAllocs()
	b.ResetTimer()
	cpu := cpuTime()
	start := time.Now()
	var wg sync.WaitGroup
	const pubs = 2
	for p := range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := p; i < b.N; i += pubs {
				m := &message.Message{ID: ids[i], Payload: payload}
				if headers {
					m.Headers = message.Header{message.HeaderContentType: "application/octet-stream"}
				}
				if err := mem.Publish(context.Background(), "bench", m); err != nil {
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
	reportCPU(b, cpu)
	b.ReportMetric(float64(b.N)/el.Seconds(), "msg/s")
}

// cpuTime is the process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU reports CPU time per op since start: on a shared, loaded
// machine wall time per op mostly measures waiting for a core, CPU time
// what the code costs (GC included).
func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
}
