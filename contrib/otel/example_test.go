package courierotel_test

import (
	"context"
	"fmt"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	courierotel "github.com/courierkit/courier/contrib/otel"
	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	memtransport "github.com/courierkit/courier/transport/mem"
)

// A traced Conn: the publish makes a producer span, the message carries its
// context in the traceparent header, and the handler runs in a consumer
// span that continues the trace.
func Example() {
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	defer tp.Shutdown(context.Background())
	inst, _ := courierotel.New(courierotel.Options{TracerProvider: tp})

	raw, _ := memtransport.New(context.Background(), memtransport.Options{})
	conn := inst.Conn(raw)
	defer conn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	_ = conn.Declare(ctx, "orders", transport.SubscribeOptions{Group: "billing"})

	handled := make(chan string, 1)
	go conn.Subscribe(ctx, "orders", message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		handled <- m.Header(message.HeaderTraceParent)
		return nil
	}), transport.SubscribeOptions{Group: "billing"})

	_ = conn.Publish(ctx, "orders", message.New([]byte(`{"id":1}`)))
	traceparent := <-handled
	fmt.Println("traceparent:", len(traceparent) == 55)

	// The process span ends just after the handler returns.
	deadline := time.Now().Add(5 * time.Second)
	for len(rec.Ended()) < 2 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	var send, process sdktrace.ReadOnlySpan
	for _, s := range rec.Ended() {
		switch s.Name() {
		case "send orders":
			send = s
		case "process orders":
			process = s
		}
	}
	fmt.Println(send.Name(), send.SpanKind())
	fmt.Println(process.Name(), process.SpanKind())
	fmt.Println("same trace:", process.SpanContext().TraceID() == send.SpanContext().TraceID())
	fmt.Println("child of send:", process.Parent().SpanID() == send.SpanContext().SpanID())
	// Output:
	// traceparent: true
	// send orders producer
	// process orders consumer
	// same trace: true
	// child of send: true
}

// Consumer lag as a gauge, polled at each collection from a transport that
// implements transport.LagReporter.
func ExampleInstrumentation_ObserveLag() {
	inst, _ := courierotel.New(courierotel.Options{})
	conn, _ := memtransport.New(context.Background(), memtransport.Options{})
	defer conn.Close()
	_ = conn.Declare(context.Background(), "orders", transport.SubscribeOptions{Group: "billing"})
	_ = conn.Declare(context.Background(), "orders.dlq", transport.SubscribeOptions{Group: "ops"})

	reg, err := inst.ObserveLag(conn, courierotel.LagOptions{},
		courierotel.LagTarget{Topic: "orders", Group: "billing"},
		courierotel.LagTarget{Topic: "orders.dlq", Group: "ops", DeadLetter: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer reg.Unregister()
	fmt.Println("observing")
	// Output: observing
}
