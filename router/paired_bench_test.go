package router_test

import (
	"context"
	"flag"
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
var pairRounds = flag.Int("rounds", 7, "rounds of the paired benchmark")

// memRig is one running subscription on a private mem broker, consuming
// topic "bench" as group "g" with a counting handler, either directly on
// the transport or through a Router. Both variants of a paired benchmark
// are started before the first round.
type memRig struct {
	mem     *memtransport.Transport
	handled atomic.Int64
	target  atomic.Int64
	signal  chan struct{}
	cancel  context.CancelFunc
	stopped chan error
	payload []byte
	pubs    int
}

func newMemRig(b *testing.B, viaRouter bool, conc, pubs int) *memRig {
	mem, err := memtransport.New(context.Background(), memtransport.Options{MaxBacklog: *benchBacklog})
	if err != nil {
		b.Fatal(err)
	}
	so := transport.SubscribeOptions{Group: "g", Concurrency: conc}
	if err := mem.Declare(context.Background(), "bench", so); err != nil {
		b.Fatal(err)
	}
	rg := &memRig{mem: mem, signal: make(chan struct{}, 1), stopped: make(chan error, 1), payload: make([]byte, 16), pubs: pubs}
	rg.target.Store(-1)
	h := message.HandlerFunc(func(context.Context, *message.Message) error {
		if rg.handled.Add(1) == rg.target.Load() {
			rg.signal <- struct{}{}
		}
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	rg.cancel = cancel
	if viaRouter {
		r := router.New(mem, router.Options{})
		if err := r.Add(router.Route{Topic: "bench", Subscribe: so, Handler: h}); err != nil {
			b.Fatal(err)
		}
		go func() { rg.stopped <- r.Run(ctx) }()
	} else {
		go func() { rg.stopped <- mem.Subscribe(ctx, "bench", h, so) }()
	}
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
				if err := rg.mem.Publish(context.Background(), "bench", &message.Message{ID: ids[i], Payload: rg.payload}); err != nil {
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

// BenchmarkRouterPaired measures what the Router adds to the mem
// transport's end-to-end cost (publish → handler → ack, 16-byte payloads,
// Concurrency publishers) as a paired comparison: one subscription
// directly on the transport and one through a Router, both running side
// by side; each of 7 rounds runs b.N messages through each, alternating
// which goes first, after a GC. It logs every round and reports medians:
// wall and CPU time per message of each variant, the median of the
// per-round ratios minus one in percent (added-%, added-cpu-%; the
// throughput target compares these) and allocations per message
// (runtime.MemStats.Mallocs, whole process). ns/op is the whole run
// divided by b.N and means nothing; use -benchtime Nx:
//
//	go test -run '^$' -bench 'RouterPaired' -benchtime 100000x ./router/
func BenchmarkRouterPaired(b *testing.B) {
	for _, conc := range []int{1, 4} {
		b.Run("conc"+strconv.Itoa(conc), func(b *testing.B) {
			direct := newMemRig(b, false, conc, conc)
			defer direct.close()
			routed := newMemRig(b, true, conc, conc)
			defer routed.close()
			var tw, tc, ta, rw, rc, ra, pw, pc []float64
			for round := range *pairRounds {
				ids := make([]string, b.N)
				for i := range ids {
					ids[i] = "r" + strconv.Itoa(round) + "-" + strconv.Itoa(i)
				}
				var x, y roundStats
				if round%2 == 0 {
					x = direct.run(b, ids)
					y = routed.run(b, ids)
				} else {
					y = routed.run(b, ids)
					x = direct.run(b, ids)
				}
				tw, tc, ta = append(tw, x.wall), append(tc, x.cpu), append(ta, x.allocs)
				rw, rc, ra = append(rw, y.wall), append(rc, y.cpu), append(ra, y.allocs)
				pw, pc = append(pw, 100*(y.wall/x.wall-1)), append(pc, 100*(y.cpu/x.cpu-1))
				if b.N < 1000 {
					continue // the framework's probe run: too short to mean anything
				}
				b.Logf("round %d (%s first): transport %4.0f ns %4.0f cpu-ns %5.2f allocs | router %4.0f ns %4.0f cpu-ns %5.2f allocs | added %+5.1f %% wall %+5.1f %% cpu",
					round, map[bool]string{true: "transport", false: "router"}[round%2 == 0],
					x.wall, x.cpu, x.allocs, y.wall, y.cpu, y.allocs, 100*(y.wall/x.wall-1), 100*(y.cpu/x.cpu-1))
			}
			b.ReportMetric(median(tw), "transport-ns/msg")
			b.ReportMetric(median(tc), "transport-cpu-ns/msg")
			b.ReportMetric(median(rw), "router-ns/msg")
			b.ReportMetric(median(rc), "router-cpu-ns/msg")
			b.ReportMetric(median(pw), "added-%")
			b.ReportMetric(median(pc), "added-cpu-%")
			b.ReportMetric(median(ta), "transport-allocs/msg")
			b.ReportMetric(median(ra), "router-allocs/msg")
			if b.N < 1000 {
				return
			}
			b.Logf("median added by the router: %+.1f %% wall, %+.1f %% CPU per message (%s)", median(pw), median(pc), loadavg())
		})
	}
}

// loadavg is the first three fields of /proc/loadavg, for the log.
func loadavg() string {
	raw, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "load average unknown"
	}
	f := strings.Fields(string(raw))
	if len(f) < 3 {
		return fmt.Sprintf("load average unknown (%q)", raw)
	}
	return "load average " + strings.Join(f[:3], " ")
}

// benchBacklog is the mem transport's MaxBacklog in the paired benchmark:
// the default (10,000) unless -backlog says otherwise. With a backlog larger
// than a round, publishers never wait, so whichever side consumes a little
// slower builds a queue of up to a whole round and pays for growing it and
// for the collector scanning it: that measures the queue, not the router.
var benchBacklog = flag.Int("backlog", 10000, "the mem transport's MaxBacklog in the paired benchmark")
