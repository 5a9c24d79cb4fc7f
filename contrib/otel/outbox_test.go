package courierotel_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	courierotel "github.com/courierkit/courier/contrib/otel"
	"github.com/courierkit/courier/internal/testenv"
	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/outbox"
	"github.com/courierkit/courier/transport"
	memtransport "github.com/courierkit/courier/transport/mem"
)

// A message written to the outbox inside a traced request carries the
// request's trace context in its stored headers (OutboxHook), and when the
// relay publishes it through a traced Conn, the producer span is a child
// of the request's span and the consumer's process span joins the same
// trace. A message written outside any trace is stored without trace
// context, and the caller's messages are never changed. On PostgreSQL.
func TestOutboxContinuesTheRequestTrace(t *testing.T) {
	url := testenv.Postgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	pg, err := pgx.Connect(ctx, url)
	if err != nil {
		testenv.Unavailable(t, "PostgreSQL: "+err.Error())
	}
	tables := outbox.Tables{Schema: "courier_otel_" + strings.ReplaceAll(message.NewID()[24:], "-", "")}
	if err := outbox.CreateSchema(ctx, outbox.Pgx(pg), outbox.SchemaOptions{Tables: tables, Partitions: 4}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cctx, ccancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer ccancel()
		if _, err := pg.Exec(cctx, "DROP SCHEMA IF EXISTS "+tables.Schema+" CASCADE"); err != nil {
			t.Errorf("drop schema: %v", err)
		}
		_ = pg.Close(cctx)
	})

	sr := tracetest.NewSpanRecorder()
	instW, _ := newInst(t, sr, courierotel.Options{}) // the service writing the outbox
	instR, _ := newInst(t, sr, courierotel.Options{}) // the relay
	instC, _ := newInst(t, sr, courierotel.Options{}) // the consumer
	b := memtransport.NewBroker()
	raw := newMem(t, b, memtransport.Options{})
	ob, err := outbox.New(outbox.Options{Tables: tables, Limits: raw.Capabilities().Limits,
		BeforeWrite: instW.OutboxHook(raw.Capabilities().Limits)})
	if err != nil {
		t.Fatal(err)
	}

	// The consumer, subscribed before anything is published.
	var mu sync.Mutex
	got := map[string]*message.Message{}
	consumer := instC.Conn(newMem(t, b, memtransport.Options{}))
	for _, topic := range []string{"shipments", "invoices"} {
		o := transport.SubscribeOptions{Group: "c"}
		if err := consumer.Declare(ctx, topic, o); err != nil {
			t.Fatal(err)
		}
		subscribe(t, consumer, topic, message.HandlerFunc(func(_ context.Context, m *message.Message) error {
			mu.Lock()
			got[m.ID] = m
			mu.Unlock()
			return nil
		}), o)
	}

	// The request: one message to shipments, two to invoices (the relay
	// may publish these as one batch or two), in one transaction.
	rctx, req := instW.Tracer().Start(ctx, "POST /orders", trace.WithSpanKind(trace.SpanKindServer))
	ship := message.New([]byte("ship"))
	inv1, inv2 := message.New([]byte("inv-1")), message.New([]byte("inv-2"))
	inv1.Headers = message.Header{"x-mine": "kept"}
	tx, err := pg.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := ob.Publish(rctx, outbox.Pgx(tx), "shipments", ship); err != nil {
		t.Fatal(err)
	}
	if err := ob.Publish(rctx, outbox.Pgx(tx), "invoices", inv1, inv2); err != nil {
		t.Fatal(err)
	}
	// Outside any trace: stored as it is.
	plain := message.New([]byte("plain"))
	if err := ob.Publish(ctx, outbox.Pgx(tx), "shipments", plain); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	req.End()
	traceID := req.SpanContext().TraceID()

	for _, m := range []*message.Message{ship, inv1, inv2, plain} {
		if _, ok := m.Headers[message.HeaderTraceParent]; ok {
			t.Errorf("message %s: the caller's headers were changed: %v", m.ID, m.Headers)
		}
	}
	if inv1.Headers["x-mine"] != "kept" || len(inv1.Headers) != 1 {
		t.Errorf("caller's headers changed: %v", inv1.Headers)
	}

	// The stored rows, before the relay runs.
	rows, err := pg.Query(ctx, "SELECT msg_id, coalesce(headers->>'traceparent', '') FROM "+tables.Schema+".courier_outbox")
	if err != nil {
		t.Fatal(err)
	}
	stored := map[string]string{}
	for rows.Next() {
		var id, tp string
		if err := rows.Scan(&id, &tp); err != nil {
			t.Fatal(err)
		}
		stored[id] = tp
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	for _, m := range []*message.Message{ship, inv1, inv2} {
		if tp := stored[m.ID]; !strings.Contains(tp, traceID.String()) {
			t.Errorf("row %s: traceparent %q, want one in trace %s", m.ID, tp, traceID)
		}
	}
	if tp := stored[plain.ID]; tp != "" {
		t.Errorf("row written outside a trace has traceparent %q", tp)
	}

	// The relay, publishing through a traced Conn from a context with no
	// span.
	relay, err := outbox.NewRelay(url, instR.Conn(raw), outbox.RelayOptions{Tables: tables, PollInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	runErr := make(chan error, 1)
	go func() { runErr <- relay.Run(ctx) }()
	defer func() {
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		_ = relay.Shutdown(sctx)
		if err := <-runErr; err != nil && !errors.Is(err, outbox.ErrRelayClosed) {
			t.Errorf("relay Run: %v", err)
		}
	}()

	deadline := time.Now().Add(20 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n == 4 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of 4 messages consumed", n)
		}
		time.Sleep(10 * time.Millisecond)
	}
	spans := waitSpans(t, sr, 10*time.Second, "four process spans", func(s []sdktrace.ReadOnlySpan) bool {
		return countProcess(s, "process shipments") == 2 && countProcess(s, "process invoices") == 2
	})
	byID := map[trace.SpanID]sdktrace.ReadOnlySpan{}
	for _, s := range spans {
		byID[s.SpanContext().SpanID()] = s
	}
	reqSpan := findSpan(spans, "POST /orders")
	for _, s := range spans {
		if s.SpanKind() != trace.SpanKindConsumer {
			continue
		}
		id, _ := attrOf(s, "messaging.message.id")
		if id.AsString() == plain.ID {
			if s.SpanContext().TraceID() == traceID {
				t.Errorf("the message written outside a trace joined the request's trace")
			}
			continue
		}
		// process → producer span (send, or create in a batch) → request.
		prod, ok := byID[s.Parent().SpanID()]
		if !ok {
			t.Errorf("%q (message %s): parent %s is not a recorded span:\n%s", s.Name(), id.AsString(), s.Parent().SpanID(), dumpSpans(spans))
			continue
		}
		if prod.SpanKind() != trace.SpanKindProducer {
			t.Errorf("%q: parent %q is a %s span, want producer", s.Name(), prod.Name(), prod.SpanKind())
		}
		wantChild(t, prod, reqSpan)
		wantChild(t, s, prod)
	}
	for _, m := range []*message.Message{ship, inv1, inv2} {
		if r := got[m.ID]; r == nil || !strings.Contains(r.Headers[message.HeaderTraceParent], traceID.String()) {
			t.Errorf("message %s delivered without the request's trace", m.ID)
		}
	}
	if got[inv1.ID].Headers["x-mine"] != "kept" {
		t.Errorf("a header of the caller's was lost on the way: %v", got[inv1.ID].Headers)
	}
}
