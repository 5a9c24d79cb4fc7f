package courierotel_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	courierotel "github.com/courierkit/courier/contrib/otel"
	"github.com/courierkit/courier/internal/goawstest"
	"github.com/courierkit/courier/internal/testenv"
	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	_ "github.com/courierkit/courier/transport/sqs"
)

// goaws keeps its state in package globals: one emulator per test binary,
// started by the first test that asks and stopped by TestMain.
var (
	goawsOnce sync.Once
	goawsSrv  *goawstest.Server
	goawsStop func()
	goawsErr  error
)

func stopGoaws() {
	if goawsStop != nil {
		goawsStop()
	}
}

// snsURL returns a URL for scheme (sns or sqs) on $COURIER_SQS_ENDPOINT or
// on the in-process goaws.
func snsURL(t testing.TB, scheme string) string {
	t.Helper()
	inProcess := ""
	if os.Getenv(testenv.SQSEnvVar) == "" {
		goawsOnce.Do(func() { goawsSrv, goawsStop, goawsErr = goawstest.Start() })
		if goawsErr != nil {
			t.Fatalf("goaws: %v", goawsErr)
		}
		inProcess = goawsSrv.Endpoint()
	}
	endpoint := testenv.SQS(t, inProcess)
	host := strings.TrimPrefix(strings.TrimPrefix(endpoint, "http://"), "https://")
	q := "region=us-east-1&wait_time=1s"
	if inProcess != "" {
		q += "&goaws=true"
	}
	return scheme + "://test:test@" + host + "/?" + q
}

// One order through three services is one trace on SNS (fan-out to group
// queues) and on SQS (point to point): W3C trace context travels in the
// attribute the adapter packs headers into, so SQS's 10 message
// attributes do not limit it.
func TestTraceAcrossThreeServicesSQS(t *testing.T) {
	for _, scheme := range []string{"sns", "sqs"} {
		t.Run(scheme, func(t *testing.T) {
			url := snsURL(t, scheme)
			orders, payments := unique("otel-orders"), unique("otel-payments")
			cleanupSQS(t, url, orders, payments)
			r := runChain(t, "aws_sqs", openURL(url), orders, payments)
			checkChain(t, "aws_sqs", r, orders, payments)
		})
	}
}

// A message with more headers than SQS has message attributes still
// carries its trace context and every header: the producer's trace
// continues in the consumer, nothing is dropped, no
// courier.trace_context_dropped event.
func TestTraceContextWithManyHeadersSQS(t *testing.T) {
	for _, scheme := range []string{"sns", "sqs"} {
		t.Run(scheme, func(t *testing.T) {
			url := snsURL(t, scheme)
			topic := unique("otel-many")
			cleanupSQS(t, url, topic)
			sr := tracetest.NewSpanRecorder()
			instP, _ := newInst(t, sr, courierotel.Options{})
			instC, _ := newInst(t, sr, courierotel.Options{})
			pub := instP.Conn(openURL(url)(t))
			sub := instC.Conn(openURL(url)(t))
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			o := transport.SubscribeOptions{Group: "g"}
			if err := sub.Declare(ctx, topic, o); err != nil {
				t.Fatal(err)
			}
			got := make(chan *message.Message, 1)
			subscribe(t, sub, topic, message.HandlerFunc(func(_ context.Context, m *message.Message) error {
				select {
				case got <- m:
				default:
				}
				return nil
			}), o)

			m := message.New([]byte("many"))
			m.Headers = message.Header{}
			for i := range 14 {
				m.Headers[fmt.Sprintf("x-h%02d", i)] = fmt.Sprintf("v%d", i)
			}
			// An upstream caller's context with a tracestate, so both W3C
			// headers must travel.
			ts, err := trace.ParseTraceState("vendor=abc123")
			if err != nil {
				t.Fatal(err)
			}
			up := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1, 2, 3}, SpanID: trace.SpanID{4, 5, 6},
				TraceFlags: trace.FlagsSampled, TraceState: ts, Remote: true})
			pctx, root := instP.Tracer().Start(trace.ContextWithRemoteSpanContext(ctx, up), "request", trace.WithSpanKind(trace.SpanKindServer))
			if err := pub.Publish(pctx, topic, m); err != nil {
				t.Fatal(err)
			}
			root.End()
			var r *message.Message
			select {
			case r = <-got:
			case <-ctx.Done():
				t.Fatal("timed out waiting for the message")
			}
			for k, v := range m.Headers {
				if r.Headers[k] != v {
					t.Errorf("header %s = %q, want %q", k, r.Headers[k], v)
				}
			}
			if !strings.Contains(r.Headers[message.HeaderTraceParent], root.SpanContext().TraceID().String()) {
				t.Fatalf("traceparent %q, want one in trace %s", r.Headers[message.HeaderTraceParent], root.SpanContext().TraceID())
			}
			if got := r.Headers[message.HeaderTraceState]; got != "vendor=abc123" {
				t.Errorf("tracestate %q, want vendor=abc123", got)
			}
			spans := waitSpans(t, sr, 10*time.Second, "send and process spans", func(s []sdktrace.ReadOnlySpan) bool {
				return countNamed(s, "send "+topic, "process "+topic)
			})
			send, proc := findSpan(spans, "send "+topic), findSpan(spans, "process "+topic)
			wantChild(t, send, findSpan(spans, "request"))
			wantChild(t, proc, send)
			if _, ok := hasEvent(send, courierotel.EventTraceContextDropped); ok {
				t.Error("trace context was dropped")
			}
		})
	}
}
