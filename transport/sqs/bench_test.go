package sqstransport_test

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

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/courierkit/courier/conformance"
	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	sqstransport "github.com/courierkit/courier/transport/sqs"
)

// The raw SDK and the adapter side by side, on the same emulator, the same
// payload (benchPayload bytes) and the same batching, in one run:
//
//	go test -run '^$' -bench 'Publish$' -benchtime 81000x ./transport/sqs
//	go test -run '^$' -bench 'Drain$' -benchtime 60000x ./transport/sqs
//
// b.N is the number of messages each side handles, in rounds of
// publishRound or drainRound messages per side (9 and 10 rounds above).
// Within a round the sides take turns, the order rotating from turn to
// turn so that each side goes first, second and third equally often and
// load from elsewhere on the machine falls on every side alike: publish
// turns of 1000 messages; drain turns of 2000, each side's backlog
// filled beforehand. Before every turn, with the clock stopped, the
// garbage is collected, so that no side pays for another's. Each round
// logs every side's msg/s, its process CPU per message and the adapter's
// ratios; the metrics are the medians over the rounds (adapter-% is the
// median of the per-round ratios adapter/raw, not a ratio of medians).
// The process CPU (cpu-ns/msg) counts the client, goaws (in process) and
// the garbage collector together; adapter-%-by-cpu is raw's CPU per
// message over the adapter's: the share of raw's throughput the adapter's
// cost allows when the machine is the limit. It moves less with load from
// other processes than the wall-clock figures do.
const (
	benchPayload = 256
	benchWorkers = 4
	publishRound = 9000 // in turns of publishTurn
	publishTurn  = 1000
	drainRound   = 6000 // in three turns per side
)

// pairing collects the wall-clock and process CPU time of each side in each
// round of a side-by-side benchmark. Side 0 is the raw baseline,
// the last side the adapter.
type pairing struct {
	sides []string
	msgs  []int             // messages per side, per round
	wall  [][]time.Duration // [round][side]
	cpu   [][]time.Duration
}

// newPairing splits n messages per side into rounds of about per
// messages (at least one round).
func newPairing(n, per int, sides ...string) *pairing {
	rounds := max(1, n/per)
	p := &pairing{sides: sides}
	for r := range rounds {
		p.msgs = append(p.msgs, n/rounds+btoi(r < n%rounds))
		p.wall = append(p.wall, make([]time.Duration, len(sides)))
		p.cpu = append(p.cpu, make([]time.Duration, len(sides)))
	}
	return p
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

// turn runs f as side s in round r, adding up its wall-clock and CPU time.
func (p *pairing) turn(r, s int, f func()) {
	c0, t0 := processCPU(), time.Now()
	f()
	p.wall[r][s] += time.Since(t0)
	p.cpu[r][s] += processCPU() - c0
}

// order is the sequence of sides for turn k: a rotation, so that no side
// always follows the same one.
func (p *pairing) order(k int) []int {
	o := make([]int, len(p.sides))
	for i := range o {
		o[i] = (k + i) % len(o)
	}
	return o
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// report logs every round's figures and reports the medians. testing
// keeps ten lines of a benchmark's log, so each line is one figure over
// all rounds, in round order.
func (p *pairing) report(b *testing.B) {
	ad := len(p.sides) - 1
	rate := make([][]float64, len(p.sides)) // [side][round]
	cpu := make([][]float64, len(p.sides))
	ratio := make([][]float64, ad) // adapter/side, [side][round]
	cpuRatio := make([][]float64, ad)
	for r := range p.msgs {
		n := float64(p.msgs[r])
		for s := range p.sides {
			rate[s] = append(rate[s], n/p.wall[r][s].Seconds())
			cpu[s] = append(cpu[s], float64(p.cpu[r][s].Nanoseconds())/n)
		}
		for s := range ad {
			ratio[s] = append(ratio[s], 100*rate[ad][r]/rate[s][r])
			cpuRatio[s] = append(cpuRatio[s], 100*cpu[s][r]/cpu[ad][r])
		}
	}
	line := func(name, format string, xs []float64) {
		if len(xs) < 2 {
			return // testing's first call, b.N = 1
		}
		var sb strings.Builder
		fmt.Fprintf(&sb, "%-26s median %s, rounds:", name, fmt.Sprintf(format, median(xs)))
		for _, x := range xs {
			sb.WriteString(" " + fmt.Sprintf(format, x))
		}
		b.Log(sb.String())
	}
	for s := range ad {
		line("adapter/"+p.sides[s]+" %", "%.1f", ratio[s])
		line("adapter/"+p.sides[s]+" % by cpu", "%.1f", cpuRatio[s])
	}
	for s, name := range p.sides {
		line(name+" msg/s", "%.0f", rate[s])
	}
	for s, name := range p.sides {
		b.ReportMetric(median(rate[s]), name+"-msg/s")
		b.ReportMetric(median(cpu[s]), name+"-cpu-ns/msg")
	}
	for s := range ad {
		suffix := ""
		if s > 0 {
			suffix = "-of-" + p.sides[s]
		}
		b.ReportMetric(median(ratio[s]), "adapter-%"+suffix)
		b.ReportMetric(median(cpuRatio[s]), "adapter-%-by-cpu"+suffix)
	}
	if len(p.msgs) > 1 {
		b.Logf("%d rounds of %d messages per side; load average at the end: %s", len(p.msgs), p.msgs[0], loadAverage())
	}
}

// loadAverage is /proc/loadavg's first three fields, or "unknown".
func loadAverage() string {
	raw, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(raw)); err == nil && len(f) >= 3 {
		return strings.Join(f[:3], " ")
	}
	return "unknown"
}

func benchQueue(b *testing.B, tr *sqstransport.Transport, topic string) (*sqs.Client, string) {
	var c *sqs.Client
	tr.As(&c)
	out, err := c.CreateQueue(context.Background(), &sqs.CreateQueueInput{QueueName: aws.String(topic)})
	if err != nil {
		b.Fatal(err)
	}
	// Delete the queue afterwards: goaws's periodic task walks every
	// message of every queue under one lock, so leftovers would slow the
	// runs that follow and skew the comparison.
	b.Cleanup(func() {
		_, _ = c.DeleteQueue(context.Background(), &sqs.DeleteQueueInput{QueueUrl: out.QueueUrl})
	})
	return c, *out.QueueUrl
}

func purge(b *testing.B, c *sqs.Client, queues ...string) {
	for _, qu := range queues {
		if _, err := c.PurgeQueue(context.Background(), &sqs.PurgeQueueInput{QueueUrl: aws.String(qu)}); err != nil {
			b.Fatal(err)
		}
	}
}

func benchBody() []byte {
	payload := make([]byte, benchPayload)
	for i := range payload {
		payload[i] = 'a' + byte(i%26)
	}
	return payload
}

// rawSend sends n messages of body to queue with SendMessageBatch, 10 per
// call; withID adds the message ID as a String attribute, the least a
// transport that keeps IDs must send.
func rawSend(b *testing.B, c *sqs.Client, queue, body string, n int, withID bool) {
	for k := 0; k < n; k += 10 {
		m := min(10, n-k)
		in := &sqs.SendMessageBatchInput{QueueUrl: aws.String(queue), Entries: make([]sqstypes.SendMessageBatchRequestEntry, m)}
		for j := range m {
			e := sqstypes.SendMessageBatchRequestEntry{Id: aws.String(strconv.Itoa(j)), MessageBody: aws.String(body)}
			if withID {
				e.MessageAttributes = map[string]sqstypes.MessageAttributeValue{
					"id": {DataType: aws.String("String"), StringValue: aws.String(message.NewID())},
				}
			}
			in.Entries[j] = e
		}
		if _, err := c.SendMessageBatch(context.Background(), in); err != nil {
			b.Fatal(err)
		}
	}
}

// adapterSend publishes n new messages of payload, 10 per Publish.
func adapterSend(b *testing.B, tr *sqstransport.Transport, topic string, payload []byte, n int) {
	batch := make([]*message.Message, 10)
	for k := 0; k < n; k += 10 {
		m := min(10, n-k)
		for j := range m {
			batch[j] = &message.Message{Payload: payload}
		}
		if err := tr.Publish(context.Background(), topic, batch[:m]...); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPublish compares Publish of 10 messages with SendMessageBatch
// of 10 entries with the same bodies: "raw" sends the bodies alone (the
// issue's baseline), "raw-id" adds the message ID in one attribute. Each
// side publishes from one goroutine to a queue of its own; the queues are
// purged between rounds (clock stopped), so every round starts alike.
func BenchmarkPublish(b *testing.B) {
	payload := benchBody()
	body := string(payload)
	rawTr := open(b, sqstransport.ModeSQS, sqstransport.Options{})
	c, quRaw := benchQueue(b, rawTr, name(b))
	_, quID := benchQueue(b, rawTr, name(b))
	tr := open(b, sqstransport.ModeSQS, sqstransport.Options{})
	topic := name(b)
	_, quAdapter := benchQueue(b, tr, topic)
	p := newPairing(b.N, publishRound, "raw", "raw-id", "adapter")
	b.ResetTimer()
	for r, n := range p.msgs {
		for k := 0; k*publishTurn < n; k++ {
			m := min(publishTurn, n-k*publishTurn)
			for _, s := range p.order(k) {
				settle(b)
				p.turn(r, s, func() {
					switch s {
					case 0:
						rawSend(b, c, quRaw, body, m, false)
					case 1:
						rawSend(b, c, quID, body, m, true)
					case 2:
						adapterSend(b, tr, topic, payload, m)
					}
				})
			}
		}
		b.StopTimer()
		purge(b, c, quRaw, quID, quAdapter)
		b.StartTimer()
	}
	b.StopTimer()
	p.report(b)
}

// settle collects the garbage of the turns before, with the clock
// stopped, so that a turn pays for the collections its own allocations
// cause and not for another side's.
func settle(b *testing.B) {
	b.StopTimer()
	runtime.GC()
	b.StartTimer()
}

// BenchmarkDrain compares a subscription emptying a backlog with
// benchWorkers loops of ReceiveMessage (10) + DeleteMessageBatch: "raw"
// drains bodies sent without attributes and asks for none (the issue's
// baseline), "raw-id" drains bodies sent with the ID attribute and asks
// for every message and system attribute, as the adapter does. A round is
// three turns per side, each side first, second and third once; before
// each turn (clock stopped) the side's queue is emptied and filled with a
// third of the round's messages. The clock stops when every message is
// handled and deleted.
func BenchmarkDrain(b *testing.B) {
	payload := benchBody()
	body := string(payload)
	rawTr := open(b, sqstransport.ModeSQS, sqstransport.Options{})
	c, quRaw := benchQueue(b, rawTr, name(b))
	_, quID := benchQueue(b, rawTr, name(b))
	tr := open(b, sqstransport.ModeSQS, sqstransport.Options{Receivers: benchWorkers})
	topic := name(b)
	_, quAdapter := benchQueue(b, tr, topic)
	p := newPairing(b.N, drainRound, "raw", "raw-id", "adapter")
	queues := []string{quRaw, quID, quAdapter}
	b.ResetTimer()
	for r, n := range p.msgs {
		for k := range 3 {
			m := n/3 + btoi(k < n%3)
			if m == 0 {
				continue // testing's first call, b.N = 1
			}
			for _, s := range p.order(k) {
				b.StopTimer()
				// Every turn starts alike: the emulator done with the long
				// polls the turn before cancelled (one still running could
				// take messages of this turn and hide them for the
				// visibility timeout), only this side's queue filled, the
				// garbage collected.
				if emu != nil {
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
					err := emu.WaitIdle(ctx)
					cancel()
					if err != nil {
						b.Fatalf("goaws still busy in round %d: %v", r, err)
					}
				}
				purge(b, c, queues[s])
				switch s {
				case 0:
					rawSend(b, c, quRaw, body, m, false)
				case 1:
					rawSend(b, c, quID, body, m, true)
				case 2:
					adapterSend(b, tr, topic, payload, m)
				}
				settle(b)
				p.turn(r, s, func() {
					switch s {
					case 0:
						rawDrain(b, c, quRaw, m, false)
					case 1:
						rawDrain(b, c, quID, m, true)
					case 2:
						adapterDrain(b, tr, topic, m)
					}
				})
			}
		}
	}
	b.StopTimer()
	p.report(b)
}

// rawDrain empties n messages with benchWorkers loops of ReceiveMessage
// and DeleteMessageBatch; attrs asks for every message and system
// attribute.
func rawDrain(b *testing.B, c *sqs.Client, qu string, n int, attrs bool) {
	var got atomic.Int64
	var wg sync.WaitGroup
	// Like the adapter's receivers, the loops stop as soon as all is in:
	// a long poll still waiting then is cancelled.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for range benchWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for got.Load() < int64(n) {
				in := &sqs.ReceiveMessageInput{QueueUrl: aws.String(qu), MaxNumberOfMessages: 10, WaitTimeSeconds: 1, VisibilityTimeout: 30}
				if attrs {
					in.MessageAttributeNames = []string{"All"}
					in.MessageSystemAttributeNames = []sqstypes.MessageSystemAttributeName{sqstypes.MessageSystemAttributeNameAll}
				}
				out, err := c.ReceiveMessage(ctx, in)
				if err != nil {
					if ctx.Err() == nil {
						b.Error(err)
					}
					return
				}
				if len(out.Messages) == 0 {
					continue
				}
				del := &sqs.DeleteMessageBatchInput{QueueUrl: aws.String(qu)}
				for i, m := range out.Messages {
					del.Entries = append(del.Entries, sqstypes.DeleteMessageBatchRequestEntry{Id: aws.String(strconv.Itoa(i)), ReceiptHandle: m.ReceiptHandle})
				}
				if _, err := c.DeleteMessageBatch(context.Background(), del); err != nil {
					b.Error(err)
					return
				}
				if got.Add(int64(len(out.Messages))) >= int64(n) {
					cancel()
				}
			}
		}()
	}
	wg.Wait()
}

// adapterDrain empties n messages with a subscription of benchWorkers
// receivers and handlers, and returns once its deletes landed.
func adapterDrain(b *testing.B, tr *sqstransport.Transport, topic string, n int) {
	var got atomic.Int64
	done := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	subDone := make(chan error, 1)
	go func() {
		subDone <- tr.Subscribe(ctx, topic, message.HandlerFunc(func(context.Context, *message.Message) error {
			if got.Add(1) == int64(n) {
				close(done)
			}
			return nil
		}), transport.SubscribeOptions{Concurrency: benchWorkers, MaxInFlight: 10 * benchWorkers})
	}()
	select {
	case <-done:
	case err := <-subDone:
		b.Fatalf("Subscribe: %v", err)
	case <-time.After(2 * time.Minute):
		b.Fatalf("handled %d of %d", got.Load(), n)
	}
	cancel() // Subscribe returns once the last deletes landed
	<-subDone
}

// BenchmarkEndToEnd is the figure every transport reports (conformance.Bench):
// publish → handler → ack through sns://.
func BenchmarkEndToEnd(b *testing.B) {
	conformance.Bench(b, harness(b, sqstransport.ModeSNS), conformance.BenchOptions{Publishers: 4, Batch: 10, Concurrency: 4})
}
