package sqstransport_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/aws/smithy-go"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	sqstransport "github.com/courierkit/courier/transport/sqs"
)

// collector gathers received messages for a test.
type collector struct {
	mu   sync.Mutex
	msgs []*message.Message
	ch   chan struct{}
}

func newCollector() *collector { return &collector{ch: make(chan struct{}, 1)} }

func (c *collector) Handle(_ context.Context, m *message.Message) error {
	c.mu.Lock()
	c.msgs = append(c.msgs, m)
	c.mu.Unlock()
	select {
	case c.ch <- struct{}{}:
	default:
	}
	return nil
}

// wait blocks until n messages arrived or d passed.
func (c *collector) wait(t testing.TB, n int, d time.Duration) []*message.Message {
	t.Helper()
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		c.mu.Lock()
		got := append([]*message.Message(nil), c.msgs...)
		c.mu.Unlock()
		if len(got) >= n {
			return got
		}
		select {
		case <-c.ch:
		case <-deadline.C:
			t.Fatalf("got %d of %d messages within %s", len(got), n, d)
		}
	}
}

// subscribe runs Subscribe in the background until the test ends.
func subscribe(t testing.TB, tr transport.Conn, topic string, h message.Handler, o transport.SubscribeOptions) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tr.Subscribe(ctx, topic, h, o) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, transport.ErrClosed) {
				t.Errorf("Subscribe: %v", err)
			}
		case <-time.After(15 * time.Second):
			t.Errorf("Subscribe did not return within 15s of cancel")
		}
	})
}

func TestRoundTripBothModes(t *testing.T) {
	for _, mode := range []sqstransport.Mode{sqstransport.ModeSNS, sqstransport.ModeSQS} {
		t.Run(mode.String(), func(t *testing.T) {
			tr := open(t, mode, sqstransport.Options{})
			topic := name(t)
			ctx := context.Background()
			if err := tr.Declare(ctx, topic, transport.SubscribeOptions{Group: "g"}); err != nil {
				t.Fatal(err)
			}
			msgs := []*message.Message{
				{ID: "id-1", Key: "k1", Payload: []byte("hello"), Headers: message.Header{"a": "1"}},
				{ID: "id-2", Payload: []byte{0, 1, 2, 0xff, 0xfe}},
				{ID: "id-3", Payload: nil},
				{ID: "id \x01 weird", Key: "k\x00y", Payload: []byte("\uffff"), Headers: message.Header{"": "x", "bad name/ü": "v\x00", "empty": ""}},
			}
			// An empty header name is refused by PreparePublish.
			if err := tr.Publish(ctx, topic, msgs...); !errors.Is(err, transport.ErrInvalidMessage) {
				t.Fatalf("empty header name: got %v, want ErrInvalidMessage", err)
			}
			delete(msgs[3].Headers, "")
			if err := tr.Publish(ctx, topic, msgs...); err != nil {
				t.Fatal(err)
			}
			c := newCollector()
			subscribe(t, tr, topic, c, transport.SubscribeOptions{Group: "g"})
			got := c.wait(t, len(msgs), 20*time.Second)
			byID := map[string]*message.Message{}
			for _, m := range got {
				byID[m.ID] = m
			}
			for _, want := range msgs {
				m := byID[want.ID]
				if m == nil {
					t.Fatalf("message %q not received", want.ID)
				}
				if m.Key != want.Key || string(m.Payload) != string(want.Payload) || len(m.Headers) != len(want.Headers) {
					t.Errorf("message %q: got key %q payload %q headers %v; want %q %q %v", want.ID, m.Key, m.Payload, m.Headers, want.Key, want.Payload, want.Headers)
				}
				for k, v := range want.Headers {
					if m.Headers[k] != v {
						t.Errorf("message %q header %q = %q, want %q", want.ID, k, m.Headers[k], v)
					}
				}
				if m.Topic != topic || m.Attempt < 1 || m.Time.IsZero() {
					t.Errorf("message %q: topic %q attempt %d time %v", want.ID, m.Topic, m.Attempt, m.Time)
				}
				var sm *sqstypes.Message
				if !m.As(&sm) || sm.ReceiptHandle == nil {
					t.Errorf("As(*types.Message) failed")
				}
			}
		})
	}
}

// TestHeaders25 round-trips 25 headers, more than SQS's 10 attributes.
func TestHeaders25(t *testing.T) {
	tr := open(t, sqstransport.ModeSNS, sqstransport.Options{})
	topic := name(t)
	ctx := context.Background()
	if err := tr.Declare(ctx, topic, transport.SubscribeOptions{Group: "g"}); err != nil {
		t.Fatal(err)
	}
	h := message.Header{}
	for i := range 25 {
		h[fmt.Sprintf("h-%02d", i)] = strings.Repeat("v", i+1)
	}
	h["with space"] = "and ünïcode"
	h["AWS.reserved"] = "x"
	h["courier"] = "my own"
	m := &message.Message{Payload: []byte("p"), Headers: h}
	if err := tr.Publish(ctx, topic, m); err != nil {
		t.Fatal(err)
	}
	c := newCollector()
	subscribe(t, tr, topic, c, transport.SubscribeOptions{Group: "g"})
	got := c.wait(t, 1, 20*time.Second)[0]
	if got.ID != m.ID {
		t.Fatalf("id %q, want %q", got.ID, m.ID)
	}
	if len(got.Headers) != len(h) {
		t.Fatalf("got %d headers, want %d: %v", len(got.Headers), len(h), got.Headers)
	}
	for k, v := range h {
		if got.Headers[k] != v {
			t.Errorf("header %q = %q, want %q", k, got.Headers[k], v)
		}
	}
	var sm *sqstypes.Message
	if !got.As(&sm) {
		t.Fatal("As failed")
	}
	if n := len(sm.MessageAttributes); n > 10 {
		t.Fatalf("%d SQS message attributes, want at most 10", n)
	}
}

// TestOversize: a message over 256 KiB once encoded fails before sending.
func TestOversize(t *testing.T) {
	for _, mode := range []sqstransport.Mode{sqstransport.ModeSNS, sqstransport.ModeSQS} {
		t.Run(mode.String(), func(t *testing.T) {
			tr := open(t, mode, sqstransport.Options{})
			topic := name(t)
			ctx := context.Background()
			ok := &message.Message{Payload: []byte("fine")}
			big := &message.Message{Payload: []byte(strings.Repeat("x", 262144))}
			err := tr.Publish(ctx, topic, ok, big)
			var le *transport.LimitError
			if !errors.As(err, &le) || !errors.Is(err, transport.ErrLimit) || le.Index != 1 {
				t.Fatalf("got %v, want a LimitError for message 1", err)
			}
			// Binary payloads travel as base64: 200 000 bytes of them do not fit.
			bin := make([]byte, 200000)
			for i := range bin {
				bin[i] = byte(i)
			}
			if err := tr.Publish(ctx, topic, &message.Message{Payload: bin}); !errors.Is(err, transport.ErrLimit) {
				t.Fatalf("binary 200000 bytes: got %v, want ErrLimit", err)
			}
			// The largest binary payload declared fits.
			max := make([]byte, tr.Capabilities().Limits.MaxPayload)
			for i := range max {
				max[i] = byte(i * 7)
			}
			big.ID = strings.Repeat("i", 64)
			big.Payload = max
			if err := tr.Declare(ctx, topic, transport.SubscribeOptions{Group: "g"}); err != nil {
				t.Fatal(err)
			}
			if err := tr.Publish(ctx, topic, big); err != nil {
				t.Fatalf("MaxPayload binary: %v", err)
			}
			c := newCollector()
			subscribe(t, tr, topic, c, transport.SubscribeOptions{Group: "g"})
			got := c.wait(t, 1, 20*time.Second)[0]
			if string(got.Payload) != string(max) {
				t.Fatalf("payload of %d bytes came back as %d bytes", len(max), len(got.Payload))
			}
		})
	}
}

// TestVisibilityExtension: a handler running three times longer than the
// visibility timeout keeps its message; it is handled once.
func TestVisibilityExtension(t *testing.T) {
	tr := open(t, sqstransport.ModeSQS, sqstransport.Options{})
	topic := name(t)
	ctx := context.Background()
	if err := tr.Publish(ctx, topic, message.New([]byte("slow"))); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	calls := 0
	done := make(chan struct{})
	// Concurrency 2: a redelivery would reach the second handler at once.
	subscribe(t, tr, topic, message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		mu.Lock()
		calls++
		first := calls == 1
		mu.Unlock()
		if !first {
			return nil
		}
		select {
		case <-time.After(3500 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
		close(done)
		return nil
	}), transport.SubscribeOptions{AckWait: time.Second, Concurrency: 2})
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("slow handler did not finish")
	}
	// Past another visibility timeout: still one call.
	time.Sleep(1500 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if calls != 1 {
		t.Fatalf("handled %d times while its handler held it for 3.5×AckWait; want 1", calls)
	}
}

// TestRedrive: with MaxReceiveCount, SQS's own redrive moves a message that
// keeps failing to the dead-letter queue, and a permanent failure without
// a dead-letter topic is moved there at once; both arrive intact.
func TestRedrive(t *testing.T) {
	for _, mode := range []sqstransport.Mode{sqstransport.ModeSNS, sqstransport.ModeSQS} {
		t.Run(mode.String(), func(t *testing.T) {
			tr := open(t, mode, sqstransport.Options{MaxReceiveCount: 2})
			topic := name(t)
			ctx := context.Background()
			o := transport.SubscribeOptions{Group: "g", AckWait: 2 * time.Second}
			if err := tr.Declare(ctx, topic, o); err != nil {
				t.Fatal(err)
			}
			failing := &message.Message{ID: "failing", Payload: []byte("f"), Headers: message.Header{"x": "1"}}
			poison := &message.Message{ID: "poison", Payload: []byte("p")}
			if err := tr.Publish(ctx, topic, failing, poison); err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex
			calls := map[string]int{}
			subscribe(t, tr, topic, message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
				mu.Lock()
				calls[m.ID]++
				mu.Unlock()
				if m.ID == "poison" {
					return message.Permanent(errors.New("bad"))
				}
				return errors.New("try again")
			}), o)

			// The dead-letter queue: in sns:// it is "<topic>-<group>-dlq",
			// which an sqs:// transport reads as a topic.
			dlqTopic := topic + "-dlq"
			if mode == sqstransport.ModeSNS {
				dlqTopic = topic + "-g-dlq"
			}
			reader := open(t, sqstransport.ModeSQS, sqstransport.Options{})
			c := newCollector()
			subscribe(t, reader, dlqTopic, c, transport.SubscribeOptions{})
			got := c.wait(t, 2, 20*time.Second)
			byID := map[string]*message.Message{}
			for _, m := range got {
				byID[m.ID] = m
			}
			if m := byID["failing"]; m == nil || string(m.Payload) != "f" || m.Headers["x"] != "1" {
				t.Errorf("redriven message = %+v, want the original", m)
			}
			if m := byID["poison"]; m == nil || string(m.Payload) != "p" {
				t.Errorf("permanently failed message = %+v, want the original", m)
			}
			mu.Lock()
			defer mu.Unlock()
			if calls["poison"] != 1 {
				t.Errorf("poison handled %d times, want 1", calls["poison"])
			}
			if calls["failing"] < 2 {
				t.Errorf("failing message handled %d times, want at least MaxReceiveCount (2)", calls["failing"])
			}
		})
	}
}

// TestFIFO: Key becomes the message group (order kept per key), ID the
// deduplication id (a second publish of an ID is dropped by SQS).
func TestFIFO(t *testing.T) {
	for _, mode := range []sqstransport.Mode{sqstransport.ModeSQS, sqstransport.ModeSNS} {
		t.Run(mode.String(), func(t *testing.T) {
			// One receiver: goaws's FIFO group lock is per queue, not per
			// group, and can let two receivers take one group's messages
			// (AWS does not); see the package doc.
			tr := open(t, mode, sqstransport.Options{FIFO: true, Receivers: 1})
			if !tr.Capabilities().OrderedByKey {
				t.Fatal("FIFO transport does not declare OrderedByKey")
			}
			topic := name(t)
			ctx := context.Background()
			o := transport.SubscribeOptions{Group: "g", Concurrency: 4, MaxInFlight: 20, OrderedByKey: true}
			if err := tr.Declare(ctx, topic, o); err != nil {
				t.Fatal(err)
			}
			const keys, per = 4, 25
			var msgs []*message.Message
			for i := range per {
				for k := range keys {
					msgs = append(msgs, &message.Message{ID: fmt.Sprintf("m-%d-%d", k, i), Key: fmt.Sprintf("key-%d", k), Payload: []byte(fmt.Sprint(i))})
				}
			}
			if err := tr.Publish(ctx, topic, msgs...); err != nil {
				t.Fatal(err)
			}
			// The same ID again: SQS deduplicates it. goaws's SNS ignores
			// MessageDeduplicationId (AWS honours it), so only sqs:// shows it.
			dedup := mode == sqstransport.ModeSQS || emu == nil
			if dedup {
				if err := tr.Publish(ctx, topic, &message.Message{ID: "m-0-0", Key: "key-0", Payload: []byte("dup")}); err != nil {
					t.Fatal(err)
				}
			}
			var mu sync.Mutex
			next := map[string]int{}
			c := newCollector()
			subscribe(t, tr, topic, message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
				mu.Lock()
				want := next[m.Key]
				next[m.Key] = want + 1
				mu.Unlock()
				if string(m.Payload) != fmt.Sprint(want) {
					t.Errorf("key %s: got %q, want %d", m.Key, m.Payload, want)
				}
				time.Sleep(time.Millisecond)
				return c.Handle(ctx, m)
			}), o)
			c.wait(t, keys*per, 30*time.Second)
			time.Sleep(300 * time.Millisecond)
			c.mu.Lock()
			defer c.mu.Unlock()
			if len(c.msgs) != keys*per {
				t.Errorf("handled %d messages, want %d (the duplicate ID must be dropped)", len(c.msgs), keys*per)
			}
		})
	}
}

// TestURL: every option is reachable by URL; unknown parameters and bad
// values are errors that never show credentials.
func TestURL(t *testing.T) {
	u := "sns://AKIDEXAMPLE:s3cr3tKEY@127.0.0.1:4100/?region=eu-west-1&fifo=true&create=false&queue_policy=false&max_receive_count=5&redrive_queue=dead&wait_time=2s&receivers=3&publish_concurrency=2&publish_attempts=4&ack_linger=5ms&goaws=true&profile=p&session_token=tok123"
	pu, _ := url.Parse(u)
	o, err := sqstransport.ParseURL(pu)
	if err != nil {
		t.Fatal(err)
	}
	want := sqstransport.Options{
		Mode: sqstransport.ModeSNS, Region: "eu-west-1", Endpoint: "http://127.0.0.1:4100",
		AccessKeyID: "AKIDEXAMPLE", SecretAccessKey: "s3cr3tKEY", SessionToken: "tok123", Profile: "p",
		FIFO: true, NoCreate: true, NoQueuePolicy: true, MaxReceiveCount: 5, RedriveQueue: "dead",
		WaitTime: 2 * time.Second, Receivers: 3, PublishConcurrency: 2, PublishAttempts: 4,
		AckLinger: 5 * time.Millisecond, Goaws: true,
	}
	if o != want {
		t.Errorf("ParseURL =\n%+v\nwant\n%+v", o, want)
	}
	_, err = transport.Open(context.Background(), "sqs://AKIDEXAMPLE:s3cr3tKEY@127.0.0.1:4100/?bogus=1")
	if err == nil || !strings.Contains(err.Error(), "bogus") || !strings.Contains(err.Error(), "max_receive_count") {
		t.Errorf("unknown parameter: %v; want an error naming it and the accepted ones", err)
	}
	if err != nil && (strings.Contains(err.Error(), "s3cr3tKEY") || strings.Contains(err.Error(), "AKIDEXAMPLE")) {
		t.Errorf("error shows credentials: %v", err)
	}
	if _, err := transport.Open(context.Background(), "sqs:///?wait_time=soon"); err == nil {
		t.Error("bad duration accepted")
	}
	c, err := transport.Open(context.Background(), "sqs://x:y@"+strings.TrimPrefix(endpoint(t), "http://")+"/?region=us-east-1&goaws=true")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	topic := name(t)
	if err := c.Publish(context.Background(), topic, message.New([]byte("via url"))); err != nil {
		t.Fatal(err)
	}
	var sc *sqs.Client
	var nc *sns.Client
	if !c.As(&sc) || !c.As(&nc) || sc == nil || nc == nil {
		t.Error("As did not expose the SQS and SNS clients")
	}
	var other *strings.Builder
	if c.As(&other) {
		t.Error("As accepted an unknown target")
	}
}

// TestNames: dots are refused (SQS and SNS do not allow them); long topic
// and group pairs are shortened into valid queue names.
func TestNames(t *testing.T) {
	tr := open(t, sqstransport.ModeSNS, sqstransport.Options{})
	ctx := context.Background()
	if err := tr.Publish(ctx, "a.b", message.New([]byte("x"))); !errors.Is(err, transport.ErrInvalidName) {
		t.Errorf("topic with a dot: %v, want ErrInvalidName", err)
	}
	topic := name(t) + strings.Repeat("t", 30)
	group := strings.Repeat("g", 70)
	if err := tr.Declare(ctx, topic, transport.SubscribeOptions{Group: group}); err != nil {
		t.Fatalf("long topic and group: %v", err)
	}
	if err := tr.Publish(ctx, topic, message.New([]byte("long"))); err != nil {
		t.Fatal(err)
	}
	c := newCollector()
	subscribe(t, tr, topic, c, transport.SubscribeOptions{Group: group})
	c.wait(t, 1, 20*time.Second)
}

// TestNoCreate: with create=false nothing is created; missing queues and
// topics are errors that keep the SDK's error reachable; existing ones
// work.
func TestNoCreate(t *testing.T) {
	for _, mode := range []sqstransport.Mode{sqstransport.ModeSQS, sqstransport.ModeSNS} {
		t.Run(mode.String(), func(t *testing.T) {
			ctx := context.Background()
			strict := open(t, mode, sqstransport.Options{NoCreate: true})
			topic := name(t)
			err := strict.Publish(ctx, topic, message.New([]byte("x")))
			if err == nil {
				t.Fatal("publish to a missing topic succeeded with create=false")
			}
			var api smithy.APIError
			if mode == sqstransport.ModeSQS && !errors.As(err, &api) {
				t.Errorf("error %v does not expose the SDK's APIError", err)
			}
			// Create what is needed with another transport, then use it.
			creator := open(t, mode, sqstransport.Options{})
			if err := creator.Declare(ctx, topic, transport.SubscribeOptions{Group: "g"}); err != nil {
				t.Fatal(err)
			}
			if err := strict.Publish(ctx, topic, message.New([]byte("x"))); err != nil {
				t.Fatalf("publish to an existing topic with create=false: %v", err)
			}
			c := newCollector()
			subscribe(t, strict, topic, c, transport.SubscribeOptions{Group: "g"})
			c.wait(t, 1, 20*time.Second)
		})
	}
}

// TestLeaseExtensionSlowBroker holds a message in a handler for 2.75
// visibility timeouts while every request on its queue takes 600 ms more
// each way (a loaded broker or machine): the visibility extensions must
// still land before the message's visibility ends, so it is handled once.
// This is the conformance LeaseExtension case that flaked under load on
// FIFO queues, made deterministic.
func TestLeaseExtensionSlowBroker(t *testing.T) {
	if emu == nil {
		t.Skip("needs the in-process goaws (it injects latency)")
	}
	for _, c := range []struct {
		name string
		o    sqstransport.Options
	}{
		{"standard", sqstransport.Options{}},
		{"fifo", sqstransport.Options{FIFO: true, Receivers: 1}},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			tr := open(t, sqstransport.ModeSQS, c.o)
			topic := name(t)
			so := transport.SubscribeOptions{Group: "g", AckWait: 2 * time.Second, Concurrency: 2, MaxInFlight: 2}
			if err := tr.Declare(ctx, topic, so); err != nil {
				t.Fatal(err)
			}
			if err := tr.Publish(ctx, topic, message.New([]byte("slow"))); err != nil {
				t.Fatal(err)
			}
			emu.SlowDown(topic, 600*time.Millisecond)
			defer emu.SlowDown("", 0)
			var calls atomic.Int32
			done := make(chan struct{})
			subscribe(t, tr, topic, message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
				if calls.Add(1) > 1 {
					return nil
				}
				select {
				case <-time.After(5500 * time.Millisecond):
				case <-ctx.Done():
					return ctx.Err()
				}
				close(done)
				return nil
			}), so)
			select {
			case <-done:
			case <-time.After(30 * time.Second):
				t.Fatal("slow handler did not finish")
			}
			if n := calls.Load(); n != 1 {
				t.Fatalf("message handled %d times while one handler held it for 2.75 visibility timeouts", n)
			}
		})
	}
}

// TestPublishQueueLookupOnce: on sqs:// with a redrive policy, only the
// first Publish to a topic looks its queues up (CreateQueue, and
// GetQueueAttributes for the dead-letter queue's ARN); later ones go
// straight to SendMessageBatch.
func TestPublishQueueLookupOnce(t *testing.T) {
	if emu == nil {
		t.Skip("counts requests on the in-process goaws")
	}
	t.Parallel()
	tr := open(t, sqstransport.ModeSQS, sqstransport.Options{MaxReceiveCount: 3})
	topic := name(t)
	ctx := context.Background()
	if err := tr.Publish(ctx, topic, &message.Message{Payload: []byte("first")}); err != nil {
		t.Fatal(err)
	}
	// Other tests run in parallel: compare with a margin that a lookup
	// per Publish would exceed.
	attrs, creates, sends := emu.Calls("GetQueueAttributes"), emu.Calls("CreateQueue"), emu.Calls("SendMessageBatch")
	const n = 50
	for i := range n {
		if err := tr.Publish(ctx, topic, &message.Message{Payload: []byte("m" + strconv.Itoa(i))}); err != nil {
			t.Fatal(err)
		}
	}
	if got := emu.Calls("SendMessageBatch") - sends; got < n {
		t.Fatalf("%d SendMessageBatch calls for %d publishes", got, n)
	}
	if a, c := emu.Calls("GetQueueAttributes")-attrs, emu.Calls("CreateQueue")-creates; a >= n/2 || c >= n/2 {
		t.Errorf("%d GetQueueAttributes and %d CreateQueue calls during %d publishes to a known queue", a, c, n)
	}
}
