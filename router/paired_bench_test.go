package router_test

import (
	"flag"
	"strconv"
	"testing"

	"github.com/courierkit/courier/internal/memrig"
)

// pairRounds is how many rounds a paired benchmark runs; each round runs
// both variants once, alternating which goes first, on fresh rigs (see
// memrig.Paired).
var pairRounds = flag.Int("rounds", 161, "rounds of the paired benchmark")

// BenchmarkRouterPaired measures what the Router adds to the mem
// transport's end-to-end cost (publish → handler → ack, 16-byte payloads,
// Concurrency publishers) as a paired comparison: one subscription
// directly on the transport and one through a Router, both running side
// by side; each of -rounds rounds (default 161) starts both afresh
// (memrig.Paired) and runs b.N messages through each, alternating which
// goes first, after a GC. It logs every round and reports medians:
// wall and CPU time per message of each variant, the median of the
// per-round ratios minus one in percent (added-%, added-cpu-%; the
// throughput target compares these) and allocations per message
// (runtime.MemStats.Mallocs, whole process). ns/op is the whole run
// divided by b.N and means nothing; use -benchtime Nx:
//
//	go test -run '^$' -bench 'RouterPaired' -benchtime 100000x ./router/
//
// A single round varies by ±15 % at Concurrency 1 with where the rigs
// land; -aa runs the transport on both sides to show that noise.
func BenchmarkRouterPaired(b *testing.B) {
	for _, conc := range []int{1, 4} {
		b.Run("conc"+strconv.Itoa(conc), func(b *testing.B) {
			direct := memrig.Options{Concurrency: conc, Publishers: conc, Backlog: *benchBacklog}
			routed := direct
			routed.ViaRouter = !*pairAA
			var tw, tc, ta, rw, rc, ra, pw, pc []float64
			memrig.Paired(b, *pairRounds, direct, routed, func(round int, baseFirst bool, x, y memrig.Stats) {
				tw, tc, ta = append(tw, x.Wall), append(tc, x.CPU), append(ta, x.Allocs)
				rw, rc, ra = append(rw, y.Wall), append(rc, y.CPU), append(ra, y.Allocs)
				pw, pc = append(pw, 100*(y.Wall/x.Wall-1)), append(pc, 100*(y.CPU/x.CPU-1))
				if b.N < 1000 {
					return // the framework's probe run: too short to mean anything
				}
				b.Logf("round %d (%s first): transport %4.0f ns %4.0f cpu-ns %5.2f allocs | router %4.0f ns %4.0f cpu-ns %5.2f allocs | added %+5.1f %% wall %+5.1f %% cpu",
					round, map[bool]string{true: "transport", false: "router"}[baseFirst],
					x.Wall, x.CPU, x.Allocs, y.Wall, y.CPU, y.Allocs, 100*(y.Wall/x.Wall-1), 100*(y.CPU/x.CPU-1))
			})
			b.ReportMetric(memrig.Median(tw), "transport-ns/msg")
			b.ReportMetric(memrig.Median(tc), "transport-cpu-ns/msg")
			b.ReportMetric(memrig.Median(rw), "router-ns/msg")
			b.ReportMetric(memrig.Median(rc), "router-cpu-ns/msg")
			b.ReportMetric(memrig.Median(pw), "added-%")
			b.ReportMetric(memrig.Median(pc), "added-cpu-%")
			b.ReportMetric(memrig.Median(ta), "transport-allocs/msg")
			b.ReportMetric(memrig.Median(ra), "router-allocs/msg")
			if b.N < 1000 {
				return
			}
			b.Logf("median added by the router: %+.1f %% wall, %+.1f %% CPU per message (%s)", memrig.Median(pw), memrig.Median(pc), memrig.LoadAvg())
		})
	}
}

// benchBacklog is the mem transport's MaxBacklog in the paired benchmark:
// the default (10,000) unless -backlog says otherwise. With a backlog larger
// than a round, publishers never wait, so whichever side consumes a little
// slower builds a queue of up to a whole round and pays for growing it and
// for the collector scanning it: that measures the queue, not the router.
var benchBacklog = flag.Int("backlog", 10000, "the mem transport's MaxBacklog in the paired benchmark")

// pairAA makes both sides of BenchmarkRouterPaired the bare transport (an
// A/A run): its added-% is the harness's own noise, which a router figure
// should be read against.
var pairAA = flag.Bool("aa", false, "A/A run: both sides of the paired benchmark without a router")
