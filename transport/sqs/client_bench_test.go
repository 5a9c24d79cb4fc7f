package sqstransport_test

import (
	"bytes"
	"context"
	"crypto/md5"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sqs"

	"github.com/courierkit/courier/message"
	sqstransport "github.com/courierkit/courier/transport/sqs"
)

// stubHTTP answers every request at once with an empty JSON document,
// which SendMessageBatch reads as goaws's answer (no entry listed): the
// client's own cost, with no broker behind it. With a queue (stubQueue) it
// answers ReceiveMessage from a backlog of prepared messages instead.
type stubHTTP struct{ q *stubQueue }

// stubQueue is a backlog of left messages, handed out 10 at a time (all
// alike, in courier's format); an empty one holds ReceiveMessage until the
// request is cancelled, as a long poll would.
type stubQueue struct {
	left atomic.Int64
	ten  []byte // a ReceiveMessage answer of 10 messages
}

func newStubQueue() *stubQueue {
	body := string(benchBody())
	sum := md5.Sum([]byte(body))
	var msgs []string
	for i := range 10 {
		msgs = append(msgs, fmt.Sprintf(`{"MessageId":"m%d","ReceiptHandle":"r%d","Body":%q,"MD5OfBody":"%x",`+
			`"Attributes":{"SentTimestamp":"1795000000000","ApproximateReceiveCount":"1"},`+
			`"MessageAttributes":{"courier":{"DataType":"String","StringValue":%q}}}`,
			i, i, body, sum, `{"v":1,"id":"`+message.NewID()+`"}`))
	}
	return &stubQueue{ten: []byte(`{"Messages":[` + strings.Join(msgs, ",") + `]}`)}
}

func (s stubHTTP) Do(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		_, _ = io.Copy(io.Discard, r.Body)
		_ = r.Body.Close()
	}
	answer := []byte("{}")
	switch r.Header.Get("X-Amz-Target") {
	case "AmazonSQS.CreateQueue":
		answer = []byte(`{"QueueUrl":"http://127.0.0.1:1/000000000000/stub"}`)
	case "AmazonSQS.ReceiveMessage":
		if s.q != nil {
			if s.q.left.Add(-10) < 0 {
				s.q.left.Add(10)
				<-r.Context().Done()
				return nil, r.Context().Err()
			}
			answer = s.q.ten
		}
	}
	return &http.Response{
		StatusCode: http.StatusOK, Status: "200 OK", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:        http.Header{"Content-Type": {"application/x-amz-json-1.0"}},
		Body:          io.NopCloser(bytes.NewReader(answer)),
		ContentLength: int64(len(answer)), Request: r,
	}, nil
}

func stubConfig(q *stubQueue) *aws.Config {
	return &aws.Config{
		Region:      "us-east-1",
		Credentials: credentials.NewStaticCredentialsProvider("test", "test", ""),
		HTTPClient:  stubHTTP{q},
	}
}

// BenchmarkDrainClient is the client's side of BenchmarkDrain alone:
// b.N messages (rounded up to tens) received 10 at a time from a stub HTTP
// client and deleted in batches, by benchWorkers raw loops ("raw-id",
// asking for every attribute) or by a subscription as in BenchmarkDrain.
// It is the adapter's own cost per received message, free of the
// emulator's:
//
//	go test -run '^$' -bench DrainClient -benchmem -count 6 ./transport/sqs
func BenchmarkDrainClient(b *testing.B) {
	b.Run("raw-id", func(b *testing.B) {
		q := newStubQueue()
		c := sqs.NewFromConfig(*stubConfig(q), func(o *sqs.Options) { o.BaseEndpoint = aws.String("http://127.0.0.1:1") })
		n := (b.N + 9) / 10 * 10
		q.left.Store(int64(n))
		b.ReportAllocs()
		b.ResetTimer()
		c0 := processCPU()
		rawDrain(b, c, "http://127.0.0.1:1/000000000000/stub", n, true)
		reportCPU(b, c0, n)
	})
	b.Run("adapter", func(b *testing.B) {
		q := newStubQueue()
		tr, err := sqstransport.New(context.Background(), sqstransport.Options{Mode: sqstransport.ModeSQS, Config: stubConfig(q), Endpoint: "http://127.0.0.1:1", Goaws: true, Receivers: benchWorkers})
		if err != nil {
			b.Fatal(err)
		}
		defer tr.Close()
		n := (b.N + 9) / 10 * 10
		q.left.Store(int64(n))
		b.ReportAllocs()
		b.ResetTimer()
		c0 := processCPU()
		adapterDrain(b, tr, "stub", n)
		reportCPU(b, c0, n)
	})
}

// BenchmarkPublishClient is the client's side of BenchmarkPublish alone:
// batches of 10 through the SDK into a stub HTTP client, raw
// SendMessageBatch with the ID attribute ("raw-id") against Publish. It is
// the adapter's own cost per message, free of the emulator's noise:
//
//	go test -run '^$' -bench PublishClient -benchmem -count 6 ./transport/sqs
func BenchmarkPublishClient(b *testing.B) {
	payload := benchBody()
	body := string(payload)
	const qu = "http://127.0.0.1:1/000000000000/stub"
	b.Run("raw", func(b *testing.B) {
		c := sqs.NewFromConfig(*stubConfig(nil), func(o *sqs.Options) { o.BaseEndpoint = aws.String("http://127.0.0.1:1") })
		b.ReportAllocs()
		c0 := processCPU()
		for b.Loop() {
			rawSend(b, c, qu, body, 10, false)
		}
		reportCPU(b, c0, 10*b.N)
	})
	b.Run("raw-id", func(b *testing.B) {
		c := sqs.NewFromConfig(*stubConfig(nil), func(o *sqs.Options) { o.BaseEndpoint = aws.String("http://127.0.0.1:1") })
		b.ReportAllocs()
		c0 := processCPU()
		for b.Loop() {
			rawSend(b, c, qu, body, 10, true)
		}
		reportCPU(b, c0, 10*b.N)
	})
	b.Run("adapter", func(b *testing.B) {
		tr, err := sqstransport.New(context.Background(), sqstransport.Options{Mode: sqstransport.ModeSQS, Config: stubConfig(nil), Endpoint: "http://127.0.0.1:1", Goaws: true})
		if err != nil {
			b.Fatal(err)
		}
		defer tr.Close()
		// The queue's URL, once: CreateQueue's answer is the stub's too.
		batch := make([]*message.Message, 10)
		b.ReportAllocs()
		c0 := processCPU()
		for b.Loop() {
			for j := range batch {
				batch[j] = &message.Message{Payload: payload}
			}
			if err := tr.Publish(context.Background(), "stub", batch...); err != nil {
				b.Fatal(err)
			}
		}
		reportCPU(b, c0, 10*b.N)
	})
}

// reportCPU reports the process CPU time per message since c0 (cpu-ns/msg)
// and the wall-clock time per message (ns/msg).
func reportCPU(b *testing.B, c0 time.Duration, msgs int) {
	b.ReportMetric(float64((processCPU()-c0).Nanoseconds())/float64(msgs), "cpu-ns/msg")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(msgs), "ns/msg")
}
