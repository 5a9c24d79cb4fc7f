package router_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"syscall"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/router"
	"github.com/courierkit/courier/transport"
	memtransport "github.com/courierkit/courier/transport/mem"
)

// HealthHandler serves readiness and liveness probes (mount it on your
// HTTP server, e.g. mux.Handle("/healthz/", r.HealthHandler())).
func ExampleRouter_HealthHandler() {
	ctx := context.Background()
	conn, _ := memtransport.New(ctx, memtransport.Options{})
	defer conn.Close()
	_ = conn.Declare(ctx, "orders", transport.SubscribeOptions{Group: "billing"})

	r := router.New(conn, router.Options{
		Checks: []router.Check{{Name: "database", Func: func(context.Context) error { return nil }}},
	})
	handled := make(chan struct{})
	_ = r.Handle("orders", "billing", message.HandlerFunc(func(context.Context, *message.Message) error {
		close(handled)
		return nil
	}))
	probes := r.HealthHandler()
	probe := func(path string) {
		rec := httptest.NewRecorder()
		probes.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		var h router.Health
		_ = json.Unmarshal(rec.Body.Bytes(), &h)
		fmt.Printf("%s %d state=%s broker=%s via %s, route %s %s\n",
			path, rec.Code, h.State, h.Broker.Status, h.Broker.Via, h.Routes[0].Name, h.Routes[0].State)
	}

	go func() { _ = r.Run(ctx) }()
	_ = conn.Publish(ctx, "orders", message.New([]byte("order 1")))
	<-handled // the route runs
	probe("/healthz/ready")
	_ = r.Shutdown(ctx)
	probe("/healthz/ready")
	probe("/healthz/live")
	// Output:
	// /healthz/ready 200 state=running broker=ok via ping, route orders/billing running
	// /healthz/ready 503 state=stopped broker=ok via ping, route orders/billing stopped
	// /healthz/live 200 state=stopped broker=ok via ping, route orders/billing stopped
}

// RunUntilSignal is a service's main loop: it runs the router until
// SIGINT or SIGTERM (or the signals given) or until ctx ends, then drains
// in-flight handlers for up to the grace. Here ctx ends once the one
// message was handled, as a real service's would on a signal.
func ExampleRouter_RunUntilSignal() {
	conn, _ := memtransport.New(context.Background(), memtransport.Options{})
	defer conn.Close()
	_ = conn.Declare(context.Background(), "orders", transport.SubscribeOptions{Group: "billing"})

	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	r := router.New(conn, router.Options{})
	_ = r.Handle("orders", "billing", message.HandlerFunc(func(_ context.Context, m *message.Message) error {
		fmt.Printf("handled %s\n", m.Payload)
		stop()
		return nil
	}))
	_ = conn.Publish(context.Background(), "orders", message.New([]byte("order 1")))

	// In main: err := r.RunUntilSignal(context.Background(), 30*time.Second)
	err := r.RunUntilSignal(ctx, 10*time.Second, syscall.SIGTERM)
	fmt.Println("stopped:", err)
	// Output:
	// handled order 1
	// stopped: <nil>
}
