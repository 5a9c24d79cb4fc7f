package sqstransport_test

import (
	"context"
	"strconv"
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
// payload (benchPayload bytes) and the same batching:
//
//	go test -run '^$' -bench . -benchtime 2000x ./transport/sqs
//
// Publish: one goroutine sending batches of 10 (SendMessageBatch vs
// Publish with 10 messages). Drain: a queue holding b.N messages emptied by
// benchWorkers loops (ReceiveMessage of 10 + DeleteMessageBatch vs a
// subscription with as many receivers and handlers); the clock stops when
// every message is handled and deleted.
const (
	benchPayload = 256
	benchWorkers = 4
)

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

// side measures the raw SDK and the adapter in alternating chunks, so that
// load from elsewhere on the machine falls on both alike, and reports each
// one's msg/s and the adapter's share of the raw figure.
type side struct {
	raw, adapter, bare time.Duration
}

func (sd *side) report(b *testing.B, n int) {
	r := float64(n) / sd.raw.Seconds()
	a := float64(n) / sd.adapter.Seconds()
	b.ReportMetric(r, "raw-msg/s")
	b.ReportMetric(a, "adapter-msg/s")
	b.ReportMetric(100*a/r, "adapter-%")
	if sd.bare > 0 {
		bare := float64(n) / sd.bare.Seconds()
		b.ReportMetric(bare, "raw-bare-msg/s")
		b.ReportMetric(100*a/bare, "adapter-%-of-bare")
	}
}

// round runs fs (raw, adapter[, raw bare]) in an order that rotates with i.
func (sd *side) round(i int, fs ...func()) {
	into := []*time.Duration{&sd.raw, &sd.adapter, &sd.bare}
	for k := range fs {
		j := (i + k) % len(fs)
		t0 := time.Now()
		fs[j]()
		*into[j] += time.Since(t0)
	}
}

// BenchmarkPublish compares Publish of 10 messages with SendMessageBatch
// of 10 entries carrying the same body and, as courier must, the message
// ID in a message attribute ("raw"); "raw-bare" sends the bodies alone.
func BenchmarkPublish(b *testing.B) {
	payload := make([]byte, benchPayload)
	for i := range payload {
		payload[i] = 'a' + byte(i%26)
	}
	body := string(payload)
	rawTr := open(b, sqstransport.ModeSQS, sqstransport.Options{})
	c, qu := benchQueue(b, rawTr, name(b))
	_, quBare := benchQueue(b, rawTr, name(b))
	tr := open(b, sqstransport.ModeSQS, sqstransport.Options{})
	topic := name(b)
	benchQueue(b, tr, topic)
	batch := make([]*message.Message, 10)
	const chunk = 100
	var sd side
	rawSend := func(n int, queue string, withID bool) {
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
	b.ResetTimer()
	for i := 0; i*chunk < b.N; i++ {
		n := min(chunk, b.N-i*chunk)
		sd.round(i, func() { rawSend(n, qu, true) }, func() {
			for k := 0; k < n; k += 10 {
				m := min(10, n-k)
				for j := range m {
					batch[j] = &message.Message{Payload: payload}
				}
				if err := tr.Publish(context.Background(), topic, batch[:m]...); err != nil {
					b.Fatal(err)
				}
			}
		}, func() { rawSend(n, quBare, false) })
	}
	b.StopTimer()
	sd.report(b, b.N)
}

// fill puts n messages in the topic's queue through the adapter.
func fill(b *testing.B, tr *sqstransport.Transport, topic string, n int) {
	payload := make([]byte, benchPayload)
	batch := make([]*message.Message, 0, 100)
	for i := 0; i < n; i++ {
		batch = append(batch, &message.Message{ID: "bench", Payload: payload})
		if len(batch) == cap(batch) || i == n-1 {
			if err := tr.Publish(context.Background(), topic, batch...); err != nil {
				b.Fatal(err)
			}
			batch = batch[:0]
		}
	}
}

func BenchmarkDrain(b *testing.B) {
	rawTr := open(b, sqstransport.ModeSQS, sqstransport.Options{})
	rawTopic := name(b)
	c, qu := benchQueue(b, rawTr, rawTopic)
	tr := open(b, sqstransport.ModeSQS, sqstransport.Options{Receivers: benchWorkers})
	topic := name(b)
	benchQueue(b, tr, topic)
	const chunk = 2000
	var sd side
	b.ResetTimer()
	for i := 0; i*chunk < b.N; i++ {
		n := min(chunk, b.N-i*chunk)
		b.StopTimer()
		fill(b, rawTr, rawTopic, n)
		fill(b, tr, topic, n)
		b.StartTimer()
		sd.round(i, func() { rawDrain(b, c, qu, n) }, func() { adapterDrain(b, tr, topic, n) })
	}
	b.StopTimer()
	sd.report(b, b.N)
}

// rawDrain empties n messages with benchWorkers loops of ReceiveMessage
// and DeleteMessageBatch.
func rawDrain(b *testing.B, c *sqs.Client, qu string, n int) {
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
				out, err := c.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{
					QueueUrl: aws.String(qu), MaxNumberOfMessages: 10, WaitTimeSeconds: 1, VisibilityTimeout: 30,
					MessageAttributeNames:       []string{"All"},
					MessageSystemAttributeNames: []sqstypes.MessageSystemAttributeName{sqstypes.MessageSystemAttributeNameAll},
				})
				if err != nil {
					if ctx.Err() == nil {
						b.Error(err)
					}
					return
				}
				if len(out.Messages) == 0 {
					continue
				}
				in := &sqs.DeleteMessageBatchInput{QueueUrl: aws.String(qu)}
				for i, m := range out.Messages {
					in.Entries = append(in.Entries, sqstypes.DeleteMessageBatchRequestEntry{Id: aws.String(strconv.Itoa(i)), ReceiptHandle: m.ReceiptHandle})
				}
				if _, err := c.DeleteMessageBatch(context.Background(), in); err != nil {
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
