// Command observability shows one order flowing through three services —
// checkout, billing and shipping — as one OpenTelemetry trace, with the
// messaging metrics beside it.
//
//	go run ./examples/observability                      # in-process (mem://)
//	go run ./examples/observability -url nats://127.0.0.1:4222
//	go run ./examples/observability -url amqp://guest:guest@127.0.0.1:5672/
//
// Each service has its own TracerProvider (resource service.name) and its
// own courierotel.Instrumentation, as separate processes would; the trace
// context travels only in message headers (W3C traceparent). Checkout
// publishes an order from inside its "POST /checkout" span; billing, a
// router.Router with the recommended middleware stack, handles it and
// publishes a payment with router.PublisherFrom; shipping handles the
// payment. Spans and metrics are exported as JSON to stdout by the
// OpenTelemetry stdout exporters (-export=false turns them off), and a
// summary of the trace as a tree goes to stderr:
//
//	trace 5b8aa5a2d2c872e8321cf37308d69df2: 5 spans, 3 services
//	POST /checkout  (checkout, server)
//	└─ send orders  (checkout, producer)
//	   └─ process orders  (billing, consumer)
//	      └─ send payments  (billing, producer)
//	         └─ process payments  (shipping, consumer)
//
// Consumer lag is observed (courier.messaging.consumer.lag) where the
// transport implements transport.LagReporter; the program says when it
// does not.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/sony/gobreaker/v2"
	"go.opentelemetry.io/otel/exporters/stdout/stdoutmetric"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"
	"go.opentelemetry.io/otel/trace"

	courierotel "github.com/courierkit/courier/contrib/otel"
	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/middleware"
	"github.com/courierkit/courier/router"
	"github.com/courierkit/courier/transport"
	_ "github.com/courierkit/courier/transport/amqp"
	_ "github.com/courierkit/courier/transport/gcppubsub"
	_ "github.com/courierkit/courier/transport/kafka"
	_ "github.com/courierkit/courier/transport/mem"
	_ "github.com/courierkit/courier/transport/nats"
	_ "github.com/courierkit/courier/transport/sqs"
)

func main() {
	var cfg config
	flag.StringVar(&cfg.URL, "url", "mem://observability", "transport URL (mem://, nats://, amqp://, kafka://, sqs://, gcppubsub://)")
	flag.BoolVar(&cfg.Export, "export", true, "write spans and metrics as JSON to stdout")
	flag.DurationVar(&cfg.Timeout, "timeout", 30*time.Second, "give up when the order has not reached shipping by then")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if _, err := run(ctx, cfg, os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "observability:", err)
		os.Exit(1)
	}
}

type config struct {
	URL     string
	Export  bool
	Timeout time.Duration
	// Topics, when set, replace "orders" and "payments" (tests on shared
	// brokers use names of their own).
	Orders, Payments string
}

// service is one of the three: its providers, instrumentation and
// connection.
type service struct {
	name string
	tp   *sdktrace.TracerProvider
	inst *courierotel.Instrumentation
	conn *courierotel.Conn
}

// run runs the flow once and returns the summary it printed to stderr.
func run(ctx context.Context, cfg config, stdout, stderr io.Writer) (string, error) {
	if cfg.Timeout <= 0 {
		cfg.Timeout = 30 * time.Second
	}
	orders, payments := cfg.Orders, cfg.Payments
	if orders == "" {
		orders, payments = "orders", "payments"
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	if !cfg.Export {
		stdout = io.Discard
	}
	log := slog.New(courierotel.LogHandler(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelWarn})))

	// One metric pipeline for the process; it is flushed at the end.
	mexp, err := stdoutmetric.New(stdoutmetric.WithWriter(stdout))
	if err != nil {
		return "", err
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewPeriodicReader(mexp, sdkmetric.WithInterval(time.Hour))))
	defer func() { _ = mp.Shutdown(context.Background()) }()

	// Spans: each service exports to stdout and to the summary.
	sum := &summary{}
	var svcs []*service
	defer func() {
		for _, s := range svcs {
			sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
			_ = s.conn.Shutdown(sctx)
			_ = s.tp.Shutdown(sctx)
			scancel()
		}
	}()
	for _, name := range []string{"checkout", "billing", "shipping"} {
		res := resource.NewWithAttributes(semconv.SchemaURL, semconv.ServiceName(name))
		texp, err := stdouttrace.New(stdouttrace.WithWriter(stdout))
		if err != nil {
			return "", err
		}
		// The SDK's default sampler, ParentBased(AlwaysSample), keeps the
		// one order's trace whole. In production keep the batch processor
		// and sample by ratio at the root, ParentBased(TraceIDRatioBased(r)),
		// so a trace is kept or dropped whole across the services; see
		// "Cost" in the contrib/otel package doc for what each costs.
		tp := sdktrace.NewTracerProvider(sdktrace.WithResource(res),
			sdktrace.WithBatcher(texp), sdktrace.WithSpanProcessor(sum))
		inst, err := courierotel.New(courierotel.Options{TracerProvider: tp, MeterProvider: mp, Logger: log})
		if err != nil {
			return "", err
		}
		conn, err := transport.Open(ctx, cfg.URL)
		if err != nil {
			_ = tp.Shutdown(context.Background())
			return "", fmt.Errorf("%s: %w", name, err)
		}
		svcs = append(svcs, &service{name: name, tp: tp, inst: inst, conn: inst.Conn(conn)})
	}
	checkout, billing, shipping := svcs[0], svcs[1], svcs[2]

	// Declare the groups first so nothing published is lost for them.
	if err := billing.conn.Declare(ctx, orders, transport.SubscribeOptions{Group: "billing"}); err != nil {
		return "", err
	}
	if err := shipping.conn.Declare(ctx, payments, transport.SubscribeOptions{Group: "shipping"}); err != nil {
		return "", err
	}
	reg, err := billing.inst.ObserveLag(billing.conn, courierotel.LagOptions{},
		courierotel.LagTarget{Topic: orders, Group: "billing"}, courierotel.LagTarget{Topic: payments, Group: "shipping"})
	switch {
	case errors.Is(err, courierotel.ErrNoLag):
		fmt.Fprintf(stderr, "note: %s does not report consumer lag (transport.LagReporter); no lag gauge\n", courierotel.SystemOf(billing.conn))
	case err != nil:
		return "", err
	default:
		defer func() { _ = reg.Unregister() }()
	}

	// Billing: a Router with the recommended middleware; its publisher is
	// the traced Conn, so follow-ups and dead letters are traced too.
	stack := middleware.Recommended(middleware.StackOptions{
		Retry:          middleware.RetryOptions{OnRetry: billing.inst.OnRetry},
		BreakerOptions: middleware.BreakerOptions{Name: "billing", OnStateChange: breakerHook(billing.inst)},
	})
	billing.inst.BreakerStateChanged("billing", "", courierotel.BreakerClosed) // the gauge exists from the start
	billingRouter := router.New(billing.conn, router.Options{Middleware: stack, Logger: log})
	if err := billingRouter.Handle(orders, "billing", message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		order, err := message.Decode[Order](m)
		if err != nil {
			return err
		}
		p, err := message.Encode(Payment{OrderID: order.ID, Amount: order.Amount})
		if err != nil {
			return err
		}
		return router.PublisherFrom(ctx).Publish(ctx, payments, p)
	})); err != nil {
		return "", err
	}
	// Shipping: a Router without middleware on its traced Conn.
	shipped := make(chan Payment, 1)
	shippingRouter := router.New(shipping.conn, router.Options{Logger: log})
	if err := shippingRouter.Handle(payments, "shipping", message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		p, err := message.Decode[Payment](m)
		if err != nil {
			return err
		}
		log.DebugContext(ctx, "shipping", "order", p.OrderID) // carries trace_id and span_id
		select {
		case shipped <- p:
		default:
		}
		return nil
	})); err != nil {
		return "", err
	}
	var wg sync.WaitGroup
	runErrs := make(chan error, 2)
	for _, r := range []*router.Router{billingRouter, shippingRouter} {
		wg.Go(func() {
			if err := r.Run(ctx); err != nil && !errors.Is(err, router.ErrClosed) {
				runErrs <- err
			}
		})
	}
	stopRouters := func() {
		sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer scancel()
		_ = billingRouter.Shutdown(sctx)
		_ = shippingRouter.Shutdown(sctx)
		wg.Wait()
	}

	// Checkout: an incoming request's span, then the order.
	rctx, req := checkout.inst.Tracer().Start(ctx, "POST /checkout", trace.WithSpanKind(trace.SpanKindServer))
	om, err := message.Encode(Order{ID: "order-1001", Customer: "c-42", Amount: 1999})
	if err != nil {
		req.End()
		stopRouters()
		return "", err
	}
	om.Key = "c-42"
	err = checkout.conn.Publish(rctx, orders, om)
	req.End()
	if err != nil {
		stopRouters()
		return "", fmt.Errorf("checkout: publish: %w", err)
	}

	select {
	case <-shipped:
	case err := <-runErrs:
		stopRouters()
		return "", err
	case <-ctx.Done():
		stopRouters()
		return "", fmt.Errorf("the order did not reach shipping: %w", ctx.Err())
	}
	stopRouters()
	// Flush spans (the summary sees them as they end) and metrics.
	for _, s := range svcs {
		_ = s.tp.ForceFlush(context.Background())
	}
	if err := mp.ForceFlush(context.Background()); err != nil {
		return "", err
	}
	out := sum.tree(req.SpanContext().TraceID())
	fmt.Fprint(stderr, out)
	return out, nil
}

// breakerHook feeds a gobreaker state change to the breaker metrics.
func breakerHook(inst *courierotel.Instrumentation) func(name string, from, to gobreaker.State) {
	return func(name string, from, to gobreaker.State) {
		inst.BreakerStateChanged(name, from.String(), to.String())
	}
}

// Order and Payment are the example's events.
type Order struct {
	ID       string `json:"id"`
	Customer string `json:"customer"`
	Amount   int    `json:"amount_cents"`
}

// MessageType names the event (message.Typed).
func (Order) MessageType() string { return "com.example.order.placed" }

// Payment is billing's follow-up.
type Payment struct {
	OrderID string `json:"order_id"`
	Amount  int    `json:"amount_cents"`
}

// MessageType names the event.
func (Payment) MessageType() string { return "com.example.payment.captured" }

// summary is a span processor that keeps ended spans for the tree.
type summary struct {
	mu    sync.Mutex
	spans []sdktrace.ReadOnlySpan
}

func (s *summary) OnStart(context.Context, sdktrace.ReadWriteSpan) {}
func (s *summary) OnEnd(sp sdktrace.ReadOnlySpan) {
	s.mu.Lock()
	s.spans = append(s.spans, sp)
	s.mu.Unlock()
}
func (s *summary) Shutdown(context.Context) error   { return nil }
func (s *summary) ForceFlush(context.Context) error { return nil }

// tree renders the spans of one trace as a tree, parents before
// children, siblings by start time.
func (s *summary) tree(id trace.TraceID) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	children := map[trace.SpanID][]sdktrace.ReadOnlySpan{}
	known := map[trace.SpanID]bool{}
	services := map[string]bool{}
	n := 0
	for _, sp := range s.spans {
		if sp.SpanContext().TraceID() == id {
			known[sp.SpanContext().SpanID()] = true
		}
	}
	var roots []sdktrace.ReadOnlySpan
	for _, sp := range s.spans {
		if sp.SpanContext().TraceID() != id {
			continue
		}
		n++
		services[serviceOf(sp)] = true
		if p := sp.Parent().SpanID(); sp.Parent().IsValid() && known[p] {
			children[p] = append(children[p], sp)
		} else {
			roots = append(roots, sp)
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "trace %s: %d spans, %d services\n", id, n, len(services))
	var walk func(sp sdktrace.ReadOnlySpan, prefix, branch string)
	walk = func(sp sdktrace.ReadOnlySpan, prefix, branch string) {
		fmt.Fprintf(&b, "%s%s%s  (%s, %s)\n", prefix, branch, sp.Name(), serviceOf(sp), sp.SpanKind())
		kids := children[sp.SpanContext().SpanID()]
		sort.Slice(kids, func(i, j int) bool { return kids[i].StartTime().Before(kids[j].StartTime()) })
		next := prefix
		if branch != "" {
			next += "   "
		}
		for k, c := range kids {
			br := "├─ "
			if k == len(kids)-1 {
				br = "└─ "
			}
			walk(c, next, br)
		}
	}
	sort.Slice(roots, func(i, j int) bool { return roots[i].StartTime().Before(roots[j].StartTime()) })
	for _, r := range roots {
		walk(r, "", "")
	}
	return b.String()
}

func serviceOf(sp sdktrace.ReadOnlySpan) string {
	if v, ok := sp.Resource().Set().Value(semconv.ServiceNameKey); ok {
		return v.AsString()
	}
	return "?"
}
