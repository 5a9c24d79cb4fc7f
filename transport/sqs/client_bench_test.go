package sqstransport_test

import (
	"context"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sqs"

	"github.com/courierkit/courier/message"
	sqstransport "github.com/courierkit/courier/transport/sqs"
)

// stubHTTP answers every request at once with an empty JSON document,
// which SendMessageBatch reads as goaws's answer (no entry listed): the
// client's own cost, with no broker behind it.
type stubHTTP struct{}

func (stubHTTP) Do(r *http.Request) (*http.Response, error) {
	if r.Body != nil {
		_, _ = io.Copy(io.Discard, r.Body)
		_ = r.Body.Close()
	}
	return &http.Response{
		StatusCode: http.StatusOK, Status: "200 OK", Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header:        http.Header{"Content-Type": {"application/x-amz-json-1.0"}},
		Body:          io.NopCloser(strings.NewReader("{}")),
		ContentLength: 2, Request: r,
	}, nil
}

func stubConfig() *aws.Config {
	return &aws.Config{
		Region:      "us-east-1",
		Credentials: credentials.NewStaticCredentialsProvider("test", "test", ""),
		HTTPClient:  stubHTTP{},
	}
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
		c := sqs.NewFromConfig(*stubConfig(), func(o *sqs.Options) { o.BaseEndpoint = aws.String("http://127.0.0.1:1") })
		b.ReportAllocs()
		for b.Loop() {
			rawSend(b, c, qu, body, 10, false)
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(10*b.N), "ns/msg")
	})
	b.Run("raw-id", func(b *testing.B) {
		c := sqs.NewFromConfig(*stubConfig(), func(o *sqs.Options) { o.BaseEndpoint = aws.String("http://127.0.0.1:1") })
		b.ReportAllocs()
		for b.Loop() {
			rawSend(b, c, qu, body, 10, true)
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(10*b.N), "ns/msg")
	})
	b.Run("adapter", func(b *testing.B) {
		tr, err := sqstransport.New(context.Background(), sqstransport.Options{Mode: sqstransport.ModeSQS, Config: stubConfig(), Endpoint: "http://127.0.0.1:1", Goaws: true})
		if err != nil {
			b.Fatal(err)
		}
		defer tr.Close()
		// The queue's URL, once: CreateQueue's answer is the stub's too.
		batch := make([]*message.Message, 10)
		b.ReportAllocs()
		for b.Loop() {
			for j := range batch {
				batch[j] = &message.Message{Payload: payload}
			}
			if err := tr.Publish(context.Background(), "stub", batch...); err != nil {
				b.Fatal(err)
			}
		}
		b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(10*b.N), "ns/msg")
	})
}
