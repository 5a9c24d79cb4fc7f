package amqptransport

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/courierkit/courier/internal/testenv"
	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// collector records what a handler saw.
type collector struct {
	mu   sync.Mutex
	msgs []*message.Message
	ids  map[string]int
}

func newCollector() *collector { return &collector{ids: map[string]int{}} }

func (c *collector) Handle(_ context.Context, m *message.Message) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.msgs = append(c.msgs, m)
	c.ids[m.ID]++
	return nil
}

func (c *collector) distinct() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.ids)
}

func (c *collector) has(id string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.ids[id] > 0
}

func (c *collector) snapshot() []*message.Message {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*message.Message(nil), c.msgs...)
}

// subscribe runs Subscribe in a goroutine until cleanup; the returned
// channel yields its error.
func subscribe(t *testing.T, tr *Transport, topic string, o transport.SubscribeOptions, h message.Handler) <-chan error {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	finished := make(chan struct{})
	go func() { done <- tr.Subscribe(ctx, topic, h, o); close(finished) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-finished:
		case <-time.After(30 * time.Second):
			t.Errorf("Subscribe did not return after cancel")
		}
	})
	return done
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestPropertiesRoundTrip: reserved headers travel as AMQP properties and
// come back as the same headers; Key, ID, payload and As work.
func TestPropertiesRoundTrip(t *testing.T) {
	url := brokerURL(t)
	tr := openT(t, Options{URL: url})
	topic, group := uniq("props"), "g"
	cleanupTopology(t, url, topic, []string{group})
	o := transport.SubscribeOptions{Group: group}
	if err := tr.Declare(ctxT(t), topic, o); err != nil {
		t.Fatal(err)
	}
	m := &message.Message{ID: "id-1", Key: "k.1", Payload: []byte("p"), Headers: message.Header{
		message.HeaderContentType:   "application/json",
		message.HeaderCorrelationID: "corr",
		message.HeaderType:          "order.created",
		"x-long":                    strings.Repeat("v", 1000),
	}}
	if err := tr.Publish(ctxT(t), topic, m); err != nil {
		t.Fatal(err)
	}
	col := newCollector()
	subscribe(t, tr, topic, o, col)
	if !eventually(10*time.Second, func() bool { return col.distinct() == 1 }) {
		t.Fatal("not delivered")
	}
	g := col.snapshot()[0]
	if g.ID != m.ID || g.Key != m.Key || string(g.Payload) != "p" || g.Topic != topic || g.Attempt != 1 {
		t.Errorf("got id %q key %q payload %q topic %q attempt %d", g.ID, g.Key, g.Payload, g.Topic, g.Attempt)
	}
	if len(g.Headers) != len(m.Headers) {
		t.Errorf("headers %v, want %v", g.Headers, m.Headers)
	}
	for k, v := range m.Headers {
		if g.Headers[k] != v {
			t.Errorf("header %s = %q, want %q", k, g.Headers[k], v)
		}
	}
	var d amqp.Delivery
	if !g.As(&d) || d.ContentType != "application/json" || d.CorrelationId != "corr" || d.Type != "order.created" || d.RoutingKey != "k.1" || d.DeliveryMode != amqp.Persistent {
		t.Errorf("As(*amqp.Delivery): %+v", d)
	}
	var ch *amqp.Channel
	if !g.As(&ch) || ch == nil {
		t.Error("As(**amqp.Channel) failed")
	}
	var c *amqp.Connection
	if !tr.As(&c) || c == nil || c.IsClosed() {
		t.Error("Transport.As(**amqp.Connection) failed")
	}
	var cs Connections
	if !tr.As(&cs) || cs.Consume != c || cs.Publish == nil || cs.Publish == c {
		t.Errorf("Transport.As(*Connections) = %+v", cs)
	}
	// Reserved names are refused before anything is sent.
	for _, h := range []string{"x-death", "x-courier-key", "CC"} {
		bad := &message.Message{Headers: message.Header{h: "v"}}
		if err := tr.Publish(ctxT(t), topic, bad); !errors.Is(err, transport.ErrInvalidMessage) {
			t.Errorf("header %q: Publish = %v, want ErrInvalidMessage", h, err)
		}
	}
	long := &message.Message{Headers: message.Header{strings.Repeat("n", 256): "v"}}
	if err := tr.Publish(ctxT(t), topic, long); !errors.Is(err, transport.ErrLimit) {
		t.Errorf("256-byte header name: Publish = %v, want ErrLimit", err)
	}
}

// TestUnroutable: a message no queue takes is an error (mandatory), unless
// AllowUnroutable.
func TestUnroutable(t *testing.T) {
	url := brokerURL(t)
	tr := openT(t, Options{URL: url})
	topic := uniq("unroutable")
	cleanupTopology(t, url, topic, nil)
	err := tr.Publish(ctxT(t), topic, message.New([]byte("x")), message.New([]byte("y")))
	if !errors.Is(err, ErrUnroutable) {
		t.Fatalf("Publish to an exchange without queues = %v, want ErrUnroutable", err)
	}
	t.Logf("error: %v", err)
	// The channel stays usable: a routable publish right after succeeds.
	group := "g"
	cleanupTopology(t, url, topic, []string{group})
	if err := tr.Declare(ctxT(t), topic, transport.SubscribeOptions{Group: group}); err != nil {
		t.Fatal(err)
	}
	if err := tr.Publish(ctxT(t), topic, message.New([]byte("z"))); err != nil {
		t.Fatalf("routable publish after an unroutable one: %v", err)
	}
	// Only part of a batch unroutable (direct exchange, one key bound).
	dt := uniq("unroutable-direct")
	dtr := openT(t, Options{URL: url, ExchangeType: ExchangeDirect, BindingKeys: []string{"bound"}})
	cleanupTopology(t, url, dt, []string{group})
	if err := dtr.Declare(ctxT(t), dt, transport.SubscribeOptions{Group: group}); err != nil {
		t.Fatal(err)
	}
	ok, lost := message.New([]byte("ok")), message.New([]byte("lost"))
	ok.Key, lost.Key = "bound", "unbound"
	if err := dtr.Publish(ctxT(t), dt, ok, lost); !errors.Is(err, ErrUnroutable) || !strings.Contains(err.Error(), lost.ID) {
		t.Fatalf("batch with one unroutable message = %v, want ErrUnroutable naming %s", err, lost.ID)
	}
	lax := openT(t, Options{URL: url, AllowUnroutable: true})
	nowhere := uniq("nowhere")
	cleanupTopology(t, url, nowhere, nil)
	if err := lax.Publish(ctxT(t), nowhere, message.New([]byte("x"))); err != nil {
		t.Fatalf("AllowUnroutable publish = %v", err)
	}
}

func TestRetryBucket(t *testing.T) {
	for _, c := range []struct {
		d    time.Duration
		want int64
	}{{0, 1}, {time.Microsecond, 1}, {99 * time.Millisecond, 99}, {100 * time.Millisecond, 100}, {1234 * time.Millisecond, 1300}, {1500 * time.Millisecond, 1500}, {61 * time.Second, 61000}, {123456 * time.Millisecond, 130000}, {100 * 24 * time.Hour, maxTTL}} {
		if got := retryBucket(c.d); got != c.want {
			t.Errorf("retryBucket(%v) = %d, want %d", c.d, got, c.want)
		}
		if time.Duration(retryBucket(c.d))*time.Millisecond < c.d && c.want != maxTTL {
			t.Errorf("retryBucket(%v) shortens the delay", c.d)
		}
	}
}

// TestDelayedRedelivery: a nack with a delay goes through the per-delay
// retry queue (TTL, dead-lettered back) and returns no sooner than the
// delay, with its attempt count, headers and key intact, on classic and
// quorum queues.
func TestDelayedRedelivery(t *testing.T) {
	for _, qt := range []string{QueueClassic, QueueQuorum} {
		t.Run(qt, func(t *testing.T) {
			url := brokerURL(t)
			tr := openT(t, Options{URL: url, QueueType: qt})
			topic, group := uniq("delay-"+qt), "g"
			const delay = 1200 * time.Millisecond
			cleanupTopology(t, url, topic, []string{group}, retryBucket(delay))
			o := transport.SubscribeOptions{Group: group}
			if err := tr.Declare(ctxT(t), topic, o); err != nil {
				t.Fatal(err)
			}
			m := &message.Message{Key: "key-1", Payload: []byte("later"), Headers: message.Header{"h": "v"}}
			if err := tr.Publish(ctxT(t), topic, m); err != nil {
				t.Fatal(err)
			}
			type seen struct {
				at      time.Time
				attempt int
				m       *message.Message
			}
			got := make(chan seen, 4)
			subscribe(t, tr, topic, o, message.HandlerFunc(func(ctx context.Context, g *message.Message) error {
				got <- seen{time.Now(), g.Attempt, g}
				if g.Attempt == 1 {
					return message.RetryAfter(errors.New("not yet"), delay)
				}
				return nil
			}))
			var first, second seen
			for i, dst := range []*seen{&first, &second} {
				select {
				case *dst = <-got:
				case <-time.After(15 * time.Second):
					t.Fatalf("delivery %d missing", i+1)
				}
			}
			if gap := second.at.Sub(first.at); gap < delay {
				t.Errorf("redelivered after %v, before the %v delay", gap, delay)
			} else {
				t.Logf("redelivered after %v (delay %v)", gap, delay)
			}
			if first.attempt != 1 || second.attempt != 2 {
				t.Errorf("attempts %d, %d; want 1, 2", first.attempt, second.attempt)
			}
			if second.m.ID != m.ID || second.m.Key != "key-1" || second.m.Headers["h"] != "v" || len(second.m.Headers) != 1 {
				t.Errorf("redelivered message id %q key %q headers %v", second.m.ID, second.m.Key, second.m.Headers)
			}
			// The retry queue exists with the delay as its TTL.
			_, ch := rawChannel(t, url)
			q, err := ch.QueueDeclarePassive(RetryQueueName(QueueName(topic, group), retryBucket(delay)), true, false, false, false, nil)
			if err != nil {
				t.Errorf("retry queue: %v", err)
			} else if q.Messages != 0 {
				t.Errorf("retry queue holds %d messages after the redelivery", q.Messages)
			}
		})
	}
}

// TestImmediateNackCountsAttempts: nacks without delay redeliver at once
// with an exact attempt count on both queue types (quorum:
// x-delivery-count; classic: republished with the count), so MaxAttempts
// dead-letters at the right attempt.
func TestImmediateNackCountsAttempts(t *testing.T) {
	for _, qt := range []string{QueueClassic, QueueQuorum} {
		t.Run(qt, func(t *testing.T) {
			url := brokerURL(t)
			tr := openT(t, Options{URL: url, QueueType: qt})
			topic, dlt, group := uniq("nack-"+qt), uniq("nack-dlq-"+qt), "g"
			cleanupTopology(t, url, topic, []string{group})
			cleanupTopology(t, url, dlt, []string{group})
			o := transport.SubscribeOptions{Group: group, MaxAttempts: 4, DeadLetterTopic: dlt}
			for _, tp := range []string{topic, dlt} {
				if err := tr.Declare(ctxT(t), tp, transport.SubscribeOptions{Group: group}); err != nil {
					t.Fatal(err)
				}
			}
			m := message.New([]byte("fails"))
			if err := tr.Publish(ctxT(t), topic, m); err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex
			var attempts []int
			subscribe(t, tr, topic, o, message.HandlerFunc(func(ctx context.Context, g *message.Message) error {
				mu.Lock()
				attempts = append(attempts, g.Attempt)
				mu.Unlock()
				return fmt.Errorf("attempt %d failed", g.Attempt)
			}))
			dcol := newCollector()
			subscribe(t, tr, dlt, transport.SubscribeOptions{Group: group}, dcol)
			if !eventually(20*time.Second, func() bool { return dcol.distinct() == 1 }) {
				mu.Lock()
				defer mu.Unlock()
				t.Fatalf("not dead-lettered; attempts seen %v", attempts)
			}
			mu.Lock()
			defer mu.Unlock()
			if fmt.Sprint(attempts) != "[1 2 3 4]" {
				t.Errorf("attempts %v, want [1 2 3 4]", attempts)
			}
			if a := dcol.snapshot()[0].Headers[message.HeaderDeadLetterAttempts]; a != "4" {
				t.Errorf("dead-letter attempts header %q, want 4", a)
			}
		})
	}
}

// TestNativeDeadLetterExchange: with Options.DeadLetterExchange, a
// permanent failure without a DeadLetterTopic is rejected into the queue's
// x-dead-letter-exchange by the broker.
func TestNativeDeadLetterExchange(t *testing.T) {
	url := brokerURL(t)
	_, ch := rawChannel(t, url)
	dlx, dlq := uniq("dlx"), uniq("dlx-q")
	if err := ch.ExchangeDeclare(dlx, "fanout", true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(dlq, true, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	if err := ch.QueueBind(dlq, "", dlx, false, nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, c := rawChannel(t, url)
		_, _ = c.QueueDelete(dlq, false, false, false)
		_ = c.ExchangeDelete(dlx, false, false)
	})
	for _, qt := range []string{QueueClassic, QueueQuorum} {
		t.Run(qt, func(t *testing.T) {
			tr := openT(t, Options{URL: url, QueueType: qt, DeadLetterExchange: dlx})
			topic, group := uniq("native-dlx-"+qt), "g"
			cleanupTopology(t, url, topic, []string{group})
			o := transport.SubscribeOptions{Group: group}
			if err := tr.Declare(ctxT(t), topic, o); err != nil {
				t.Fatal(err)
			}
			m := &message.Message{Payload: []byte("poison"), Headers: message.Header{"why": "test"}}
			if err := tr.Publish(ctxT(t), topic, m); err != nil {
				t.Fatal(err)
			}
			var calls sync.WaitGroup
			calls.Add(1)
			var once sync.Once
			subscribe(t, tr, topic, o, message.HandlerFunc(func(ctx context.Context, g *message.Message) error {
				once.Do(calls.Done)
				return message.Permanent(errors.New("bad"))
			}))
			var d amqp.Delivery
			if !eventually(15*time.Second, func() bool {
				var ok bool
				var err error
				d, ok, err = ch.Get(dlq, true)
				return err == nil && ok
			}) {
				t.Fatal("message did not reach the dead-letter exchange's queue")
			}
			calls.Wait()
			if d.MessageId != m.ID || string(d.Body) != "poison" || d.Headers["why"] != "test" {
				t.Errorf("dead-lettered delivery id %q body %q headers %v", d.MessageId, d.Body, d.Headers)
			}
			if _, ok := d.Headers["x-death"]; !ok {
				t.Errorf("no x-death header: the broker did not dead-letter it")
			}
		})
	}
}

// TestTopologyMismatch: declaring a group whose queue exists with other
// settings is a clear error (ErrTopology with the broker's 406), from
// Declare and from Subscribe at once; so is an exchange of another type.
func TestTopologyMismatch(t *testing.T) {
	url := brokerURL(t)
	classic := openT(t, Options{URL: url})
	quorum := openT(t, Options{URL: url, QueueType: QueueQuorum})
	topic, group := uniq("mismatch"), "g"
	cleanupTopology(t, url, topic, []string{group})
	o := transport.SubscribeOptions{Group: group}
	if err := classic.Declare(ctxT(t), topic, o); err != nil {
		t.Fatal(err)
	}
	err := quorum.Declare(ctxT(t), topic, o)
	var ae *amqp.Error
	if !errors.Is(err, ErrTopology) || !errors.As(err, &ae) || ae.Code != amqp.PreconditionFailed {
		t.Fatalf("Declare with another queue type = %v, want ErrTopology wrapping a 406", err)
	}
	t.Logf("Declare: %v", err)
	done := make(chan error, 1)
	go func() { done <- quorum.Subscribe(ctxT(t), topic, newCollector(), o) }()
	select {
	case err := <-done:
		if !errors.Is(err, ErrTopology) {
			t.Errorf("Subscribe with another queue type = %v, want ErrTopology", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Subscribe did not fail at once on a mismatched queue")
	}
	fan := openT(t, Options{URL: url, ExchangeType: ExchangeFanout})
	if err := fan.Publish(ctxT(t), topic, message.New([]byte("x"))); !errors.Is(err, ErrTopology) {
		t.Errorf("Publish to a topic exchange declared as fanout = %v, want ErrTopology", err)
	}
	// The transport still works after the channel errors.
	if err := classic.Publish(ctxT(t), topic, message.New([]byte("ok"))); err != nil {
		t.Errorf("Publish after channel errors: %v", err)
	}
}

// TestExchangeTypes: topic wildcards per group, direct, fanout and headers
// exchanges are all reachable and route as RabbitMQ does.
func TestExchangeTypes(t *testing.T) {
	url := brokerURL(t)
	ctx := ctxT(t)
	wait := func(t *testing.T, c *collector, want ...string) {
		t.Helper()
		ok := eventually(10*time.Second, func() bool { return c.distinct() >= len(want) })
		time.Sleep(200 * time.Millisecond) // bounded: nothing extra arrives
		var got []string
		for _, m := range c.snapshot() {
			got = append(got, string(m.Payload))
		}
		if !ok || fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("received %v, want %v", got, want)
		}
	}
	key := func(p, k string) *message.Message { m := message.New([]byte(p)); m.Key = k; return m }
	t.Run("topic", func(t *testing.T) {
		tr := openT(t, Options{URL: url, GroupBindingKeys: map[string][]string{"eu": {"eu.*"}, "orders": {"*.order.#"}}})
		topic := uniq("x-topic")
		cleanupTopology(t, url, topic, []string{"eu", "orders", "all"})
		eu, orders, all := newCollector(), newCollector(), newCollector()
		for g, c := range map[string]*collector{"eu": eu, "orders": orders, "all": all} {
			if err := tr.Declare(ctx, topic, transport.SubscribeOptions{Group: g}); err != nil {
				t.Fatal(err)
			}
			subscribe(t, tr, topic, transport.SubscribeOptions{Group: g}, c)
		}
		if err := tr.Publish(ctx, topic, key("1", "eu.paris"), key("2", "us.order.new.big"), key("3", "eu.shipping")); err != nil {
			t.Fatal(err)
		}
		wait(t, eu, "1", "3")
		wait(t, orders, "2")
		wait(t, all, "1", "2", "3")
	})
	t.Run("direct", func(t *testing.T) {
		tr := openT(t, Options{URL: url, ExchangeType: ExchangeDirect, GroupBindingKeys: map[string][]string{"red": {"red"}, "blue": {"blue", "navy"}}})
		topic := uniq("x-direct")
		cleanupTopology(t, url, topic, []string{"red", "blue"})
		red, blue := newCollector(), newCollector()
		for g, c := range map[string]*collector{"red": red, "blue": blue} {
			if err := tr.Declare(ctx, topic, transport.SubscribeOptions{Group: g}); err != nil {
				t.Fatal(err)
			}
			subscribe(t, tr, topic, transport.SubscribeOptions{Group: g}, c)
		}
		if err := tr.Publish(ctx, topic, key("1", "red"), key("2", "navy"), key("3", "blue")); err != nil {
			t.Fatal(err)
		}
		wait(t, red, "1")
		wait(t, blue, "2", "3")
	})
	t.Run("fanout", func(t *testing.T) {
		tr := openT(t, Options{URL: url, ExchangeType: ExchangeFanout})
		topic := uniq("x-fanout")
		cleanupTopology(t, url, topic, []string{"a", "b"})
		a, b := newCollector(), newCollector()
		for g, c := range map[string]*collector{"a": a, "b": b} {
			if err := tr.Declare(ctx, topic, transport.SubscribeOptions{Group: g}); err != nil {
				t.Fatal(err)
			}
			subscribe(t, tr, topic, transport.SubscribeOptions{Group: g}, c)
		}
		if err := tr.Publish(ctx, topic, key("1", "whatever"), key("2", "")); err != nil {
			t.Fatal(err)
		}
		wait(t, a, "1", "2")
		wait(t, b, "1", "2")
	})
	t.Run("headers", func(t *testing.T) {
		tr := openT(t, Options{URL: url, ExchangeType: ExchangeHeaders, BindingHeaders: map[string]string{"region": "eu"}})
		topic := uniq("x-headers")
		cleanupTopology(t, url, topic, []string{"eu"})
		c := newCollector()
		if err := tr.Declare(ctx, topic, transport.SubscribeOptions{Group: "eu"}); err != nil {
			t.Fatal(err)
		}
		subscribe(t, tr, topic, transport.SubscribeOptions{Group: "eu"}, c)
		m1 := message.New([]byte("1"))
		m1.Headers = message.Header{"region": "eu"}
		if err := tr.Publish(ctx, topic, m1); err != nil {
			t.Fatal(err)
		}
		m2 := message.New([]byte("2"))
		m2.Headers = message.Header{"region": "us"}
		if err := tr.Publish(ctx, topic, m2); !errors.Is(err, ErrUnroutable) {
			t.Errorf("unmatched headers publish = %v, want ErrUnroutable", err)
		}
		wait(t, c, "1")
	})
	t.Run("routing_key_header", func(t *testing.T) {
		tr := openT(t, Options{URL: url, RoutingKeyHeader: "route", GroupBindingKeys: map[string][]string{"a": {"a.#"}}})
		topic := uniq("x-rkh")
		cleanupTopology(t, url, topic, []string{"a"})
		c := newCollector()
		if err := tr.Declare(ctx, topic, transport.SubscribeOptions{Group: "a"}); err != nil {
			t.Fatal(err)
		}
		subscribe(t, tr, topic, transport.SubscribeOptions{Group: "a"}, c)
		m := message.New([]byte("1"))
		m.Key = "not-the-route"
		m.Headers = message.Header{"route": "a.b"}
		if err := tr.Publish(ctx, topic, m); err != nil {
			t.Fatal(err)
		}
		wait(t, c, "1")
		if g := c.snapshot()[0]; g.Key != "not-the-route" || g.Headers["route"] != "a.b" {
			t.Errorf("key %q headers %v", g.Key, g.Headers)
		}
	})
}

// TestOpenURL: every parameter maps onto Options, unknown ones are errors,
// and credentials never appear in errors.
func TestOpenURL(t *testing.T) {
	url := brokerURL(t)
	ctx := ctxT(t)
	u := strings.TrimSuffix(url, "/") + "/?exchange_type=fanout&queue_type=quorum&binding_keys=a.*,b.%23&binding_headers=x:1,y:2&binding_match=any" +
		"&routing_key_header=rk&dead_letter_exchange=dlx&allow_unroutable=true&publish_channels=2&publish_retry=5s&no_publish_retry=true" +
		"&reconnect_min=50ms&reconnect_max=2s&max_payload=1048576&connection_name=courier-url-test&heartbeat=5s&dial_timeout=3s" +
		"&group_binding_keys=eu:eu.*|eu.%23,audit:%23"
	c, err := transport.Open(ctx, u)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer c.Close()
	tr := c.(*Transport)
	o := tr.o
	if o.ExchangeType != ExchangeFanout || o.QueueType != QueueQuorum || fmt.Sprint(o.BindingKeys) != "[a.* b.#]" ||
		o.BindingHeaders["x"] != "1" || o.BindingHeaders["y"] != "2" || o.BindingMatch != "any" || o.RoutingKeyHeader != "rk" ||
		o.DeadLetterExchange != "dlx" || !o.AllowUnroutable || o.PublishChannels != 2 || o.PublishRetry != 5*time.Second ||
		!o.NoPublishRetry || o.ReconnectMin != 50*time.Millisecond || o.ReconnectMax != 2*time.Second || o.MaxPayload != 1<<20 ||
		o.ConnectionName != "courier-url-test" || o.Heartbeat != 5*time.Second || o.DialTimeout != 3*time.Second ||
		fmt.Sprint(o.GroupBindingKeys) != "map[audit:[#] eu:[eu.* eu.#]]" {
		t.Errorf("options from URL: %+v", o)
	}
	if tr.Capabilities().Limits.MaxPayload != 1<<20 {
		t.Errorf("MaxPayload limit %d", tr.Capabilities().Limits.MaxPayload)
	}
	if _, err := transport.Open(ctx, url+"?bogus=1"); err == nil || !strings.Contains(err.Error(), "bogus") || !strings.Contains(err.Error(), "exchange_type") {
		t.Errorf("unknown parameter: %v", err)
	}
	const secret = "s3cr3t-pw"
	bad := strings.Replace(url, "guest:guest@", "guest:"+secret+"@", 1)
	if _, err := transport.Open(ctx, bad); err == nil || strings.Contains(err.Error(), secret) {
		t.Errorf("bad password: err %v (must be an error without the password)", err)
	} else {
		t.Logf("bad password error: %v", err)
	}
	if _, err := New(ctx, Options{URL: url, Password: secret}); err == nil || strings.Contains(err.Error(), secret) {
		t.Errorf("bad Options.Password: err %v", err)
	}
	if _, err := transport.Open(ctx, "amqp://127.0.0.1:1/?ca_file=x"); err == nil || !strings.Contains(err.Error(), "amqps") {
		t.Errorf("TLS parameter on amqp://: %v", err)
	}
}

// TestCredentialOverrides: username= alone keeps the URL's password (it
// used to drop it, failing the login), password= alone keeps its user
// name, and a given password replaces the URL's.
func TestCredentialOverrides(t *testing.T) {
	url := brokerURL(t)
	if !strings.Contains(url, "guest:guest@") {
		t.Skipf("broker URL %s does not use guest:guest", transport.Redact(url))
	}
	ctx := ctxT(t)
	base := strings.TrimSuffix(url, "/")
	wrong := strings.Replace(base, "guest:guest@", "guest:wrong@", 1)
	for _, u := range []string{
		base + "/?username=guest",
		wrong + "/?password=guest",
		wrong + "/?username=guest&password=guest",
	} {
		c, err := transport.Open(ctx, u)
		if err != nil {
			t.Errorf("Open %s: %v", transport.Redact(u), err)
			continue
		}
		if err := c.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	}
}

// TestConnectionLoss: the server force-closes the transports' connections
// (rabbitmqctl close_connection, scoped to this test's connection names)
// while messages flow; both reconnect, the consumer resumes, and every
// message Publish confirmed is delivered.
func TestConnectionLoss(t *testing.T) {
	url := brokerURL(t)
	name := uniq("courier-connloss")
	var kill func(ctx context.Context) error
	if url == testenv.RabbitMQ.Default {
		kill = func(ctx context.Context) error {
			n, err := testenv.CloseRabbitConnections(ctx, name)
			if err == nil && n < 4 {
				err = fmt.Errorf("closed %d connections, want 4 (two per transport)", n)
			}
			return err
		}
	} else {
		node, err := testenv.StartRabbitMQ(t)
		if err != nil {
			t.Skipf("no way to force-close connections on %s: %v", transport.Redact(url), err)
		}
		url, kill = node.URL(), node.CloseAllConnections
	}
	pub := openT(t, Options{URL: url, ConnectionName: name + "-pub", ReconnectMax: 500 * time.Millisecond})
	sub := openT(t, Options{URL: url, ConnectionName: name + "-sub", ReconnectMax: 500 * time.Millisecond})
	topic, group := uniq("connloss"), "g"
	cleanupTopology(t, url, topic, []string{group})
	o := transport.SubscribeOptions{Group: group, Concurrency: 4}
	if err := sub.Declare(ctxT(t), topic, o); err != nil {
		t.Fatal(err)
	}
	col := newCollector()
	errc := subscribe(t, sub, topic, o, col)
	n := 300
	if testing.Short() {
		n = 100
	}
	var mu sync.Mutex
	var confirmed []string
	var failed int
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		for i := range n {
			m := message.New([]byte("m-" + strconv.Itoa(i)))
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			err := pub.Publish(ctx, topic, m)
			cancel()
			mu.Lock()
			if err == nil {
				confirmed = append(confirmed, m.ID)
			} else {
				failed++
			}
			mu.Unlock()
			time.Sleep(2 * time.Millisecond)
		}
	}()
	if !eventually(20*time.Second, func() bool { return col.distinct() >= n/4 }) {
		t.Fatalf("only %d delivered before the forced close", col.distinct())
	}
	if err := kill(ctxT(t)); err != nil {
		t.Fatalf("force-close: %v", err)
	}
	<-pubDone
	mu.Lock()
	want := append([]string(nil), confirmed...)
	t.Logf("%d confirmed, %d failed publishes around the forced close", len(want), failed)
	mu.Unlock()
	if len(want) < n*9/10 {
		t.Errorf("only %d of %d publishes confirmed: publish retry should have resent across the reconnect", len(want), n)
	}
	if !eventually(30*time.Second, func() bool {
		for _, id := range want {
			if !col.has(id) {
				return false
			}
		}
		return true
	}) {
		missing := 0
		for _, id := range want {
			if !col.has(id) {
				missing++
			}
		}
		t.Fatalf("%d of %d confirmed messages never delivered after the reconnect", missing, len(want))
	}
	select {
	case err := <-errc:
		t.Fatalf("Subscribe returned during the outage: %v", err)
	default:
	}
	var cs Connections
	if !pub.As(&cs) || cs.Publish.IsClosed() || cs.Consume.IsClosed() || cs.Publish == cs.Consume {
		t.Error("publisher's connections not reconnected")
	}
}

// TestConsumerCancelledByBroker: when the group's queue is deleted under a
// running subscription (the broker sends basic.cancel), Subscribe
// re-declares it and resumes instead of going quiet.
func TestConsumerCancelledByBroker(t *testing.T) {
	url := brokerURL(t)
	tr := openT(t, Options{URL: url})
	topic, group := uniq("cancelled"), "g"
	cleanupTopology(t, url, topic, []string{group})
	o := transport.SubscribeOptions{Group: group}
	if err := tr.Declare(ctxT(t), topic, o); err != nil {
		t.Fatal(err)
	}
	col := newCollector()
	errc := subscribe(t, tr, topic, o, col)
	first := message.New([]byte("1"))
	if err := tr.Publish(ctxT(t), topic, first); err != nil {
		t.Fatal(err)
	}
	if !eventually(10*time.Second, func() bool { return col.has(first.ID) }) {
		t.Fatal("first message not delivered")
	}
	_, ch := rawChannel(t, url)
	if _, err := ch.QueueDelete(QueueName(topic, group), false, false, false); err != nil {
		t.Fatal(err)
	}
	second := message.New([]byte("2"))
	if !eventually(10*time.Second, func() bool {
		return tr.Publish(ctxT(t), topic, second) == nil
	}) {
		t.Fatal("queue never re-declared")
	}
	if !eventually(10*time.Second, func() bool { return col.has(second.ID) }) {
		t.Fatal("subscription did not resume after the broker cancelled its consumer")
	}
	select {
	case err := <-errc:
		t.Fatalf("Subscribe returned: %v", err)
	default:
	}
}

// TestCloseAndShutdown: Shutdown waits for a running handler, lands its
// ack, and then Subscribe and Publish return ErrClosed.
func TestCloseAndShutdown(t *testing.T) {
	url := brokerURL(t)
	tr := openT(t, Options{URL: url})
	topic, group := uniq("close"), "g"
	cleanupTopology(t, url, topic, []string{group})
	o := transport.SubscribeOptions{Group: group}
	if err := tr.Declare(ctxT(t), topic, o); err != nil {
		t.Fatal(err)
	}
	started := make(chan struct{})
	release := make(chan struct{})
	var once sync.Once
	done := make(chan error, 1)
	go func() {
		done <- tr.Subscribe(context.Background(), topic, message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			once.Do(func() { close(started) })
			<-release
			return nil
		}), o)
	}()
	m := message.New([]byte("x"))
	if err := tr.Publish(ctxT(t), topic, m); err != nil {
		t.Fatal(err)
	}
	<-started
	sd := make(chan error, 1)
	go func() { sd <- tr.Shutdown(ctxT(t)) }()
	time.Sleep(100 * time.Millisecond) // bounded: Shutdown must wait for the handler
	select {
	case err := <-sd:
		t.Fatalf("Shutdown returned %v while a handler ran", err)
	default:
	}
	close(release)
	if err := <-sd; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if err := <-done; !errors.Is(err, transport.ErrClosed) {
		t.Errorf("Subscribe after Shutdown = %v, want ErrClosed", err)
	}
	if err := tr.Publish(ctxT(t), topic, message.New(nil)); !errors.Is(err, transport.ErrClosed) {
		t.Errorf("Publish after Shutdown = %v", err)
	}
	// The acked message is gone from the queue.
	_, ch := rawChannel(t, url)
	q, err := ch.QueueDeclarePassive(QueueName(topic, group), true, false, false, false, nil)
	if err != nil || q.Messages != 0 {
		t.Errorf("queue after Shutdown: %+v, %v; want empty", q, err)
	}
}

// TestResumeRefused: when a subscription must re-declare (its queue was
// deleted) and the broker refuses because the queue now exists with other
// settings, Subscribe returns that ErrTopology error instead of staying
// alive without a consumer.
func TestResumeRefused(t *testing.T) {
	url := brokerURL(t)
	tr := openT(t, Options{URL: url})
	topic, group := uniq("resume-refused"), "g"
	cleanupTopology(t, url, topic, []string{group})
	o := transport.SubscribeOptions{Group: group}
	if err := tr.Declare(ctxT(t), topic, o); err != nil {
		t.Fatal(err)
	}
	col := newCollector()
	errc := subscribe(t, tr, topic, o, col)
	m := message.New([]byte("1"))
	if err := tr.Publish(ctxT(t), topic, m); err != nil {
		t.Fatal(err)
	}
	if !eventually(10*time.Second, func() bool { return col.has(m.ID) }) {
		t.Fatal("not delivered")
	}
	_, ch := rawChannel(t, url)
	q := QueueName(topic, group)
	if _, err := ch.QueueDelete(q, false, false, false); err != nil {
		t.Fatal(err)
	}
	if _, err := ch.QueueDeclare(q, true, false, false, false, amqp.Table{"x-max-length": int64(10)}); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		var ae *amqp.Error
		if !errors.Is(err, ErrTopology) || !errors.As(err, &ae) || ae.Code != amqp.PreconditionFailed {
			t.Fatalf("Subscribe = %v, want ErrTopology wrapping a 406", err)
		}
		t.Logf("Subscribe: %v", err)
	case <-time.After(15 * time.Second):
		t.Fatal("Subscribe kept running without a consumer")
	}
}
