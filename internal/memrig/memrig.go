// Package memrig is the harness of the paired end-to-end benchmarks on the
// mem transport (middleware's stack overhead, the router's overhead): a
// Rig is one running subscription on a private mem broker, consuming
// topic "bench" as group "g" with a counting handler, directly on the
// transport or through a Router; Run pushes one round of messages through
// it and measures wall time, process CPU time and allocations per
// message. Both variants of a paired benchmark are started before the
// first round, so neither pays the other's setup.
package memrig

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strings"
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

// Options configure a Rig.
type Options struct {
	// Concurrency is the subscription's (SubscribeOptions.Concurrency).
	Concurrency int
	// Publishers is how many goroutines publish a round's messages.
	Publishers int
	// ViaRouter consumes through a Router with Middleware as its
	// router-level middleware; otherwise the handler subscribes directly
	// (Middleware must then be empty).
	ViaRouter  bool
	Middleware []message.Middleware
	// Headers gives every message one header (a content type), as most
	// real messages have.
	Headers bool
	// Backlog is the mem transport's MaxBacklog (0: its default, 10,000).
	Backlog int
}

// Rig is one running subscription; see the package doc.
type Rig struct {
	o       Options
	mem     *memtransport.Transport
	_       [64]byte // the handler's counters on their own cache line
	handled atomic.Int64
	target  atomic.Int64
	_       [64]byte
	signal  chan struct{}
	cancel  context.CancelFunc
	stopped chan error
	payload []byte
}

// New starts a Rig; Close stops it.
func New(tb testing.TB, o Options) *Rig {
	tb.Helper()
	if !o.ViaRouter && len(o.Middleware) > 0 {
		tb.Fatal("memrig: middleware needs ViaRouter")
	}
	o.Publishers = max(o.Publishers, 1)
	mem, err := memtransport.New(context.Background(), memtransport.Options{MaxBacklog: o.Backlog})
	if err != nil {
		tb.Fatal(err)
	}
	so := transport.SubscribeOptions{Group: "g", Concurrency: o.Concurrency}
	if err := mem.Declare(context.Background(), "bench", so); err != nil {
		tb.Fatal(err)
	}
	rg := &Rig{o: o, mem: mem, signal: make(chan struct{}, 1), stopped: make(chan error, 1), payload: make([]byte, 16)}
	rg.target.Store(-1)
	h := message.HandlerFunc(func(context.Context, *message.Message) error {
		if rg.handled.Add(1) == rg.target.Load() {
			rg.signal <- struct{}{}
		}
		return nil
	})
	ctx, cancel := context.WithCancel(context.Background())
	rg.cancel = cancel
	if o.ViaRouter {
		r := router.New(mem, router.Options{Middleware: o.Middleware})
		if err := r.Add(router.Route{Topic: "bench", Subscribe: so, Handler: h}); err != nil {
			cancel()
			tb.Fatal(err)
		}
		go func() { rg.stopped <- r.Run(ctx) }()
	} else {
		go func() { rg.stopped <- mem.Subscribe(ctx, "bench", h, so) }()
	}
	return rg
}

// Close stops the subscription and the broker.
func (rg *Rig) Close() {
	rg.cancel()
	<-rg.stopped
	_ = rg.mem.Close()
}

// Stats are one round's figures per message.
type Stats struct{ Wall, CPU, Allocs float64 }

// Run collects garbage, publishes one message per id from the rig's
// publishers and waits (at most a minute) until the handler saw them all.
// Allocations are the whole process's (runtime.MemStats.Mallocs).
func (rg *Rig) Run(tb testing.TB, ids []string) Stats {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	mallocs := ms.Mallocs
	rg.target.Store(rg.handled.Load() + int64(len(ids)))
	cpu := CPUTime()
	start := time.Now()
	var wg sync.WaitGroup
	for p := range rg.o.Publishers {
		wg.Go(func() {
			for i := p; i < len(ids); i += rg.o.Publishers {
				m := &message.Message{ID: ids[i], Payload: rg.payload}
				if rg.o.Headers {
					m.Headers = message.Header{message.HeaderContentType: "application/octet-stream"}
				}
				if err := rg.mem.Publish(context.Background(), "bench", m); err != nil {
					tb.Error(err)
					return
				}
			}
		})
	}
	wg.Wait()
	select {
	case <-rg.signal:
	case <-time.After(time.Minute):
		tb.Fatalf("handled %d of %d", rg.handled.Load(), rg.target.Load())
	}
	wall := time.Since(start)
	cpuUsed := CPUTime() - cpu
	runtime.ReadMemStats(&ms)
	n := float64(len(ids))
	return Stats{Wall: float64(wall) / n, CPU: float64(cpuUsed) / n, Allocs: float64(ms.Mallocs-mallocs) / n}
}

// IDs are n message IDs unique to a round.
func IDs(round, n int) []string {
	ids := make([]string, n)
	for i := range ids {
		ids[i] = fmt.Sprintf("r%d-%d", round, i)
	}
	return ids
}

// CPUTime is the process's user plus system CPU time so far: on a shared
// machine wall time per message also counts waiting for a core, CPU time
// does not (it includes GC and background goroutines, part of the cost).
func CPUTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// Median of xs (0 for none).
func Median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// LoadAvg is "load average" and the first three fields of /proc/loadavg,
// for benchmark logs.
func LoadAvg() string {
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

// Paired runs rounds rounds of b.N messages through a rig of base and a
// rig of cand, alternating which goes first (base in even rounds), and
// calls each with both variants' figures after every round.
//
// Each round starts both rigs afresh and warms each with a short run
// before measuring, then closes them. Where the scheduler places a rig's
// publisher and consumer goroutines, and how they hand messages over
// (the consumer keeping up or parking and being woken), settles when a rig
// starts and then holds for its life; it moves a rig's cost per message by
// up to ±15 % at Concurrency 1, more than the router's whole cost. With
// rigs kept for the whole run, every round repeats the same placement and
// the median reports one draw of it; fresh rigs per round make the median
// one over as many draws as rounds.
func Paired(b *testing.B, rounds int, base, cand Options, each func(round int, baseFirst bool, x, y Stats)) {
	rnd := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	for round := range rounds {
		ids, warm := IDs(round, b.N), IDs(-1-round, min(b.N, 20000))
		// Shift the heap by a random amount and pick the creation order at
		// random, so the rigs' objects land at new places every round.
		ballast := make([][]byte, 0, 64)
		for range rnd.IntN(64) {
			ballast = append(ballast, make([]byte, 16*(1+rnd.IntN(64))))
		}
		var rb, rc *Rig
		if rnd.IntN(2) == 0 {
			rb = New(b, base)
			rc = New(b, cand)
		} else {
			rc = New(b, cand)
			rb = New(b, base)
		}
		rb.Run(b, warm)
		rc.Run(b, warm)
		var x, y Stats
		if round%2 == 0 {
			x = rb.Run(b, ids)
			y = rc.Run(b, ids)
		} else {
			y = rc.Run(b, ids)
			x = rb.Run(b, ids)
		}
		rb.Close()
		rc.Close()
		runtime.KeepAlive(ballast)
		each(round, round%2 == 0, x, y)
	}
}
