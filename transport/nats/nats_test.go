package natstransport_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nkeys"

	"github.com/courierkit/courier/internal/testenv"
	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	natstransport "github.com/courierkit/courier/transport/nats"
)

func open(t testing.TB, o natstransport.Options) *natstransport.Transport {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if o.Logger == nil {
		o.Logger = testLogger()
	}
	tr, err := natstransport.New(ctx, o)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	return tr
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// subscribe runs Subscribe in a goroutine until the test ends.
func subscribe(t testing.TB, c transport.Subscriber, topic string, o transport.SubscribeOptions, h message.HandlerFunc) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Subscribe(ctx, topic, h, o) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil && !errors.Is(err, context.Canceled) && !errors.Is(err, transport.ErrClosed) {
				t.Errorf("Subscribe: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Errorf("Subscribe did not return after cancel")
		}
	})
}

// waitFor polls cond until it holds or d passes.
func waitFor(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func jsOf(t testing.TB, tr *natstransport.Transport) jetstream.JetStream {
	t.Helper()
	var js jetstream.JetStream
	if !tr.As(&js) {
		t.Fatal("As(*jetstream.JetStream) = false")
	}
	return js
}

func TestAsTargets(t *testing.T) {
	srv := newServer(t, nil)
	tr := open(t, natstransport.Options{URL: srv.URL()})
	var nc *nats.Conn
	if !tr.As(&nc) || nc == nil || !nc.IsConnected() {
		t.Fatal("As(**nats.Conn) did not give a connected *nats.Conn")
	}
	_ = jsOf(t, tr)
	var s string
	if tr.As(&s) {
		t.Error("As(*string) = true")
	}
	// Received messages expose the native jetstream.Msg.
	got := make(chan *message.Message, 1)
	subscribe(t, tr, "as-topic", transport.SubscribeOptions{Group: "g"}, func(_ context.Context, m *message.Message) error {
		got <- m
		return nil
	})
	if err := tr.Declare(ctxT(t, 5*time.Second), "as-topic", transport.SubscribeOptions{Group: "g"}); err != nil {
		t.Fatal(err)
	}
	if err := tr.Publish(ctxT(t, 5*time.Second), "as-topic", &message.Message{ID: "a1", Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	select {
	case m := <-got:
		var jm jetstream.Msg
		if !m.As(&jm) || jm.Subject() != "courier.as-topic" {
			t.Fatalf("message As(*jetstream.Msg) failed or wrong subject")
		}
		if md, _ := jm.Metadata(); md == nil || md.Stream != "COURIER_as-topic" || md.Consumer != "g" {
			t.Errorf("native metadata %+v; want stream COURIER_as-topic, consumer g", md)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no message")
	}
}

// TestDuplicatePublishStoredOnce: a publish retried with the same ID within
// the duplicate window is acknowledged but stored (and delivered) once.
func TestDuplicatePublishStoredOnce(t *testing.T) {
	srv := newServer(t, nil)
	tr := open(t, natstransport.Options{URL: srv.URL()})
	ctx := ctxT(t, 10*time.Second)
	topic := "dup"
	if err := tr.Declare(ctx, topic, transport.SubscribeOptions{Group: "g"}); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := tr.Publish(ctx, topic, &message.Message{ID: "same-id", Payload: []byte("once")}); err != nil {
			t.Fatal(err)
		}
	}
	// And within a batch.
	if err := tr.Publish(ctx, topic,
		&message.Message{ID: "b-1", Payload: []byte("1")},
		&message.Message{ID: "b-1", Payload: []byte("1")},
		&message.Message{ID: "b-2", Payload: []byte("2")}); err != nil {
		t.Fatal(err)
	}
	s, err := jsOf(t, tr).Stream(ctx, "COURIER_dup")
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 3 {
		t.Fatalf("stream holds %d messages, want 3 (same-id, b-1, b-2)", info.State.Msgs)
	}
	var mu sync.Mutex
	seen := map[string]int{}
	subscribe(t, tr, topic, transport.SubscribeOptions{Group: "g"}, func(_ context.Context, m *message.Message) error {
		mu.Lock()
		seen[m.ID]++
		mu.Unlock()
		return nil
	})
	waitFor(t, 10*time.Second, "3 deliveries", func() bool { mu.Lock(); defer mu.Unlock(); return len(seen) == 3 })
	// the consumer has nothing more pending
	c, err := s.Consumer(ctx, "g")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "all acked", func() bool {
		ci, err := c.Info(ctx)
		return err == nil && ci.NumAckPending == 0 && ci.NumPending == 0
	})
	mu.Lock()
	defer mu.Unlock()
	for id, n := range seen {
		if n != 1 {
			t.Errorf("%s delivered %d times", id, n)
		}
	}
}

// TestInProgressKeepsLease: a handler running for 3×AckWait keeps its
// message (InProgress heartbeats); the server never redelivers it.
func TestInProgressKeepsLease(t *testing.T) {
	srv := newServer(t, nil)
	tr := open(t, natstransport.Options{URL: srv.URL()})
	ctx := ctxT(t, 20*time.Second)
	const ackWait = time.Second
	o := transport.SubscribeOptions{Group: "slow", AckWait: ackWait, Concurrency: 2}
	if err := tr.Declare(ctx, "lease", o); err != nil {
		t.Fatal(err)
	}
	if err := tr.Publish(ctx, "lease", &message.Message{ID: "long", Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	finished := make(chan struct{})
	subscribe(t, tr, "lease", o, func(hctx context.Context, m *message.Message) error {
		if calls.Add(1) > 1 {
			return nil
		}
		select { // the work itself: 3×AckWait
		case <-time.After(3 * ackWait):
		case <-hctx.Done():
			return hctx.Err()
		}
		close(finished)
		return nil
	})
	select {
	case <-finished:
	case <-time.After(15 * time.Second):
		t.Fatal("handler did not finish")
	}
	s, _ := jsOf(t, tr).Stream(ctx, "COURIER_lease")
	c, err := s.Consumer(ctx, "slow")
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "ack", func() bool {
		ci, err := c.Info(ctx)
		return err == nil && ci.NumAckPending == 0
	})
	ci, _ := c.Info(ctx)
	if ci.NumRedelivered != 0 || calls.Load() != 1 {
		t.Fatalf("redelivered %d times, handled %d times; want the lease kept (0, 1)", ci.NumRedelivered, calls.Load())
	}
}

// TestNakWithDelayAndAttempt: RetryAfter delays redelivery on the server
// and the attempt rises from NumDelivered.
func TestNakWithDelayAndAttempt(t *testing.T) {
	srv := newServer(t, nil)
	tr := open(t, natstransport.Options{URL: srv.URL()})
	ctx := ctxT(t, 20*time.Second)
	o := transport.SubscribeOptions{Group: "g"}
	if err := tr.Declare(ctx, "delay", o); err != nil {
		t.Fatal(err)
	}
	if err := tr.Publish(ctx, "delay", &message.Message{ID: "d", Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	type seen struct {
		at      time.Time
		attempt int
	}
	ch := make(chan seen, 4)
	subscribe(t, tr, "delay", o, func(_ context.Context, m *message.Message) error {
		ch <- seen{time.Now(), m.Attempt}
		if m.Attempt < 3 {
			return message.RetryAfter(errors.New("later"), 400*time.Millisecond)
		}
		return nil
	})
	var got []seen
	for len(got) < 3 {
		select {
		case s := <-ch:
			got = append(got, s)
		case <-time.After(10 * time.Second):
			t.Fatalf("got %d deliveries", len(got))
		}
	}
	for i, s := range got {
		if s.attempt != i+1 {
			t.Errorf("delivery %d has Attempt %d", i+1, s.attempt)
		}
		if i > 0 && s.at.Sub(got[i-1].at) < 400*time.Millisecond {
			t.Errorf("delivery %d came %v after the previous, before the 400ms delay", i+1, s.at.Sub(got[i-1].at))
		}
	}
}

// TestPermanentTerm: without a dead-letter topic a Permanent error Terms
// the message on the server: not redelivered, not pending.
func TestPermanentTerm(t *testing.T) {
	srv := newServer(t, nil)
	tr := open(t, natstransport.Options{URL: srv.URL()})
	ctx := ctxT(t, 20*time.Second)
	o := transport.SubscribeOptions{Group: "g", AckWait: time.Second}
	if err := tr.Declare(ctx, "term", o); err != nil {
		t.Fatal(err)
	}
	if err := tr.Publish(ctx, "term", &message.Message{ID: "bad", Payload: []byte("x")}, &message.Message{ID: "good", Payload: []byte("y")}); err != nil {
		t.Fatal(err)
	}
	var bad atomic.Int32
	good := make(chan struct{}, 1)
	subscribe(t, tr, "term", o, func(_ context.Context, m *message.Message) error {
		if m.ID == "bad" {
			bad.Add(1)
			return message.Permanent(errors.New("cannot parse"))
		}
		good <- struct{}{}
		return nil
	})
	select {
	case <-good:
	case <-time.After(10 * time.Second):
		t.Fatal("good message not handled")
	}
	s, _ := jsOf(t, tr).Stream(ctx, "COURIER_term")
	c, _ := s.Consumer(ctx, "g")
	waitFor(t, 5*time.Second, "nothing pending", func() bool {
		ci, err := c.Info(ctx)
		return err == nil && ci.NumAckPending == 0 && ci.NumPending == 0
	})
	// Past AckWait, the terminated message has not come back.
	time.Sleep(1500 * time.Millisecond)
	if n := bad.Load(); n != 1 {
		t.Fatalf("terminated message handled %d times", n)
	}
}

// TestHeadersThatNeedQuoting: values NATS would trim or mangle (spaces,
// CR/LF), IDs and keys with them, and reserved names.
func TestHeadersThatNeedQuoting(t *testing.T) {
	srv := newServer(t, nil)
	tr := open(t, natstransport.Options{URL: srv.URL()})
	ctx := ctxT(t, 20*time.Second)
	o := transport.SubscribeOptions{Group: "g"}
	if err := tr.Declare(ctx, "hdr", o); err != nil {
		t.Fatal(err)
	}
	want := &message.Message{ID: " id with spaces ", Key: "key\r\nline", Headers: message.Header{
		"x-crlf": "a\r\nb", "x-tab": "\tt\t", "x-quote": `"quoted"`, "x-plain": "p", "Mixed-Case": "v",
	}, Payload: []byte("p")}
	if err := tr.Publish(ctx, "hdr", want); err != nil {
		t.Fatal(err)
	}
	got := make(chan *message.Message, 1)
	subscribe(t, tr, "hdr", o, func(_ context.Context, m *message.Message) error { got <- m; return nil })
	select {
	case m := <-got:
		if m.ID != want.ID || m.Key != want.Key {
			t.Errorf("ID %q Key %q; want %q %q", m.ID, m.Key, want.ID, want.Key)
		}
		if len(m.Headers) != len(want.Headers) {
			t.Errorf("headers %q; want %q", m.Headers, want.Headers)
		}
		for k, v := range want.Headers {
			if m.Headers[k] != v {
				t.Errorf("header %q = %q, want %q", k, m.Headers[k], v)
			}
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no message")
	}
	for _, bad := range []string{"Nats-Msg-Id", "nats-expected-stream", "Courier-Key", "has space", "colon:", "ü"} {
		err := tr.Publish(ctx, "hdr", &message.Message{Headers: message.Header{bad: "v"}})
		if !errors.Is(err, transport.ErrInvalidMessage) {
			t.Errorf("header %q: Publish = %v, want ErrInvalidMessage", bad, err)
		}
	}
}

// TestMaxPayload: the server's max_payload is a LimitError before sending,
// and the largest message that fits goes through.
func TestMaxPayload(t *testing.T) {
	srv := newServer(t, func(o *server.Options) { o.MaxPayload = 64 << 10 })
	tr := open(t, natstransport.Options{URL: srv.URL()})
	ctx := ctxT(t, 10*time.Second)
	l := tr.Capabilities().Limits
	if l.MaxPayload <= 0 || l.MaxPayload > 64<<10 {
		t.Fatalf("MaxPayload %d; want just under the server's 64 KiB", l.MaxPayload)
	}
	if err := tr.Publish(ctx, "big", &message.Message{ID: strings.Repeat("i", 64), Payload: make([]byte, l.MaxPayload)}); err != nil {
		t.Fatalf("MaxPayload-sized message: %v", err)
	}
	err := tr.Publish(ctx, "big", message.New(make([]byte, l.MaxPayload+1)))
	var le *transport.LimitError
	if !errors.As(err, &le) || le.What != "payload" {
		t.Fatalf("over MaxPayload: %v", err)
	}
	// Within MaxMessage as courier counts it, but the framing of 100
	// headers pushes the wire size over max_payload: the exact check.
	m := message.New(nil)
	m.Headers = message.Header{}
	for i := range 100 {
		m.Headers[fmt.Sprintf("h%02d", i)] = "v"
	}
	m.Payload = make([]byte, l.MaxMessage-transport.Size(m))
	err = tr.Publish(ctx, "big", m)
	if !errors.As(err, &le) || le.What != "message" || le.Limit != 64<<10 {
		t.Fatalf("over max_payload with headers: %v", err)
	}
	if !strings.Contains(err.Error(), "65536") {
		t.Errorf("error %q does not name the limit", err)
	}
}

func TestBadURL(t *testing.T) {
	ctx := ctxT(t, 5*time.Second)
	cases := map[string]string{
		"nats://u:s3cr3tpw@127.0.0.1:4222?bogus=1":            "unknown parameter bogus",
		"nats://127.0.0.1:4222?max_age=forever":               "max_age",
		"nats://127.0.0.1:4222?storage=tape":                  "storage",
		"nats://127.0.0.1:4222?replicas=-1":                   "replicas",
		"nats://127.0.0.1:4222?token=s3cr3tpw&token=x":        "given 2 times",
		"nats://127.0.0.1:4222/orders":                        "path",
		"nats://127.0.0.1:4222?stream=bad.name":               "stream",
		"nats+tls://127.0.0.1:4222?tls_cert=/nonexistent.pem": "tls_cert and tls_key",
	}
	for raw, want := range cases {
		start := time.Now()
		_, err := transport.Open(ctx, raw)
		if err == nil {
			t.Errorf("%s: no error", raw)
			continue
		}
		if !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %q does not mention %q", raw, err, want)
		}
		if strings.Contains(err.Error(), "s3cr3tpw") {
			t.Errorf("%s: error leaks the secret: %q", raw, err)
		}
		if time.Since(start) > time.Second {
			t.Errorf("%s: took %v", raw, time.Since(start))
		}
	}
	// The accepted parameters are listed.
	_, err := transport.Open(ctx, "nats://127.0.0.1:4222?bogus=1")
	if err == nil || !strings.Contains(err.Error(), "subject_prefix") {
		t.Errorf("unknown-parameter error does not list the accepted ones: %v", err)
	}
}

func TestParseURL(t *testing.T) {
	u, _ := url.Parse("nats+tls://alice:pw@example.com?servers=nats://b:4222,nats://c:4222&name=svc&core=true&stream=ORDERS&subject_prefix=app.&stream_prefix=X_&no_provision=1&storage=memory&retention=interest&replicas=3&max_age=1h&max_bytes=1024&duplicate_window=30s&api_timeout=2s&ack_sync=true&publish_async_max_pending=10&ephemeral_inactive=1m&connect_timeout=1s&reconnect_wait=50ms&max_reconnects=5&reconnect_buf_size=1024&tls_handshake_first=true&creds=/c&nkey_seed=/n&tls_ca=/ca&tls_cert=/cert&tls_key=/key&no_subject_prefix=false")
	o, err := natstransport.ParseURL(u)
	if err != nil {
		t.Fatal(err)
	}
	if o.URL != "tls://example.com:4222" || o.User != "alice" || o.Password != "pw" || o.TLS == nil ||
		len(o.Servers) != 2 || o.Name != "svc" || !o.Core || o.Stream != "ORDERS" || o.SubjectPrefix != "app." ||
		o.StreamPrefix != "X_" || !o.NoProvision || o.Storage != "memory" || o.Retention != "interest" ||
		o.Replicas != 3 || o.MaxAge != time.Hour || o.MaxBytes != 1024 || o.DuplicateWindow != 30*time.Second ||
		o.APITimeout != 2*time.Second || !o.AckSync || o.PublishAsyncMaxPending != 10 ||
		o.EphemeralInactiveThreshold != time.Minute || o.ConnectTimeout != time.Second ||
		o.ReconnectWait != 50*time.Millisecond || o.MaxReconnects != 5 || o.ReconnectBufSize != 1024 ||
		!o.TLSHandshakeFirst || o.CredsFile != "/c" || o.NKeySeedFile != "/n" || o.TLSCAFile != "/ca" ||
		o.TLSCertFile != "/cert" || o.TLSKeyFile != "/key" {
		t.Errorf("ParseURL gave %+v", o)
	}
	u, _ = url.Parse("nats://tok3n@127.0.0.1")
	if o, err := natstransport.ParseURL(u); err != nil || o.Token != "tok3n" || o.User != "" || o.URL != "nats://127.0.0.1:4222" {
		t.Errorf("token URL: %+v %v", o, err)
	}
}

// The user-info of servers entries is scrubbed from errors too, also
// when the entry does not parse and a password has only 2 characters.
func TestServersSecretsHidden(t *testing.T) {
	ctx := ctxT(t, 5*time.Second)
	port := testenv.FreePort(t)
	for _, srv := range []string{
		"nats://carol:s3rv3rpw@127.0.0.1:notaport",
		"nats://s3rv3rtok@127.0.0.1:notaport",
		"nats://dave:s3rv3r%21pw@127.0.0.1:notaport",
		"nats://s3rv3rusr:pw@127.0.0.1:notaport",
	} {
		raw := fmt.Sprintf("nats://127.0.0.1:%d?servers=%s&connect_timeout=1s", port, url.QueryEscape(srv))
		_, err := transport.Open(ctx, raw)
		if err == nil {
			t.Errorf("%s: no error", srv)
			continue
		}
		msg := err.Error()
		for _, leak := range []string{"s3rv3r", ":pw@"} {
			if strings.Contains(msg, leak) {
				t.Errorf("%s: error leaks %q: %q", srv, leak, msg)
			}
		}
		// New scrubs them itself (no URL for Open to scrub).
		_, err = natstransport.New(ctx, natstransport.Options{URL: fmt.Sprintf("nats://127.0.0.1:%d", port), Servers: []string{srv}, ConnectTimeout: time.Second})
		if err == nil {
			t.Errorf("%s: New: no error", srv)
			continue
		}
		for _, leak := range []string{"s3rv3r", ":pw@"} {
			if strings.Contains(err.Error(), leak) {
				t.Errorf("%s: New's error leaks %q: %q", srv, leak, err)
			}
		}
	}
}

// TestUnreachable: nothing listening gives a clear error well within the
// ctx deadline; a blackholed connect honours the ctx.
func TestUnreachable(t *testing.T) {
	port := testenv.FreePort(t)
	ctx := ctxT(t, 3*time.Second)
	start := time.Now()
	_, err := transport.Open(ctx, fmt.Sprintf("nats://u:s3cr3tpw@127.0.0.1:%d", port))
	if err == nil {
		t.Fatal("no error")
	}
	if time.Since(start) > 3*time.Second {
		t.Errorf("took %v", time.Since(start))
	}
	if !errors.Is(err, nats.ErrNoServers) && !strings.Contains(err.Error(), "refused") {
		t.Errorf("error %v: want the SDK's no-servers error reachable", err)
	}
	if strings.Contains(err.Error(), "s3cr3tpw") {
		t.Errorf("error leaks the password: %v", err)
	}
	// A server that accepts TCP but never speaks: the ctx deadline wins.
	srv := newSilentListener(t)
	ctx2, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start = time.Now()
	_, err = natstransport.New(ctx2, natstransport.Options{URL: "nats://" + srv, ConnectTimeout: 10 * time.Second})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("silent server: %v, want context.DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("silent server: returned after %v", d)
	}
}

// TestAuth: user/password and token authentication; a wrong password is a
// clear error that does not contain it.
func TestAuth(t *testing.T) {
	srv := newServer(t, func(o *server.Options) { o.Username, o.Password = "alice", "correct-horse" })
	tr := open(t, natstransport.Options{URL: srv.URL(), User: "alice", Password: "correct-horse"})
	if err := tr.Publish(ctxT(t, 5*time.Second), "auth", message.New([]byte("x"))); err != nil {
		t.Fatal(err)
	}
	u := strings.Replace(srv.URL(), "nats://", "nats://alice:wrong-battery@", 1)
	_, err := transport.Open(ctxT(t, 5*time.Second), u)
	if err == nil || !errors.Is(err, nats.ErrAuthorization) {
		t.Errorf("wrong password: %v, want nats.ErrAuthorization reachable", err)
	}
	if err != nil && strings.Contains(err.Error(), "wrong-battery") {
		t.Errorf("error leaks the password: %v", err)
	}
	tsrv := newServer(t, func(o *server.Options) { o.Authorization = "t0ken-value" })
	c, err := transport.Open(ctxT(t, 5*time.Second), strings.Replace(tsrv.URL(), "nats://", "nats://t0ken-value@", 1))
	if err != nil {
		t.Fatalf("token in user-info: %v", err)
	}
	c.Close()
	c, err = transport.Open(ctxT(t, 5*time.Second), tsrv.URL()+"?token=t0ken-value")
	if err != nil {
		t.Fatalf("token parameter: %v", err)
	}
	c.Close()
}

// TestTLS: nats+tls with a CA file against a TLS server.
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	ca, cert, key := writeTestCerts(t, dir)
	srv := newServer(t, func(o *server.Options) {
		tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: cert, KeyFile: key})
		if err != nil {
			t.Fatal(err)
		}
		o.TLSConfig = tc
		o.TLS = true
	})
	u := strings.Replace(srv.URL(), "nats://", "nats+tls://", 1) + "?tls_ca=" + url.QueryEscape(ca)
	c, err := transport.Open(ctxT(t, 5*time.Second), u)
	if err != nil {
		t.Fatalf("TLS open: %v", err)
	}
	defer c.Close()
	if err := c.Publish(ctxT(t, 5*time.Second), "tls", message.New([]byte("x"))); err != nil {
		t.Fatal(err)
	}
	// Without the CA the server's certificate is not trusted.
	_, err = transport.Open(ctxT(t, 5*time.Second), strings.Replace(srv.URL(), "nats://", "nats+tls://", 1))
	if err == nil {
		t.Fatal("TLS without the CA succeeded")
	}
	_ = os.Remove(filepath.Join(dir, "none"))
}

// TestCoreMode: core NATS publish/subscribe with honest capabilities, queue
// groups competing, no Declare, nack reported as no redelivery.
func TestCoreMode(t *testing.T) {
	srv := newServer(t, nil)
	tr := open(t, natstransport.Options{URL: srv.URL(), Core: true})
	caps := tr.Capabilities()
	if caps.Persistent || caps.Redelivery || caps.DelayedNack || caps.AttemptCount || caps.Replay || caps.BrokerTime || caps.LeaseExtension {
		t.Errorf("core capabilities claim too much: %+v", caps)
	}
	var js jetstream.JetStream
	if tr.As(&js) {
		t.Error("core mode exposes a JetStream")
	}
	ctx := ctxT(t, 10*time.Second)
	if err := tr.Declare(ctx, "core", transport.SubscribeOptions{Group: "g"}); !errors.Is(err, transport.ErrUnsupported) {
		t.Errorf("Declare in core mode = %v, want ErrUnsupported", err)
	}
	var mu sync.Mutex
	per := map[int]int{}
	ids := map[string]int{}
	ready := make(chan struct{}, 4)
	for i := range 2 {
		sub := open(t, natstransport.Options{URL: srv.URL(), Core: true})
		subscribe(t, sub, "core", transport.SubscribeOptions{Group: "g"}, func(_ context.Context, m *message.Message) error {
			if m.ID == "probe" {
				select {
				case ready <- struct{}{}:
				default:
				}
				return nil
			}
			mu.Lock()
			per[i]++
			ids[m.ID]++
			mu.Unlock()
			if m.Headers["x"] != "y" || m.Key != "k" || m.Topic != "core" {
				t.Errorf("core message %+v", m)
			}
			var nm *nats.Msg
			if !m.As(&nm) || nm.Subject != "courier.core" {
				t.Errorf("core message As(**nats.Msg) failed")
			}
			return nil
		})
	}
	// Subscriptions are live once a probe gets through.
	waitFor(t, 5*time.Second, "subscriptions", func() bool {
		_ = tr.Publish(ctx, "core", &message.Message{ID: "probe"})
		select {
		case <-ready:
			return true
		case <-time.After(50 * time.Millisecond):
			return false
		}
	})
	time.Sleep(100 * time.Millisecond) // let the second subscriber's interest land too (core NATS has no durable interest)
	const n = 200
	msgs := make([]*message.Message, n)
	for i := range msgs {
		msgs[i] = &message.Message{Key: "k", Headers: message.Header{"x": "y"}, Payload: []byte("c")}
	}
	if err := tr.Publish(ctx, "core", msgs...); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "core deliveries", func() bool { mu.Lock(); defer mu.Unlock(); return len(ids) == n })
	mu.Lock()
	defer mu.Unlock()
	for id, c := range ids {
		if c != 1 {
			t.Errorf("%s delivered %d times in a queue group", id, c)
		}
	}
}

// TestMachineNATS: the adapter against the machine's NATS server
// (127.0.0.1:4222 or $COURIER_NATS_URL): round trip with a group, and the
// streams it made are removed.
func TestMachineNATS(t *testing.T) {
	u := testenv.NATS(t)
	c, err := transport.Open(ctxT(t, 10*time.Second), u)
	if err != nil {
		t.Fatal(err)
	}
	tr := c.(*natstransport.Transport)
	topic := fmt.Sprintf("courier-nats-test-%d", time.Now().UnixNano())
	ctx := ctxT(t, 20*time.Second)
	// Registered first, so it runs last: after the subscription stopped,
	// before the connection closes.
	t.Cleanup(func() {
		defer tr.Close()
		dctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		if err := jsOf(t, tr).DeleteStream(dctx, "COURIER_"+topic); err != nil {
			t.Errorf("cleanup: delete stream: %v", err)
		}
	})
	o := transport.SubscribeOptions{Group: "g"}
	if err := tr.Declare(ctx, topic, o); err != nil {
		t.Fatal(err)
	}
	if err := tr.Publish(ctx, topic, &message.Message{ID: "m1", Key: "k", Headers: message.Header{"a": "b"}, Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	got := make(chan *message.Message, 1)
	subscribe(t, tr, topic, o, func(_ context.Context, m *message.Message) error { got <- m; return nil })
	select {
	case m := <-got:
		if m.ID != "m1" || m.Key != "k" || m.Headers["a"] != "b" || m.Attempt != 1 {
			t.Errorf("got %+v", m)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no message from the machine's NATS")
	}
}

// TestNameConflict: two topics that map to one stream name, and two groups
// to one consumer name, are errors instead of silently shared.
func TestNameConflict(t *testing.T) {
	srv := newServer(t, nil)
	tr := open(t, natstransport.Options{URL: srv.URL()})
	ctx := ctxT(t, 10*time.Second)
	if err := tr.Declare(ctx, "a.b", transport.SubscribeOptions{Group: "g.1"}); err != nil {
		t.Fatal(err)
	}
	if err := tr.Publish(ctx, "a_b", message.New([]byte("x"))); !errors.Is(err, natstransport.ErrNameConflict) {
		t.Errorf("topic a_b after a.b: %v, want ErrNameConflict", err)
	}
	if err := tr.Declare(ctx, "a.b", transport.SubscribeOptions{Group: "g_1"}); !errors.Is(err, natstransport.ErrNameConflict) {
		t.Errorf("group g_1 after g.1: %v, want ErrNameConflict", err)
	}
	// Declaring the same group again is a no-op.
	if err := tr.Declare(ctx, "a.b", transport.SubscribeOptions{Group: "g.1", MaxInFlight: 5}); err != nil {
		t.Errorf("re-declare: %v", err)
	}
}

// TestBindExistingStream: with Stream set, topics are subjects of an
// operator-made stream and nothing is provisioned.
func TestBindExistingStream(t *testing.T) {
	srv := newServer(t, nil)
	admin := open(t, natstransport.Options{URL: srv.URL()})
	ctx := ctxT(t, 10*time.Second)
	if _, err := jsOf(t, admin).CreateStream(ctx, jetstream.StreamConfig{Name: "ORDERS", Subjects: []string{"orders.>"}}); err != nil {
		t.Fatal(err)
	}
	c, err := transport.Open(ctx, srv.URL()+"?stream=ORDERS&subject_prefix=orders.")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	o := transport.SubscribeOptions{Group: "billing"}
	if err := c.Declare(ctx, "created", o); err != nil {
		t.Fatal(err)
	}
	if err := c.Publish(ctx, "created", &message.Message{ID: "o1", Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	subscribe(t, c, "created", o, func(_ context.Context, m *message.Message) error { got <- m.ID; return nil })
	select {
	case id := <-got:
		if id != "o1" {
			t.Errorf("got %s", id)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no message")
	}
	names := jsOf(t, admin).StreamNames(ctx)
	var all []string
	for n := range names.Name() {
		all = append(all, n)
	}
	if len(all) != 1 {
		t.Errorf("streams %v; want only ORDERS", all)
	}
	// A subject no stream holds is an error, not a silent drop.
	c2, _ := transport.Open(ctx, srv.URL()+"?stream=ORDERS&subject_prefix=other.")
	defer c2.Close()
	if err := c2.Publish(ctx, "x", message.New([]byte("x"))); err == nil {
		t.Error("publish to a subject outside the bound stream succeeded")
	}
}

// TestEphemeralSurvivesRestart: a subscription without a group keeps
// receiving after the server restarts.
func TestEphemeralSurvivesRestart(t *testing.T) {
	srv := newServer(t, nil)
	pub := open(t, natstransport.Options{URL: srv.URL(), ReconnectWait: 50 * time.Millisecond})
	sub := open(t, natstransport.Options{URL: srv.URL(), ReconnectWait: 50 * time.Millisecond})
	ctx := ctxT(t, 60*time.Second)
	var mu sync.Mutex
	ids := map[string]bool{}
	subscribe(t, sub, "eph", transport.SubscribeOptions{AckWait: time.Second}, func(_ context.Context, m *message.Message) error {
		mu.Lock()
		ids[m.ID] = true
		mu.Unlock()
		return nil
	})
	// Probes with fresh IDs (a repeated ID would be de-duplicated) until
	// one arrives.
	probe := func(what string) func() bool {
		i := 0
		return func() bool {
			i++
			id := fmt.Sprintf("%s-%d", what, i)
			pctx, cancel := context.WithTimeout(ctx, time.Second)
			_ = pub.Publish(pctx, "eph", &message.Message{ID: id})
			cancel()
			deadline := time.Now().Add(200 * time.Millisecond)
			for time.Now().Before(deadline) {
				mu.Lock()
				ok := ids[id]
				mu.Unlock()
				if ok {
					return true
				}
				time.Sleep(10 * time.Millisecond)
			}
			return false
		}
	}
	waitFor(t, 10*time.Second, "a message before the restart", probe("before"))
	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "a message after the restart", probe("after"))
}

// TestShutdownFlushesAcksAndClosed: after Shutdown, Publish/Subscribe
// return ErrClosed and the handled messages are not pending.
func TestShutdownAcks(t *testing.T) {
	srv := newServer(t, nil)
	tr, err := natstransport.New(ctxT(t, 5*time.Second), natstransport.Options{URL: srv.URL()})
	if err != nil {
		t.Fatal(err)
	}
	admin := open(t, natstransport.Options{URL: srv.URL()})
	ctx := ctxT(t, 20*time.Second)
	o := transport.SubscribeOptions{Group: "g", Concurrency: 8}
	if err := tr.Declare(ctx, "sd", o); err != nil {
		t.Fatal(err)
	}
	msgs := make([]*message.Message, 100)
	for i := range msgs {
		msgs[i] = message.New([]byte("x"))
	}
	if err := admin.Publish(ctx, "sd", msgs...); err != nil {
		t.Fatal(err)
	}
	var handled atomic.Int32
	done := make(chan error, 1)
	go func() {
		done <- tr.Subscribe(context.Background(), "sd", message.HandlerFunc(func(context.Context, *message.Message) error {
			handled.Add(1)
			return nil
		}), o)
	}()
	waitFor(t, 10*time.Second, "all handled", func() bool { return handled.Load() == 100 })
	if err := tr.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, transport.ErrClosed) {
		t.Errorf("Subscribe after Shutdown: %v", err)
	}
	s, _ := jsOf(t, admin).Stream(ctx, "COURIER_sd")
	c, _ := s.Consumer(ctx, "g")
	ci, err := c.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ci.NumAckPending != 0 || ci.AckFloor.Stream != 100 {
		t.Errorf("after Shutdown: %d ack pending, ack floor %d; want 0 and 100", ci.NumAckPending, ci.AckFloor.Stream)
	}
	if err := tr.Publish(ctx, "sd", message.New(nil)); !errors.Is(err, transport.ErrClosed) {
		t.Errorf("Publish after Shutdown: %v", err)
	}
}

// TestPublishDuringOutage: with the server down a publish fails (ctx or
// ack timeout) rather than reporting success; after the server is back
// the same connection publishes again and what it reported stored is
// there.
func TestPublishDuringOutage(t *testing.T) {
	srv := newServer(t, nil)
	tr := open(t, natstransport.Options{URL: srv.URL(), ReconnectWait: 50 * time.Millisecond, APITimeout: time.Second})
	ctx := ctxT(t, 30*time.Second)
	if err := tr.Declare(ctx, "outage", transport.SubscribeOptions{Group: "g"}); err != nil {
		t.Fatal(err)
	}
	if err := tr.Publish(ctx, "outage", &message.Message{ID: "before"}); err != nil {
		t.Fatal(err)
	}
	srv.Stop()
	start := time.Now()
	err := tr.Publish(ctx, "outage", &message.Message{ID: "during"})
	if err == nil {
		t.Fatal("publish with the server down reported success")
	}
	if d := time.Since(start); d > 3*time.Second {
		t.Errorf("publish during the outage took %v (api_timeout 1s)", d)
	}
	if !errors.Is(err, natstransport.ErrNoAck) {
		t.Errorf("publish during the outage: %v, want ErrNoAck", err)
	}
	t.Logf("publish during the outage: %v", err)
	if err := srv.Resume(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "publish after the restart", func() bool {
		pctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		return tr.Publish(pctx, "outage", &message.Message{ID: "after"}) == nil
	})
	s, err := jsOf(t, tr).Stream(ctx, "COURIER_outage")
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"before", "after"} {
		found := false
		info, _ := s.Info(ctx)
		for seq := info.State.FirstSeq; seq <= info.State.LastSeq && !found; seq++ {
			m, err := s.GetMsg(ctx, seq)
			found = err == nil && m.Header.Get(jetstream.MsgIDHeader) == id
		}
		if !found {
			t.Errorf("message %s reported stored is not in the stream", id)
		}
	}
}

// TestNKeyAuth: an NKey seed file authenticates.
func TestNKeyAuth(t *testing.T) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	seed, _ := kp.Seed()
	seedFile := filepath.Join(t.TempDir(), "user.nk")
	if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	srv := newServer(t, func(o *server.Options) { o.Nkeys = []*server.NkeyUser{{Nkey: pub}} })
	c, err := transport.Open(ctxT(t, 5*time.Second), srv.URL()+"?nkey_seed="+url.QueryEscape(seedFile))
	if err != nil {
		t.Fatalf("nkey auth: %v", err)
	}
	defer c.Close()
	if err := c.Publish(ctxT(t, 5*time.Second), "nk", message.New([]byte("x"))); err != nil {
		t.Fatal(err)
	}
	if _, err := transport.Open(ctxT(t, 5*time.Second), srv.URL()); !errors.Is(err, nats.ErrAuthorization) {
		t.Errorf("without the seed: %v, want nats.ErrAuthorization", err)
	}
}

// TestForeignMessage: a message published by a plain NATS client (no
// Nats-Msg-Id, no courier headers) is delivered with an ID made of its
// stream position and its headers as they are.
func TestForeignMessage(t *testing.T) {
	srv := newServer(t, nil)
	tr := open(t, natstransport.Options{URL: srv.URL()})
	ctx := ctxT(t, 10*time.Second)
	o := transport.SubscribeOptions{Group: "g"}
	if err := tr.Declare(ctx, "foreign", o); err != nil {
		t.Fatal(err)
	}
	var nc *nats.Conn
	tr.As(&nc)
	m := nats.NewMsg("courier.foreign")
	m.Header.Set("X-Plain", "yes")
	m.Data = []byte("raw")
	if _, err := jsOf(t, tr).PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	got := make(chan *message.Message, 1)
	subscribe(t, tr, "foreign", o, func(_ context.Context, m *message.Message) error { got <- m; return nil })
	select {
	case g := <-got:
		if g.ID != "COURIER_foreign:1" || g.Headers["X-Plain"] != "yes" || string(g.Payload) != "raw" || g.Key != "" {
			t.Errorf("got ID %q headers %v payload %q key %q", g.ID, g.Headers, g.Payload, g.Key)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no message")
	}
}

// TestPrefetchedKeptLeased: messages fetched while the one handler is busy
// for 3×AckWait wait under InProgress too: none is redelivered.
func TestPrefetchedKeptLeased(t *testing.T) {
	srv := newServer(t, nil)
	tr := open(t, natstransport.Options{URL: srv.URL()})
	ctx := ctxT(t, 30*time.Second)
	const ackWait = time.Second
	o := transport.SubscribeOptions{Group: "g", AckWait: ackWait, MaxInFlight: 4}
	if err := tr.Declare(ctx, "prefetch", o); err != nil {
		t.Fatal(err)
	}
	msgs := make([]*message.Message, 4)
	for i := range msgs {
		msgs[i] = message.New([]byte{byte(i)})
	}
	if err := tr.Publish(ctx, "prefetch", msgs...); err != nil {
		t.Fatal(err)
	}
	var calls atomic.Int32
	var mu sync.Mutex
	attempts := map[string]int{}
	subscribe(t, tr, "prefetch", o, func(hctx context.Context, m *message.Message) error {
		mu.Lock()
		attempts[m.ID] = max(attempts[m.ID], m.Attempt)
		mu.Unlock()
		if calls.Add(1) == 1 {
			select {
			case <-time.After(3 * ackWait):
			case <-hctx.Done():
				return hctx.Err()
			}
		}
		return nil
	})
	s, _ := jsOf(t, tr).Stream(ctx, "COURIER_prefetch")
	c, _ := s.Consumer(ctx, "g")
	waitFor(t, 15*time.Second, "all acked", func() bool {
		ci, err := c.Info(ctx)
		return err == nil && ci.AckFloor.Stream == 4 && ci.NumAckPending == 0
	})
	ci, _ := c.Info(ctx)
	if ci.NumRedelivered != 0 || calls.Load() != 4 {
		t.Errorf("redelivered %d, handled %d times (attempts %v); want 0 and 4", ci.NumRedelivered, calls.Load(), attempts)
	}
}

// TestCloseDuringCalls: Close while Publish and Subscribe calls run makes
// them return ErrClosed (or succeed, for a publish that got its ack first).
func TestCloseDuringCalls(t *testing.T) {
	srv := newServer(t, nil)
	tr, err := natstransport.New(ctxT(t, 5*time.Second), natstransport.Options{URL: srv.URL()})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for i := range 8 {
		wg.Add(2)
		go func() {
			defer wg.Done()
			for j := 0; j < 50; j++ {
				if err := tr.Publish(context.Background(), fmt.Sprintf("cd-%d", i), message.New([]byte("x"))); err != nil {
					errs <- err
					return
				}
			}
		}()
		go func() {
			defer wg.Done()
			errs <- tr.Subscribe(context.Background(), fmt.Sprintf("cd-%d", i), message.HandlerFunc(func(context.Context, *message.Message) error { return nil }), transport.SubscribeOptions{Group: "g"})
		}()
	}
	time.Sleep(20 * time.Millisecond) // let some calls be in flight (not a result wait)
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("calls did not return after Close")
	}
	close(errs)
	for err := range errs {
		if !errors.Is(err, transport.ErrClosed) {
			t.Errorf("call during Close returned %v, want transport.ErrClosed", err)
		}
	}
	// Stream creations the closed client asked for may still be running
	// in the server; shutting it down in the middle of one leaks the
	// server's own goroutines (filestore flush loop). Wait until the
	// server's stream list is stable.
	admin := open(t, natstransport.Options{URL: srv.URL()})
	js := jsOf(t, admin)
	count := func() int {
		n := 0
		for range js.StreamNames(ctxT(t, 5*time.Second)).Name() {
			n++
		}
		return n
	}
	prev := -1
	waitFor(t, 10*time.Second, "stream creations to settle", func() bool {
		n := count()
		stable := n == prev
		prev = n
		if !stable {
			time.Sleep(100 * time.Millisecond)
		}
		return stable
	})
}

// TestConsumerDeletedUnderSubscription: a group's durable consumer, or the
// ephemeral one of a subscription without a group, deleted by an operator
// while the subscription runs, is recreated and delivery goes on.
func TestConsumerDeletedUnderSubscription(t *testing.T) {
	for _, group := range []string{"g", ""} {
		t.Run("group="+group, func(t *testing.T) {
			srv := newServer(t, nil)
			tr := open(t, natstransport.Options{URL: srv.URL()})
			ctx := ctxT(t, 30*time.Second)
			topic := "del"
			o := transport.SubscribeOptions{Group: group}
			if group != "" {
				if err := tr.Declare(ctx, topic, o); err != nil {
					t.Fatal(err)
				}
			}
			var mu sync.Mutex
			seen := map[string]bool{}
			subscribe(t, tr, topic, o, func(_ context.Context, m *message.Message) error {
				mu.Lock()
				seen[m.ID] = true
				mu.Unlock()
				return nil
			})
			has := func(id string) bool { mu.Lock(); defer mu.Unlock(); return seen[id] }
			i := 0
			probe := func(prefix string) func() bool {
				return func() bool {
					i++
					id := fmt.Sprintf("%s-%d", prefix, i)
					_ = tr.Publish(ctx, topic, &message.Message{ID: id})
					deadline := time.Now().Add(300 * time.Millisecond)
					for time.Now().Before(deadline) {
						if has(id) {
							return true
						}
						time.Sleep(10 * time.Millisecond)
					}
					return false
				}
			}
			waitFor(t, 10*time.Second, "delivery before the deletion", probe("before"))
			s, err := jsOf(t, tr).Stream(ctx, "COURIER_"+topic)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for n := range s.ConsumerNames(ctx).Name() {
				names = append(names, n)
			}
			if len(names) != 1 {
				t.Fatalf("consumers %v, want one", names)
			}
			if err := s.DeleteConsumer(ctx, names[0]); err != nil {
				t.Fatal(err)
			}
			waitFor(t, 20*time.Second, "delivery after the deletion", probe("after"))
		})
	}
}
