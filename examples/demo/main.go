// Command demo is courier's first example: the seed documents' e-commerce
// flow on one broker. An order service publishes OrderCreated events; a
// payment service and an inventory service consume them, each in its own
// group, so each gets every order. Payment fails twice on one order
// (a flaky card gateway) and succeeds on the third delivery; inventory
// rejects an order for an unknown SKU as a permanent error, which sends it to
// the dead-letter topic, where an ops service reports the reason.
//
//	go run ./examples/demo                      # embedded mem:// broker
//	go run ./examples/demo -url nats://127.0.0.1:4222
//
// It prints what happened and exits 0, or 1 when the flow did not complete
// within -timeout.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	_ "github.com/courierkit/courier/transport/amqp"
	_ "github.com/courierkit/courier/transport/gcppubsub"
	_ "github.com/courierkit/courier/transport/kafka"
	_ "github.com/courierkit/courier/transport/mem"
	_ "github.com/courierkit/courier/transport/nats"
	_ "github.com/courierkit/courier/transport/sqs"
)

// OrderCreated is the event the order service publishes.
type OrderCreated struct {
	OrderID  string  `json:"order_id"`
	Customer string  `json:"customer"`
	SKU      string  `json:"sku"`
	Quantity int     `json:"quantity"`
	Amount   float64 `json:"amount"`
}

// MessageType names the event in the ce-type header.
func (OrderCreated) MessageType() string { return "com.example.order.created.v1" }

const (
	ordersTopic = "orders"
	dlqTopic    = "orders-dlq"
)

func main() {
	url := flag.String("url", "mem://demo", "broker URL (mem://, nats://, amqp://, kafka://, sns://, sqs://, gcppubsub://)")
	timeout := flag.Duration("timeout", 20*time.Second, "give up when the flow has not completed by then")
	flag.Parse()
	if err := run(*url, *timeout); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

// journal collects what the services did, for the summary.
type journal struct {
	mu    sync.Mutex
	lines []string
	done  map[string]bool
	ch    chan struct{}
}

func (j *journal) log(format string, a ...any) {
	j.mu.Lock()
	defer j.mu.Unlock()
	line := fmt.Sprintf(format, a...)
	j.lines = append(j.lines, line)
	fmt.Println(line)
}

func (j *journal) finish(what string) {
	j.mu.Lock()
	j.done[what] = true
	j.mu.Unlock()
	select {
	case j.ch <- struct{}{}:
	default:
	}
}

func (j *journal) complete(want []string) bool {
	j.mu.Lock()
	defer j.mu.Unlock()
	for _, w := range want {
		if !j.done[w] {
			return false
		}
	}
	return true
}

func run(url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()

	// One connection per service, as separate processes would have.
	open := func() (transport.Conn, error) { return transport.Open(ctx, url) }
	orders, err := open()
	if err != nil {
		return err
	}
	defer orders.Close()
	payment, err := open()
	if err != nil {
		return err
	}
	defer payment.Close()
	inventory, err := open()
	if err != nil {
		return err
	}
	defer inventory.Close()
	ops, err := open()
	if err != nil {
		return err
	}
	defer ops.Close()

	j := &journal{done: map[string]bool{}, ch: make(chan struct{}, 1)}
	fmt.Printf("courier demo on %s\n", transport.Redact(url))

	payOpts := transport.SubscribeOptions{Group: "payment", NackDelay: 100 * time.Millisecond, AckWait: 10 * time.Second}
	invOpts := transport.SubscribeOptions{Group: "inventory", DeadLetterTopic: dlqTopic, AckWait: 10 * time.Second}
	opsOpts := transport.SubscribeOptions{Group: "ops", AckWait: 10 * time.Second}
	// Declare the groups first, so nothing published from now on is lost
	// even if a service starts late.
	for _, d := range []struct {
		c     transport.Conn
		topic string
		o     transport.SubscribeOptions
	}{{payment, ordersTopic, payOpts}, {inventory, ordersTopic, invOpts}, {ops, dlqTopic, opsOpts}} {
		if err := d.c.Declare(ctx, d.topic, d.o); err != nil {
			return fmt.Errorf("declare %s/%s: %w", d.topic, d.o.Group, err)
		}
	}

	var flaky sync.Mutex
	failures := 0
	payHandler := message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		o, err := message.Decode[OrderCreated](m)
		if err != nil {
			return err
		}
		if o.OrderID == "order-2" {
			flaky.Lock()
			fail := failures < 2
			if fail {
				failures++
			}
			flaky.Unlock()
			if fail {
				j.log("payment:   %s card gateway timed out (delivery %d), will retry", o.OrderID, attempt(m, failures))
				return errors.New("card gateway timeout")
			}
		}
		j.log("payment:   %s charged %.2f for %s (delivery %d)", o.OrderID, o.Amount, o.Customer, attempt(m, failures+1))
		j.finish("pay:" + o.OrderID)
		return nil
	})
	invHandler := message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		o, err := message.Decode[OrderCreated](m)
		if err != nil {
			return err
		}
		if strings.HasPrefix(o.SKU, "UNKNOWN") {
			j.log("inventory: %s rejected: unknown SKU %s (permanent, no retry)", o.OrderID, o.SKU)
			return message.Permanent(fmt.Errorf("unknown SKU %s", o.SKU))
		}
		j.log("inventory: %s reserved %d × %s", o.OrderID, o.Quantity, o.SKU)
		j.finish("inv:" + o.OrderID)
		return nil
	})
	opsHandler := message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		j.log("ops:       dead letter %s from %s/%s: %s", m.Header(message.HeaderCorrelationID), m.Header(message.HeaderDeadLetterTopic), m.Header(message.HeaderDeadLetterGroup), m.Header(message.HeaderDeadLetterReason))
		j.finish("dlq")
		return nil
	})

	subCtx, stopSubs := context.WithCancel(ctx)
	defer stopSubs()
	errs := make(chan error, 3)
	var wg sync.WaitGroup
	for _, s := range []struct {
		c     transport.Conn
		topic string
		h     message.Handler
		o     transport.SubscribeOptions
	}{{payment, ordersTopic, payHandler, payOpts}, {inventory, ordersTopic, invHandler, invOpts}, {ops, dlqTopic, opsHandler, opsOpts}} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.c.Subscribe(subCtx, s.topic, s.h, s.o); err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, transport.ErrClosed) {
				errs <- fmt.Errorf("subscribe %s/%s: %w", s.topic, s.o.Group, err)
			}
		}()
	}

	// The order service.
	placed := []OrderCreated{
		{OrderID: "order-1", Customer: "ada", SKU: "BOOK-42", Quantity: 1, Amount: 39.90},
		{OrderID: "order-2", Customer: "grace", SKU: "LAMP-7", Quantity: 2, Amount: 120.00},
		{OrderID: "order-3", Customer: "linus", SKU: "UNKNOWN-1", Quantity: 1, Amount: 9.99},
	}
	var batch []*message.Message
	for _, o := range placed {
		m, err := message.Encode(o)
		if err != nil {
			return err
		}
		m.Key = o.Customer // per-customer order where the broker keeps it
		m.SetHeader(message.HeaderCorrelationID, o.OrderID)
		m.SetHeader(message.HeaderSource, "/order-service")
		batch = append(batch, m)
	}
	if err := orders.Publish(ctx, ordersTopic, batch...); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	for _, o := range placed {
		j.log("orders:    published OrderCreated %s (%s × %d)", o.OrderID, o.SKU, o.Quantity)
	}

	want := []string{"pay:order-1", "pay:order-2", "pay:order-3", "inv:order-1", "inv:order-2", "dlq"}
	for !j.complete(want) {
		select {
		case <-j.ch:
		case err := <-errs:
			return err
		case <-ctx.Done():
			j.mu.Lock()
			var got []string
			for k := range j.done {
				got = append(got, k)
			}
			j.mu.Unlock()
			sort.Strings(got)
			return fmt.Errorf("flow incomplete after %s: done %v, want %v", timeout, got, want)
		}
	}

	// Graceful stop: every service drains.
	sctx, scancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer scancel()
	for _, c := range []transport.Conn{payment, inventory, ops, orders} {
		if err := c.Shutdown(sctx); err != nil {
			return fmt.Errorf("shutdown: %w", err)
		}
	}
	stopSubs()
	wg.Wait()
	fmt.Printf("done in %s: 3 orders, 3 payments (one after 2 retries), 2 reservations, 1 dead letter\n", time.Since(start).Round(time.Millisecond))
	return nil
}

// attempt prints the broker's delivery count when it has one, else our own.
func attempt(m *message.Message, fallback int) int {
	if m.Attempt > 0 {
		return m.Attempt
	}
	return fallback
}
