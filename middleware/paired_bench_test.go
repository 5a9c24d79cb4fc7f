package middleware_test

import (
	"flag"
	"strconv"
	"testing"

	"github.com/courierkit/courier/internal/memrig"
)

// pairRounds is how many rounds a paired benchmark runs; each round runs
// both variants once, alternating which goes first, on fresh rigs (see
// memrig.Paired).
var pairRounds = flag.Int("rounds", 21, "rounds of the paired benchmark")

// BenchmarkStackPaired measures the recommended stack's per-message
// overhead over a bare handler on the mem transport (publish → router →
// handler → ack) as a paired comparison: two routers, bare and
// Recommended (idempotency on a MemoryStore), run side by side, and
// each of -rounds rounds (default 21) starts both afresh (memrig.Paired)
// and runs b.N messages through each, alternating which goes first,
// after a GC. It logs every round and reports medians: wall
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
			bare := memrig.Options{Concurrency: c.conc, Publishers: 2, ViaRouter: true, Headers: c.headers}
			stack := bare
			stack.Middleware = fullStack()
			var bw, bc, ba, sw, sc, sa, dw, dc, da []float64
			memrig.Paired(b, *pairRounds, bare, stack, func(round int, baseFirst bool, x, y memrig.Stats) {
				bw, bc, ba = append(bw, x.Wall), append(bc, x.CPU), append(ba, x.Allocs)
				sw, sc, sa = append(sw, y.Wall), append(sc, y.CPU), append(sa, y.Allocs)
				dw, dc, da = append(dw, y.Wall-x.Wall), append(dc, y.CPU-x.CPU), append(da, y.Allocs-x.Allocs)
				if b.N < 1000 {
					return // the framework's probe run: too short to mean anything
				}
				b.Logf("round %d (%s first): bare %4.0f ns %4.0f cpu-ns %5.2f allocs | stack %4.0f ns %4.0f cpu-ns %5.2f allocs | overhead %+5.0f ns %+5.0f cpu-ns %+5.2f allocs",
					round, map[bool]string{true: "bare", false: "stack"}[baseFirst],
					x.Wall, x.CPU, x.Allocs, y.Wall, y.CPU, y.Allocs, y.Wall-x.Wall, y.CPU-x.CPU, y.Allocs-x.Allocs)
			})
			b.ReportMetric(memrig.Median(bw), "bare-ns/msg")
			b.ReportMetric(memrig.Median(bc), "bare-cpu-ns/msg")
			b.ReportMetric(memrig.Median(sw), "stack-ns/msg")
			b.ReportMetric(memrig.Median(sc), "stack-cpu-ns/msg")
			b.ReportMetric(memrig.Median(dw), "overhead-ns/msg")
			b.ReportMetric(memrig.Median(dc), "overhead-cpu-ns/msg")
			b.ReportMetric(memrig.Median(ba), "bare-allocs/msg")
			b.ReportMetric(memrig.Median(sa), "stack-allocs/msg")
			b.ReportMetric(memrig.Median(da), "overhead-allocs/msg")
			if b.N < 1000 {
				return
			}
			b.Logf("median overhead: %.0f ns wall, %.0f ns CPU, %.2f allocs per message (%s)", memrig.Median(dw), memrig.Median(dc), memrig.Median(da), memrig.LoadAvg())
		})
	}
}
