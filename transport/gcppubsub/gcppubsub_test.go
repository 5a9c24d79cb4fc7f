package gcppubsubtransport_test

import (
	"context"
	"errors"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	gcppubsubtransport "github.com/courierkit/courier/transport/gcppubsub"
)

func TestParseURL(t *testing.T) {
	u, _ := url.Parse("gcppubsub://my-proj?emulator=127.0.0.1:8085&endpoint=e:443&create=false&ack_deadline=20s&max_extension=5m" +
		"&receive_goroutines=8&max_outstanding_messages=10&max_outstanding_bytes=1000&retention=1h&min_backoff=10s&max_backoff=60s" +
		"&dead_letter_topic=dlq-all&max_delivery_attempts=7&publish_delay=5ms&publish_count=50&publish_bytes=5000&publish_timeout=30s")
	o, err := gcppubsubtransport.ParseURL(u)
	if err != nil {
		t.Fatal(err)
	}
	want := gcppubsubtransport.Options{
		Project: "my-proj", Emulator: "127.0.0.1:8085", Endpoint: "e:443", DisableCreate: true,
		AckDeadline: 20 * time.Second, MaxExtension: 5 * time.Minute, ReceiveGoroutines: 8,
		MaxOutstandingMessages: 10, MaxOutstandingBytes: 1000, Retention: time.Hour,
		MinBackoff: 10 * time.Second, MaxBackoff: time.Minute, DeadLetterTopic: "dlq-all", MaxDeliveryAttempts: 7,
		PublishDelay: 5 * time.Millisecond, PublishCount: 50, PublishBytes: 5000, PublishTimeout: 30 * time.Second,
	}
	if o.Project != want.Project || o.Emulator != want.Emulator || o.Endpoint != want.Endpoint || o.DisableCreate != want.DisableCreate ||
		o.AckDeadline != want.AckDeadline || o.MaxExtension != want.MaxExtension || o.ReceiveGoroutines != want.ReceiveGoroutines ||
		o.MaxOutstandingMessages != want.MaxOutstandingMessages || o.MaxOutstandingBytes != want.MaxOutstandingBytes ||
		o.Retention != want.Retention || o.MinBackoff != want.MinBackoff || o.MaxBackoff != want.MaxBackoff ||
		o.DeadLetterTopic != want.DeadLetterTopic || o.MaxDeliveryAttempts != want.MaxDeliveryAttempts ||
		o.PublishDelay != want.PublishDelay || o.PublishCount != want.PublishCount || o.PublishBytes != want.PublishBytes ||
		o.PublishTimeout != want.PublishTimeout {
		t.Errorf("ParseURL = %+v\nwant %+v", o, want)
	}

	for _, bad := range []string{
		"gcppubsub://p?bogus=1",
		"gcppubsub://p?ack_deadline=soon",
		"gcppubsub://p/some-topic",
		"gcppubsub://user:secret@p",
	} {
		u, _ := url.Parse(bad)
		if _, err := gcppubsubtransport.ParseURL(u); err == nil {
			t.Errorf("ParseURL(%s) accepted", bad)
		} else if strings.Contains(err.Error(), "secret") {
			t.Errorf("ParseURL(%s) error shows the secret: %v", bad, err)
		}
	}
	u, _ = url.Parse("gcppubsub://p?bogus=1")
	_, err = gcppubsubtransport.ParseURL(u)
	if err == nil || !strings.Contains(err.Error(), "receive_goroutines") {
		t.Errorf("unknown parameter error %v should list the accepted ones", err)
	}
}

func TestOpenByURL(t *testing.T) {
	addr := emulator(t)
	ctx := ctxT(t)
	c, err := transport.Open(ctx, "gcppubsub://"+project+"?emulator="+addr+"&receive_goroutines=16&ack_deadline=10s")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	topic := name("url")
	rec := &recorder{}
	if err := c.Declare(ctx, topic, transport.SubscribeOptions{Group: "g"}); err != nil {
		t.Fatal(err)
	}
	if err := c.Publish(ctx, topic, message.New([]byte("by url"))); err != nil {
		t.Fatal(err)
	}
	run(t, c, topic, transport.SubscribeOptions{Group: "g"}, rec)
	if !waitFor(20*time.Second, func() bool { return rec.len() == 1 }) {
		t.Fatal("message not received")
	}
	if _, err := transport.Open(ctx, "gcppubsub://?emulator="+addr); err == nil {
		t.Error("Open without a project succeeded")
	}
	if _, err := transport.Open(ctx, "gcppubsub://p?max_delivery_attempts=200"); err == nil {
		t.Error("max_delivery_attempts=200 accepted; Pub/Sub allows 5 to 100")
	}
}

// TestReceivedMessage checks the mapping of ID, Key, headers, payload,
// topic, time and the As targets.
func TestReceivedMessage(t *testing.T) {
	addr := emulator(t)
	tr := open(t, testOptions(addr))
	ctx := ctxT(t)
	topic := name("rm")
	o := transport.SubscribeOptions{Group: "g"}
	if err := tr.Declare(ctx, topic, o); err != nil {
		t.Fatal(err)
	}
	sent := &message.Message{ID: "id-1", Key: "k", Headers: message.Header{"a": "1", "b": ""}, Payload: []byte{0, 1, 2}}
	before := time.Now()
	if err := tr.Publish(ctx, topic, sent); err != nil {
		t.Fatal(err)
	}
	got := make(chan *message.Message, 1)
	var native *pubsub.Message
	var nsub *pubsub.Subscriber
	run(t, tr, topic, o, message.HandlerFunc(func(_ context.Context, m *message.Message) error {
		if !m.As(&native) || !m.As(&nsub) {
			t.Error("As(*pubsub.Message / *pubsub.Subscriber) = false")
		}
		var wrong *int
		if m.As(&wrong) {
			t.Error("As(**int) = true")
		}
		got <- m
		return nil
	}))
	var m *message.Message
	select {
	case m = <-got:
	case <-time.After(20 * time.Second):
		t.Fatal("not received")
	}
	if m.ID != "id-1" || m.Key != "k" || string(m.Payload) != "\x00\x01\x02" || m.Topic != topic || len(m.Headers) != 2 || m.Headers["a"] != "1" {
		t.Errorf("received %+v", m)
	}
	if _, ok := m.Headers["courier-id"]; ok {
		t.Error("the ID attribute leaked into Headers")
	}
	if m.Time.Before(before.Add(-time.Second)) || m.Time.After(time.Now()) {
		t.Errorf("Time %v not the publish time", m.Time)
	}
	if m.Attempt != 0 {
		t.Errorf("Attempt = %d without a dead-letter policy; Pub/Sub does not count then, want 0", m.Attempt)
	}
	if native == nil || native.OrderingKey != "k" || nsub == nil || !strings.HasSuffix(nsub.String(), "/subscriptions/"+topic+".g") {
		t.Errorf("native message %v, subscriber %v", native, nsub)
	}

	var client *pubsub.Client
	if !tr.As(&client) || client == nil {
		t.Error("Transport.As(*pubsub.Client) failed")
	}
	if tr.Publisher(topic) == nil || !tr.Publisher(topic).EnableMessageOrdering {
		t.Error("Publisher(topic) should be the ordered publisher")
	}
}

// TestOrderingKeys: messages of one key are handled in publish order,
// while keys run in parallel.
func TestOrderingKeys(t *testing.T) {
	addr := emulator(t)
	pub, sub := open(t, testOptions(addr)), open(t, testOptions(addr))
	ctx := ctxT(t)
	topic := name("ord")
	o := transport.SubscribeOptions{Group: "g", OrderedByKey: true, Concurrency: 4, MaxInFlight: 16}
	if err := sub.Declare(ctx, topic, o); err != nil {
		t.Fatal(err)
	}
	const keys, per = 3, 12
	for i := range per {
		var batch []*message.Message
		for k := range keys {
			m := message.New([]byte(strconv.Itoa(i)))
			m.Key = "key-" + strconv.Itoa(k)
			batch = append(batch, m)
		}
		if err := pub.Publish(ctx, topic, batch...); err != nil {
			t.Fatal(err)
		}
	}
	var mu sync.Mutex
	next := map[string]int{}
	var total atomic.Int32
	var fail atomic.Int32
	run(t, sub, topic, o, message.HandlerFunc(func(_ context.Context, m *message.Message) error {
		seq, _ := strconv.Atoi(string(m.Payload))
		mu.Lock()
		defer mu.Unlock()
		// Fail one message once: order must hold across its redelivery.
		if m.Key == "key-1" && seq == 5 && fail.Add(1) == 1 {
			return errors.New("once")
		}
		if seq != next[m.Key] {
			t.Errorf("key %s: got %d, want %d", m.Key, seq, next[m.Key])
		}
		next[m.Key] = seq + 1
		total.Add(1)
		return nil
	}))
	if !waitFor(60*time.Second, func() bool { return total.Load() >= keys*per }) {
		t.Fatalf("handled %d of %d", total.Load(), keys*per)
	}
}

// TestOrderedPublishResumes: after a failed publish of a key, the next
// Publish of that key succeeds (the client library pauses a key after an
// error until it is resumed).
func TestOrderedPublishResumes(t *testing.T) {
	addr, srv := emulatorServer(t)
	if srv == nil {
		t.Skip("needs pstest to inject a publish failure")
	}
	tr := open(t, testOptions(addr))
	ctx := ctxT(t)
	topic := name("res")
	if err := tr.Declare(ctx, topic, transport.SubscribeOptions{Group: "g"}); err != nil {
		t.Fatal(err)
	}
	srv.SetAutoPublishResponse(false)
	srv.AddPublishResponse(nil, status.Error(codes.InvalidArgument, "injected failure"))
	m := &message.Message{Key: "k", Payload: []byte("first")}
	err := tr.Publish(ctx, topic, m)
	srv.SetAutoPublishResponse(true)
	if err == nil {
		t.Fatal("Publish succeeded despite the injected failure")
	}
	if status.Code(errors.Unwrap(errors.Unwrap(err))) != codes.InvalidArgument && !strings.Contains(err.Error(), "injected failure") {
		t.Errorf("error %v does not carry the broker's", err)
	}
	var se interface{ GRPCStatus() *status.Status }
	if !errors.As(err, &se) {
		t.Errorf("the SDK's gRPC error is not reachable with errors.As: %v", err)
	}
	if err := tr.Publish(ctx, topic, &message.Message{Key: "k", Payload: []byte("second")}); err != nil {
		t.Fatalf("publish of the same key after a failure: %v (the key stayed paused)", err)
	}
	rec := &recorder{}
	run(t, tr, topic, transport.SubscribeOptions{Group: "g"}, rec)
	if !waitFor(20*time.Second, func() bool { return rec.len() >= 1 }) {
		t.Fatal("resumed message not received")
	}
	if p := string(rec.snapshot()[0].Payload); p != "second" {
		t.Errorf("received %q", p)
	}
}

// TestNativeDeadLetter: with Options.DeadLetterTopic Pub/Sub counts
// attempts and forwards a message after MaxDeliveryAttempts deliveries.
func TestNativeDeadLetter(t *testing.T) {
	addr := emulator(t)
	o := testOptions(addr)
	o.DeadLetterTopic = name("dlq")
	o.MaxDeliveryAttempts = 5
	tr := open(t, o)
	if !tr.Capabilities().AttemptCount {
		t.Error("AttemptCount should be true with a native dead-letter policy")
	}
	ctx := ctxT(t)
	topic := name("src")
	// Catch what Pub/Sub forwards.
	if err := tr.Declare(ctx, o.DeadLetterTopic, transport.SubscribeOptions{Group: "catch"}); err != nil {
		t.Fatal(err)
	}
	so := transport.SubscribeOptions{Group: "g"}
	if err := tr.Declare(ctx, topic, so); err != nil {
		t.Fatal(err)
	}
	sent := &message.Message{ID: "doomed", Headers: message.Header{"h": "v"}, Payload: []byte("p")}
	if err := tr.Publish(ctx, topic, sent); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var attempts []int
	run(t, tr, topic, so, message.HandlerFunc(func(_ context.Context, m *message.Message) error {
		mu.Lock()
		attempts = append(attempts, m.Attempt)
		mu.Unlock()
		return errors.New("always fails")
	}))
	dead := &recorder{}
	run(t, tr, o.DeadLetterTopic, transport.SubscribeOptions{Group: "catch"}, dead)
	if !waitFor(60*time.Second, func() bool { return dead.len() >= 1 }) {
		mu.Lock()
		defer mu.Unlock()
		t.Fatalf("not dead-lettered; attempts seen %v", attempts)
	}
	d := dead.snapshot()[0]
	if d.ID != "doomed" || d.Headers["h"] != "v" || string(d.Payload) != "p" {
		t.Errorf("dead-lettered message %+v", d)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(attempts) != 5 {
		t.Errorf("handled %d times, want 5 (MaxDeliveryAttempts)", len(attempts))
	}
	for i, a := range attempts {
		if a != i+1 {
			t.Errorf("attempts %v, want 1..5", attempts)
			break
		}
	}
}

// TestAttributeLimits: what Pub/Sub cannot carry fails Publish with a
// clear error before anything is sent.
func TestAttributeLimits(t *testing.T) {
	addr, srv := emulatorServer(t)
	tr := open(t, testOptions(addr))
	ctx := ctxT(t)
	topic := name("lim")
	manyHeaders := message.Header{}
	for i := range 100 {
		manyHeaders["h"+strconv.Itoa(i)] = "v"
	}
	cases := []struct {
		name    string
		m       *message.Message
		limit   bool // ErrLimit, else ErrInvalidMessage
		mention string
	}{
		{"100 headers (99 + the ID attribute)", &message.Message{Headers: manyHeaders}, true, "headers"},
		{"header name over 256 bytes", &message.Message{Headers: message.Header{strings.Repeat("n", 257): "v"}}, true, "header name"},
		{"header value over 1024 bytes", &message.Message{Headers: message.Header{"n": strings.Repeat("v", 1025)}}, true, "value of header"},
		{"key over 1024 bytes", &message.Message{Key: strings.Repeat("k", 1025)}, true, "key"},
		{"ID over 1024 bytes", &message.Message{ID: strings.Repeat("i", 1025)}, true, "id"},
		{"payload over the limit", &message.Message{Payload: make([]byte, tr.Capabilities().Limits.MaxPayload+1)}, true, "payload"},
		{"reserved header", &message.Message{Headers: message.Header{"courier-id": "x"}}, false, "reserved"},
		{"goog prefix", &message.Message{Headers: message.Header{"googfoo": "x"}}, false, "goog"},
		{"invalid UTF-8 value", &message.Message{Headers: message.Header{"n": "\xff"}}, false, "UTF-8"},
		{"invalid UTF-8 key", &message.Message{Key: "\xfe"}, false, "UTF-8"},
	}
	for _, c := range cases {
		ok := message.New([]byte("fits"))
		err := tr.Publish(ctx, topic, ok, c.m)
		want := transport.ErrInvalidMessage
		if c.limit {
			want = transport.ErrLimit
		}
		if !errors.Is(err, want) || !strings.Contains(err.Error(), c.mention) {
			t.Errorf("%s: Publish = %v, want %v mentioning %q", c.name, err, want, c.mention)
		}
		var le *transport.LimitError
		if c.limit && (!errors.As(err, &le) || le.Index != 1) {
			t.Errorf("%s: want a *LimitError for message 1, got %v", c.name, err)
		}
	}
	// A maximum-size message whose headers push the encoded size over the
	// request limit.
	big := &message.Message{Payload: make([]byte, tr.Capabilities().Limits.MaxPayload-2000), Headers: message.Header{}}
	for i := range 3 {
		big.Headers["h"+strconv.Itoa(i)] = strings.Repeat("v", 1000)
	}
	if err := tr.Publish(ctx, topic, big); !errors.Is(err, transport.ErrLimit) {
		t.Errorf("over-size encoded message: %v, want ErrLimit", err)
	}
	if srv != nil && len(srv.Messages()) != 0 {
		t.Errorf("%d messages reached the broker; limit errors must send nothing", len(srv.Messages()))
	}
	// Names Pub/Sub refuses although courier's rule allows them.
	for _, bad := range []string{"9lives", "ab", "goog-topic"} {
		if err := tr.Publish(ctx, bad, message.New(nil)); !errors.Is(err, transport.ErrInvalidName) {
			t.Errorf("topic %q: %v, want ErrInvalidName", bad, err)
		}
	}
}

// TestDelayedNack: RetryAfter holds the message for the delay.
func TestDelayedNack(t *testing.T) {
	addr := emulator(t)
	tr := open(t, testOptions(addr))
	ctx := ctxT(t)
	topic := name("dn")
	o := transport.SubscribeOptions{Group: "g"}
	if err := tr.Declare(ctx, topic, o); err != nil {
		t.Fatal(err)
	}
	if err := tr.Publish(ctx, topic, message.New([]byte("x"))); err != nil {
		t.Fatal(err)
	}
	var first time.Time
	var n atomic.Int32
	again := make(chan time.Duration, 1)
	const delay = 1200 * time.Millisecond
	run(t, tr, topic, o, message.HandlerFunc(func(context.Context, *message.Message) error {
		if n.Add(1) == 1 {
			first = time.Now()
			return message.RetryAfter(errors.New("later"), delay)
		}
		select {
		case again <- time.Since(first):
		default:
		}
		return nil
	}))
	select {
	case d := <-again:
		if d < delay {
			t.Errorf("redelivered after %v, before %v", d, delay)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("not redelivered")
	}
}

// TestDeclareConflictsAndDisableCreate: settings Pub/Sub cannot change are
// reported, and create=false refuses to create.
func TestDeclareConflictsAndDisableCreate(t *testing.T) {
	addr := emulator(t)
	tr := open(t, testOptions(addr))
	ctx := ctxT(t)
	topic := name("cf")
	if err := tr.Declare(ctx, topic, transport.SubscribeOptions{Group: "g"}); err != nil {
		t.Fatal(err)
	}
	if err := tr.Declare(ctx, topic, transport.SubscribeOptions{Group: "g"}); err != nil {
		t.Errorf("declaring again: %v", err)
	}
	err := tr.Declare(ctx, topic, transport.SubscribeOptions{Group: "g", OrderedByKey: true})
	if !errors.Is(err, gcppubsubtransport.ErrConflict) {
		t.Errorf("ordering on an unordered subscription: %v, want ErrConflict", err)
	}
	if err := tr.Declare(ctx, topic, transport.SubscribeOptions{}); err == nil {
		t.Error("Declare without a group succeeded")
	}

	o := testOptions(addr)
	o.DisableCreate = true
	nc := open(t, o)
	if err := nc.Publish(ctx, name("missing"), message.New(nil)); !errors.Is(err, gcppubsubtransport.ErrNotExist) {
		t.Errorf("publish to a missing topic with create=false: %v, want ErrNotExist", err)
	}
	if err := nc.Declare(ctx, topic, transport.SubscribeOptions{Group: "other"}); !errors.Is(err, gcppubsubtransport.ErrNotExist) {
		t.Errorf("declare a missing group with create=false: %v, want ErrNotExist", err)
	}
	if err := nc.Declare(ctx, topic, transport.SubscribeOptions{Group: "g"}); err != nil {
		t.Errorf("declare an existing group with create=false: %v", err)
	}
}

// TestPrivateSubscription: a group-less Subscribe sees what is published
// while it runs and deletes its subscription on return.
func TestPrivateSubscription(t *testing.T) {
	addr := emulator(t)
	tr := open(t, testOptions(addr))
	ctx := ctxT(t)
	topic := name("pv")
	rec := &recorder{}
	stop := run(t, tr, topic, transport.SubscribeOptions{}, rec)
	var client *pubsub.Client
	tr.As(&client)
	subs := func() int {
		it := client.TopicAdminClient.ListTopicSubscriptions(ctx, &pubsubpb.ListTopicSubscriptionsRequest{Topic: "projects/" + project + "/topics/" + topic})
		n := 0
		for {
			if _, err := it.Next(); err != nil {
				return n
			}
			n++
		}
	}
	if !waitFor(10*time.Second, func() bool { return subs() == 1 }) {
		t.Fatal("private subscription not created")
	}
	if err := tr.Publish(ctx, topic, message.New([]byte("x"))); err != nil {
		t.Fatal(err)
	}
	if !waitFor(20*time.Second, func() bool { return rec.len() == 1 }) {
		t.Fatal("not received")
	}
	if err := stop(); !errors.Is(err, context.Canceled) {
		t.Errorf("Subscribe returned %v, want context.Canceled", err)
	}
	if n := subs(); n != 0 {
		t.Errorf("%d subscriptions left after the private Subscribe returned", n)
	}
}

// TestShutdownAndClose: Shutdown lets a running handler finish and ack;
// later calls return ErrClosed.
func TestShutdownAndClose(t *testing.T) {
	addr := emulator(t)
	tr := open(t, testOptions(addr))
	ctx := ctxT(t)
	topic := name("sd")
	o := transport.SubscribeOptions{Group: "g"}
	if err := tr.Declare(ctx, topic, o); err != nil {
		t.Fatal(err)
	}
	if err := tr.Publish(ctx, topic, message.New([]byte("x"))); err != nil {
		t.Fatal(err)
	}
	entered, release := make(chan struct{}), make(chan struct{})
	var acked atomic.Bool
	subErr := make(chan error, 1)
	go func() {
		subErr <- tr.Subscribe(context.Background(), topic, message.HandlerFunc(func(hctx context.Context, m *message.Message) error {
			close(entered)
			<-release
			acked.Store(hctx.Err() == nil)
			return nil
		}), o)
	}()
	select {
	case <-entered:
	case <-time.After(20 * time.Second):
		t.Fatal("handler did not start")
	}
	shut := make(chan error, 1)
	go func() { shut <- tr.Shutdown(ctx) }()
	time.AfterFunc(200*time.Millisecond, func() { close(release) })
	if err := <-shut; err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if !acked.Load() {
		t.Error("handler's ctx was cancelled during a graceful Shutdown")
	}
	if err := <-subErr; !errors.Is(err, transport.ErrClosed) {
		t.Errorf("Subscribe after Shutdown: %v", err)
	}
	if err := tr.Publish(ctx, topic, message.New(nil)); !errors.Is(err, transport.ErrClosed) {
		t.Errorf("Publish after Shutdown: %v", err)
	}
	if err := tr.Close(); err != nil {
		t.Errorf("Close after Shutdown: %v", err)
	}
	// The ack landed: a new subscriber sees nothing but a marker.
	tr2 := open(t, testOptions(addr))
	if err := tr2.Publish(ctx, topic, &message.Message{ID: "marker"}); err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	run(t, tr2, topic, o, rec)
	if !waitFor(20*time.Second, func() bool { return rec.len() >= 1 }) {
		t.Fatal("marker not received")
	}
	time.Sleep(500 * time.Millisecond) // a redelivery would come right behind it
	for _, m := range rec.snapshot() {
		if m.ID != "marker" {
			t.Errorf("message %s delivered again after its ack at Shutdown", m.ID)
		}
	}
}

// TestConcurrencyOne: the client library calls back from many goroutines,
// yet with the default Concurrency of 1 only one handler runs at a time.
func TestConcurrencyOne(t *testing.T) {
	addr := emulator(t)
	tr := open(t, testOptions(addr))
	ctx := ctxT(t)
	topic := name("c1")
	o := transport.SubscribeOptions{Group: "g"}
	if err := tr.Declare(ctx, topic, o); err != nil {
		t.Fatal(err)
	}
	var batch []*message.Message
	for range 40 {
		batch = append(batch, message.New([]byte("x")))
	}
	if err := tr.Publish(ctx, topic, batch...); err != nil {
		t.Fatal(err)
	}
	var cur, peak, n atomic.Int32
	run(t, tr, topic, o, message.HandlerFunc(func(context.Context, *message.Message) error {
		c := cur.Add(1)
		if c > peak.Load() {
			peak.Store(c)
		}
		time.Sleep(2 * time.Millisecond)
		cur.Add(-1)
		n.Add(1)
		return nil
	}))
	if !waitFor(20*time.Second, func() bool { return n.Load() >= 40 }) {
		t.Fatalf("handled %d of 40", n.Load())
	}
	if p := peak.Load(); p != 1 {
		t.Errorf("%d handlers ran at once with Concurrency 1", p)
	}
}

// TestMaxAttemptsNeedsAttemptCount: without a native dead-letter policy
// Pub/Sub does not count attempts, so MaxAttempts is refused, not ignored.
func TestMaxAttemptsNeedsAttemptCount(t *testing.T) {
	addr := emulator(t)
	tr := open(t, testOptions(addr))
	if tr.Capabilities().AttemptCount {
		t.Fatal("AttemptCount without a dead-letter policy")
	}
	err := tr.Subscribe(ctxT(t), name("ma"), &recorder{}, transport.SubscribeOptions{Group: "g", MaxAttempts: 3})
	if !errors.Is(err, transport.ErrUnsupported) {
		t.Errorf("Subscribe with MaxAttempts = %v, want ErrUnsupported", err)
	}
}

// TestSubscriptionSettings: Declare creates the group's subscription with
// the ack deadline, ordering, retention, retry and dead-letter policies
// asked for, and no expiration. (pstest stores the retry policy but does
// not apply it.)
func TestSubscriptionSettings(t *testing.T) {
	addr := emulator(t)
	o := testOptions(addr)
	o.Retention = time.Hour
	o.MinBackoff, o.MaxBackoff = 10*time.Second, time.Minute
	o.DeadLetterTopic = name("dl")
	o.MaxDeliveryAttempts = 7
	tr := open(t, o)
	ctx := ctxT(t)
	topic := name("set")
	if err := tr.Declare(ctx, topic, transport.SubscribeOptions{Group: "g", AckWait: 20 * time.Second, OrderedByKey: true}); err != nil {
		t.Fatal(err)
	}
	var client *pubsub.Client
	tr.As(&client)
	s, err := client.SubscriptionAdminClient.GetSubscription(ctx, &pubsubpb.GetSubscriptionRequest{Subscription: "projects/" + project + "/subscriptions/" + topic + ".g"})
	if err != nil {
		t.Fatal(err)
	}
	if s.GetTopic() != "projects/"+project+"/topics/"+topic || s.GetAckDeadlineSeconds() != 20 || !s.GetEnableMessageOrdering() ||
		s.GetMessageRetentionDuration().AsDuration() != time.Hour ||
		s.GetRetryPolicy().GetMinimumBackoff().AsDuration() != 10*time.Second || s.GetRetryPolicy().GetMaximumBackoff().AsDuration() != time.Minute ||
		s.GetDeadLetterPolicy().GetDeadLetterTopic() != "projects/"+project+"/topics/"+o.DeadLetterTopic || s.GetDeadLetterPolicy().GetMaxDeliveryAttempts() != 7 ||
		s.GetExpirationPolicy() == nil || s.GetExpirationPolicy().GetTtl() != nil {
		t.Errorf("subscription created as %v", s)
	}
	// Another dead-letter policy on the same group is a conflict.
	o2 := o
	o2.MaxDeliveryAttempts = 9
	if err := open(t, o2).Declare(ctx, topic, transport.SubscribeOptions{Group: "g"}); !errors.Is(err, gcppubsubtransport.ErrConflict) {
		t.Errorf("declare with another dead-letter policy: %v, want ErrConflict", err)
	}
}

// TestCloseNacksRunningHandler: Close cancels a running handler's ctx,
// Subscribe returns ErrClosed at once, and the message comes back to the
// group. It is nacked (the nack reaches pstest before Close returns), so
// it usually returns at once; but pstest may push it into a stream of the
// closed client whose cancellation it has not processed yet, and then it
// returns after the ack deadline (10s here) - seen in about half of the
// runs under -race.
func TestCloseNacksRunningHandler(t *testing.T) {
	addr := emulator(t)
	tr := open(t, testOptions(addr))
	ctx := ctxT(t)
	topic := name("cl")
	o := transport.SubscribeOptions{Group: "g", AckWait: 10 * time.Second}
	if err := tr.Declare(ctx, topic, o); err != nil {
		t.Fatal(err)
	}
	if err := tr.Publish(ctx, topic, &message.Message{ID: "held"}); err != nil {
		t.Fatal(err)
	}
	entered := make(chan struct{})
	subErr := make(chan error, 1)
	go func() {
		subErr <- tr.Subscribe(context.Background(), topic, message.HandlerFunc(func(hctx context.Context, m *message.Message) error {
			close(entered)
			<-hctx.Done()
			return hctx.Err()
		}), o)
	}()
	select {
	case <-entered:
	case <-time.After(20 * time.Second):
		t.Fatal("handler did not start")
	}
	start := time.Now()
	if err := tr.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	select {
	case err := <-subErr:
		if !errors.Is(err, transport.ErrClosed) {
			t.Errorf("Subscribe after Close: %v, want ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Subscribe did not return after Close")
	}
	rec := &recorder{}
	run(t, open(t, testOptions(addr)), topic, o, rec)
	if !waitFor(30*time.Second, func() bool { return rec.len() >= 1 }) {
		t.Fatal("message not redelivered after Close")
	}
	t.Logf("redelivered %v after Close", time.Since(start))
}

// TestForeignMessage: a message published without courier's ID attribute
// gets Pub/Sub's message ID and keeps all its attributes as headers.
func TestForeignMessage(t *testing.T) {
	addr := emulator(t)
	tr := open(t, testOptions(addr))
	ctx := ctxT(t)
	topic := name("fm")
	o := transport.SubscribeOptions{Group: "g"}
	if err := tr.Declare(ctx, topic, o); err != nil {
		t.Fatal(err)
	}
	var client *pubsub.Client
	tr.As(&client)
	p := client.Publisher("projects/" + project + "/topics/" + topic)
	id, err := p.Publish(ctx, &pubsub.Message{Data: []byte("raw"), Attributes: map[string]string{"origin": "elsewhere"}}).Get(ctx)
	p.Stop()
	if err != nil {
		t.Fatal(err)
	}
	rec := &recorder{}
	run(t, tr, topic, o, rec)
	if !waitFor(20*time.Second, func() bool { return rec.len() >= 1 }) {
		t.Fatal("not received")
	}
	m := rec.snapshot()[0]
	if m.ID != id || m.Headers["origin"] != "elsewhere" || len(m.Headers) != 1 || string(m.Payload) != "raw" {
		t.Errorf("received %+v, want ID %s and header origin", m, id)
	}
}
