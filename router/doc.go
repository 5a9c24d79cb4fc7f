// Package router runs message handlers on a transport: it binds routes
// (topic, consumer group, handler, middleware, concurrency, max in flight)
// to one transport.Subscriber, hands handlers a Publisher for follow-up
// messages, drains gracefully, and reports health.
//
//	conn, _ := transport.Open(ctx, "nats://127.0.0.1:4222")
//	r := router.New(conn, router.Options{Middleware: middleware.Recommended(middleware.StackOptions{})})
//	r.Add(router.Route{Topic: "orders", Handler: h,
//		Subscribe: transport.SubscribeOptions{Group: "billing", Concurrency: 8, MaxInFlight: 64}})
//	http.Handle("/readyz", r.HealthHandler())
//	err := r.RunUntilSignal(ctx, 30*time.Second) // SIGINT/SIGTERM → Shutdown
//
// # Delivery semantics
//
// The router adds no delivery semantics of its own: each route is one
// Subscribe call, and the transport's guarantees (at-least-once, ack after
// the handler returns, redelivery on error, per-key order with
// OrderedByKey) hold unchanged. The handler chain is the router-level
// middleware (outermost), then the route's, then the handler. A panic
// anywhere in it is recovered by the router's safety net and returned as
// an error (the message is nacked; middleware.Recover does the same with
// the stack); no panic takes the process down.
//
// # Follow-up messages and correlation
//
// PublisherFrom(ctx) inside a handler returns a Publisher that stamps what
// it publishes with the consumed message's correlation ID (or its ID when
// it has none) and, as causation ID, the consumed message's ID; fields the
// handler set itself are kept. The underlying publisher is
// Options.Publisher, by default the Subscriber itself when it is a
// transport.Conn. FromContext(ctx) returns the Delivery: the message, the
// route's name, topic and group, the transport's capabilities and the
// draining signal; the middleware package uses it.
//
// # Lifecycle
//
// Run blocks (like http.Server.Serve). Shutdown(ctx) is graceful: the
// router stops handing messages to handlers (a message the transport
// delivers from then on waits and goes back to the broker, unhandled, when
// the subscription ends), closes Delivery.Draining so waiting middleware
// hands its message back at once (Retry's backoff, Redelivery's hold),
// waits for the running handlers, whose acks and follow-up publishes land
// normally, then ends the subscriptions; Run returns ErrClosed. If ctx
// ends first, the rest is stopped hard (handlers' contexts cancelled,
// messages nacked) and Shutdown returns ctx.Err(). Close stops hard at
// once. The router does not close the transport: the application shuts it
// down after the router (conn.Shutdown(ctx)). RunUntilSignal wires
// SIGINT/SIGTERM to Shutdown with a grace period (a second signal closes).
//
// When a subscription fails (the transport refuses it, or closes under
// it), Run stops the other routes and returns that error naming the
// route: a supervisor (systemd, Kubernetes) restarts the process. There is
// no silent resubscribe loop.
//
// # Health
//
// Health(ctx) reports the router's state, each route's state (idle,
// starting, running, draining, stopped, failed), in-flight count, handled
// and failed counts, last message and last error, the broker (through the
// optional Pinger interface, else a transport.LagReporter round trip for a
// running route's group, else "unknown") and extra checks (Options.Checks, AddCheck — a
// middleware.Breaker's Check reports an open circuit). Ready means running
// with every route running, the broker answering and every check passing;
// Live is false only after a route failed. HealthHandler serves it as
// JSON: paths ending in "live"/"livez" (or ?probe=live) are liveness
// probes, others readiness probes; 200 or 503.
//
// # Errors
//
// ErrClosed after Shutdown or Close; ErrRunning for a second Run or an Add
// after Run; Add validates names with transport.CheckName and rejects
// duplicate routes. A failed route's error wraps the transport's (errors.Is
// works, e.g. transport.ErrClosed).
//
// # Concurrency
//
// Router methods are safe for concurrent use. Concurrency and in-flight
// bounds per route come from Route.Subscribe (Concurrency, MaxInFlight)
// and are enforced by the transport's Dispatcher.
//
// # Performance
//
// Measured 2026-11-23, 00:09–00:16 UTC, on the project's 2-core machine
// (a Firecracker VM on AMD EPYC, Go 1.26) with nothing else running (load
// average 1.0–1.7, the benchmark itself), from a prebuilt test binary.
//
// The router's own work per message (delivery context, two atomic adds
// on the route's in-flight counters that Health and the graceful drain
// read, drain check, panic guard) is 16–17 ns and no allocation
// (BenchmarkRouteHandle, 5 runs, a ~3 ns reset of the message included).
// The delivery context a handler receives is built inside the Message
// (message.Message.Bind), so it costs no allocation and stays valid for as
// long as a handler keeps it; it used to be a 32-byte allocation, 32 ns.
//
// The target (issue 3): the router adds at most 10 % to the mem
// transport's end-to-end cost at the same concurrency. BenchmarkRouterPaired
// runs one subscription directly on the transport and one through a
// Router side by side on two mem brokers (publish → handler → ack,
// 16-byte payloads, as many publishers as Concurrency, the default
// MaxBacklog of 10,000), 161 rounds; each round starts both afresh at a
// random heap offset and in random order (internal/memrig), runs N
// messages through each, alternating which goes first, after a GC, and
// reports the median of the per-round ratios (added-%, added-cpu-%):
//
//	go test -run '^$' -bench 'RouterPaired' -benchtime 100000x ./router/
//
// (about 55 s). A single round at Concurrency 1 varies by ±15 % with where
// the rigs' goroutines and objects land, for the router and the bare
// transport alike; -aa runs the bare transport on both sides to show that
// noise. Many short rounds beat few long ones: with 41 rounds of 200,000
// messages the run medians still spread over ±5 % (A/A −7.1 to +3.8 %),
// with 161 rounds of 100,000 over about ±2 %.
//
// Median added wall time per message (added CPU time in brackets):
//
//	                                       Concurrency 1                         Concurrency 4
//	161 × 100,000, 01:38–01:41 (×3)        +0.3, +2.2, +3.8 % [+0.4, +4.7, +1.4]  +2.0, +2.8, +1.8 % [+1.1, +1.1, +2.2]
//	161 × 100,000, A/A                     −0.9 % [−0.7]                         +0.1 % [0.0]
//	41 × 200,000, 00:09–00:16 (×6)         −0.6, −0.8, −4.5, −2.5, +5.8, +2.2 %  +2.7, +1.9, +2.1, +4.9, +5.3, +5.2 %
//	41 × 200,000, 01:35–01:36 (×3)         +5.8, +7.2, +10.4 %                   +4.1, +4.2, +1.8 %
//	41 × 200,000, A/A (×5)                 −7.1, +0.8, +3.8, −4.5, −3.4 %        +0.4, +1.0, +2.1, +0.2, −2.4 %
//
// Per message the transport takes 285–390 ns wall and 510–700 ns CPU at
// Concurrency 1, 575–780 ns and 780–1100 ns at Concurrency 4; both sides
// make 3.0 allocations per message at Concurrency 1 (3.2 at 4). The
// router's ~16 ns is about 5 % of the Concurrency-1 path; measured with
// enough rounds it adds 0–4 %. (Before the delivery context moved into the
// message, with long-lived rigs: +8.9 to +17 % at Concurrency 1.)
// BenchmarkRouterOverhead is the older unpaired form.
package router
