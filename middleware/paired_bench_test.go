package middleware_test

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/router"
	"github.com/courierkit/courier/transport"
	memtransport "github.com/courierkit/courier/transport/mem"
)

// pairRounds is how many rounds a paired benchmark runs; each round runs
// both variants once, alternating which goes first.
const pairRounds = 7

// memRig is one running Router on a private mem broker, consuming topic
// "bench" as group "g" with a counting handler. Both variants of a paired
// benchmark have one each, started before the first round, so neither
// pays the other's setup and both see the same process state.
type memRig struct {
	mem     *memtransport.Transport
	handled atomic.Int64
	target  atomic.Int64
	signal  chan struct{}
	cancel  context.CancelFunc
	stopped chan error
	payload []byte
	headers bool
	pubs    int
}

func newMemRig(b *testing.B, conc, pubs int, mw []message.Middleware, headers bool) *memRig {
	mem, err := memtransport.New(context.Background(), memtransport.Options{MaxBacklog: 1 << 20})
	if err != nil {
		b.Fatal(err)
	}
	so := transport.SubscribeOptions{Group: "g", Concurrency: conc}
	if err := mem.Declare(context.Background(), "bench", so); err != nil {
		b.Fatal(err)
	}
	rg := &memRig{mem: mem, signal: make(chan struct{}, 1), stopped: make(chan error, 1),
		payload: make([]byte, 16), headers: headers, pubs: pubs}
	rg.target.Store(-1)
	h := message.HandlerFunc(func(context.Context, *message.Message) error {
		if rg.handled.Add(1) == rg.target.Load() {
			rg.signal <- struct{}{}
		}
		return nil
	})
	r := router.New(mem, router.Options{Middleware: mw})
	if err := r.Add(router.Route{Topic: "bench", Subscribe: so, Handler: h}); err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	rg.cancel = cancel
	go func() { rg.stopped <- r.Run(ctx) }()
	return rg
}

func (rg *memRig) close() {
	rg.cancel()
	<-rg.stopped
	_ = rg.mem.Close()
}

// roundStats is one variant's figures in one round, per message.
type roundStats struct{ wall, cpu, allocs float64 }

// run publishes one message per id from rg.pubs goroutines and waits until
// the handler saw them all.
func (rg *memRig) run(b *testing.B, ids []string) roundStats {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	mallocs := ms.Mallocs
	rg.target.Store(rg.handled.Load() + int64(len(ids)))
	cpu := cpuTime()
	start := time.Now()
	var wg sync.WaitGroup
	for p := range rg.pubs {
		wg.Go(func() {
			for i := p; i < len(ids); i += rg.pubs {
				m := &message.Message{ID: ids[i], Payload: rg.payload}
				if rg.headers {
					m.Headers = message.Header{message.HeaderContentType: "application/octet-stream"}
				}
				if err := rg.mem.Publish(context.Background(), "bench", m); err != nil {
					b.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	select {
	case <-rg.signal:
	case <-time.After(time.Minute):
		b.Fatalf("handled %d of %d", rg.handled.Load(), rg.target.Load())
	}
	wall := time.Since(start)
	cpuUsed := cpuTime() - cpu
	runtime.ReadMemStats(&ms)
	n := float64(len(ids))
	return roundStats{wall: float64(wall) / n, cpu: float64(cpuUsed) / n, allocs: float64(ms.Mallocs-mallocs) / n}
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// BenchmarkStackPaired measures the recommended stack's per-message
// overhead over a bare handler on the mem transport (publish → router →
// handler → ack) as a paired comparison: two routers, bare and
// Recommended (idempotency on a MemoryStore), run side by side, and
// each of 7 rounds runs b.N messages through each, alternating which
// goes first, after a GC. It logs every round and reports medians: wall
// and CPU time per message of each variant, the median of the per-round
// differences (overhead-ns/msg, overhead-cpu-ns/msg) and allocations per
// message (runtime.MemStats.Mallocs, whole process). The headers
// variant publishes one header (a content type), as real messages have:
// CorrelationID then adds to the existing map instead of allocating one
// (2 allocations, about 300 bytes). ns/op is the whole run divided by b.N
// and means nothing; use -benchtime Nx:
//
//	go test -run '^$' -bench 'StackPaired' -benchtime 100000x ./middleware/
func BenchmarkStackPaired(b *testing.B) {
	for _, c := range []struct {
		conc    int
		headers bool
	}{{1, false}, {4, false}, {1, true}} {
		name := "conc" + strconv.Itoa(c.conc)
		if c.headers {
			name += "/headers"
		}
		b.Run(name, func(b *testing.B) {
			bare := newMemRig(b, c.conc, 2, nil, c.headers)
			defer bare.close()
			stack := newMemRig(b, c.conc, 2, fullStack(), c.headers)
			defer stack.close()
			var bw, bc, ba, sw, sc, sa, dw, dc, da []float64
			for round := range pairRounds {
				ids := make([]string, b.N)
				for i := range ids {
					ids[i] = "r" + strconv.Itoa(round) + "-" + strconv.Itoa(i)
				}
				var x, y roundStats
				if round%2 == 0 {
					x = bare.run(b, ids)
					y = stack.run(b, ids)
				} else {
					y = stack.run(b, ids)
					x = bare.run(b, ids)
				}
				bw, bc, ba = append(bw, x.wall), append(bc, x.cpu), append(ba, x.allocs)
				sw, sc, sa = append(sw, y.wall), append(sc, y.cpu), append(sa, y.allocs)
				dw, dc, da = append(dw, y.wall-x.wall), append(dc, y.cpu-x.cpu), append(da, y.allocs-x.allocs)
				if b.N < 1000 {
					continue // the framework's probe run: too short to mean anything
				}
				b.Logf("round %d (%s first): bare %4.0f ns %4.0f cpu-ns %5.2f allocs | stack %4.0f ns %4.0f cpu-ns %5.2f allocs | overhead %+5.0f ns %+5.0f cpu-ns %+5.2f allocs",
					round, map[bool]string{true: "bare", false: "stack"}[round%2 == 0],
					x.wall, x.cpu, x.allocs, y.wall, y.cpu, y.allocs, y.wall-x.wall, y.cpu-x.cpu, y.allocs-x.allocs)
			}
			b.ReportMetric(median(bw), "bare-ns/msg")
			b.ReportMetric(median(bc), "bare-cpu-ns/msg")
			b.ReportMetric(median(sw), "stack-ns/msg")
			b.ReportMetric(median(sc), "stack-cpu-ns/msg")
			b.ReportMetric(median(dw), "overhead-ns/msg")
			b.ReportMetric(median(dc), "overhead-cpu-ns/msg")
			b.ReportMetric(median(ba), "bare-allocs/msg")
			b.ReportMetric(median(sa), "stack-allocs/msg")
			b.ReportMetric(median(da), "overhead-allocs/msg")
			if b.N < 1000 {
				return
			}
			b.Logf("median overhead: %.0f ns wall, %.0f ns CPU, %.2f allocs per message (%s)", median(dw), median(dc), median(da), loadavg())
		})
	}
}

// loadavg is the first three fields of /proc/loadavg, for the log.
func loadavg() string {
	s, err := readLoadavg()
	if err != nil {
		return "load average unknown"
	}
	return "load average " + s
}

func readLoadavg() (string, error) {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "", err
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "", fmt.Errorf("unexpected /proc/loadavg %q", b)
	}
	return strings.Join(f[:3], " "), nil
}
