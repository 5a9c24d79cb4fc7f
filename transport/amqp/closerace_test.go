package amqptransport

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/url"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// frameProxy sits between the adapter and the broker on 127.0.0.1 and
// reads the frames the client sends. It records every frame sent on a
// channel after the client's channel.close for it (before a new
// channel.open reuses the id) and every channel frame after the client's
// connection.close: RabbitMQ answers such a frame, once it has dropped the
// channel, by closing the whole connection with 504 CHANNEL_ERROR
// "expected 'channel.open'" — the failure seen in the demo's shutdown.
// The broker only fails when the frame lands after it dropped the
// channel, which is rare; the proxy sees the order itself, every time.
type frameProxy struct {
	ln     net.Listener
	target string

	// crossing, when set, is written to the broker just ahead of the
	// client's connection.close, as a frame sent by another goroutine an
	// instant earlier would be.
	crossing []byte

	mu         sync.Mutex
	violations []string
	conns      []net.Conn
	wg         sync.WaitGroup
}

func newFrameProxy(t *testing.T, brokerURL string) (*frameProxy, string) {
	t.Helper()
	u, err := url.Parse(brokerURL)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &frameProxy{ln: ln, target: u.Host}
	p.wg.Add(1)
	go p.accept()
	t.Cleanup(p.close)
	u.Host = ln.Addr().String()
	return p, u.String()
}

func (p *frameProxy) accept() {
	defer p.wg.Done()
	for n := 0; ; n++ {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		b, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, b)
		p.mu.Unlock()
		p.wg.Add(2)
		go func() {
			defer p.wg.Done()
			_, _ = io.Copy(c, b)
			c.Close()
		}()
		go func() {
			defer p.wg.Done()
			p.inspect(n, c, b)
			b.Close()
		}()
	}
}

func (p *frameProxy) close() {
	p.ln.Close()
	p.mu.Lock()
	for _, c := range p.conns {
		c.Close()
	}
	p.mu.Unlock()
	p.wg.Wait()
}

func (p *frameProxy) violation(format string, args ...any) {
	p.mu.Lock()
	p.violations = append(p.violations, fmt.Sprintf(format, args...))
	p.mu.Unlock()
}

func (p *frameProxy) found() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.violations...)
}

var methodNames = map[uint32]string{
	85<<16 | 10: "confirm.select", 10<<16 | 50: "connection.close", 10<<16 | 51: "connection.close-ok",
	20<<16 | 10: "channel.open", 20<<16 | 40: "channel.close", 20<<16 | 41: "channel.close-ok",
	60<<16 | 30: "basic.cancel", 60<<16 | 40: "basic.publish", 60<<16 | 80: "basic.ack",
	60<<16 | 90: "basic.reject", 60<<16 | 120: "basic.nack", 60<<16 | 20: "basic.consume",
	50<<16 | 10: "queue.declare", 40<<16 | 10: "exchange.declare",
}

func methodName(id uint32) string {
	if n, ok := methodNames[id]; ok {
		return n
	}
	return fmt.Sprintf("method %d.%d", id>>16, id&0xffff)
}

// inspect copies client bytes to the broker, frame by frame, checking the
// order.
func (p *frameProxy) inspect(conn int, c, b net.Conn) {
	hdr := make([]byte, 8) // "AMQP" 0 0 9 1
	if _, err := io.ReadFull(c, hdr); err != nil {
		return
	}
	if _, err := b.Write(hdr); err != nil {
		return
	}
	closing := map[uint16]bool{} // channels the client has sent channel.close on
	connClosing := false
	role := "" // "consume" once a basic.consume went out, "publish" once a confirm.select did
	fh := make([]byte, 7)
	for {
		if _, err := io.ReadFull(c, fh); err != nil {
			return
		}
		size := binary.BigEndian.Uint32(fh[3:7])
		rest := make([]byte, int(size)+1) // payload and frame-end
		if _, err := io.ReadFull(c, rest); err != nil {
			return
		}
		typ, ch := fh[0], binary.BigEndian.Uint16(fh[1:3])
		what := fmt.Sprintf("frame type %d", typ)
		var id uint32
		if typ == 1 && size >= 4 {
			id = binary.BigEndian.Uint32(rest[:4])
			what = methodName(id)
		}
		switch id {
		case 60<<16 | 20:
			role = "consume"
		case 85<<16 | 10:
			role = "publish"
		}
		switch {
		case typ == 8: // heartbeat
		case ch == 0:
			if id == 10<<16|50 {
				connClosing = true
			}
		case connClosing && id != 20<<16|41:
			p.violation("connection %d (%s): %s on channel %d after connection.close", conn, role, what, ch)
		case id == 20<<16|10:
			delete(closing, ch)
		case closing[ch]:
			p.violation("connection %d (%s): %s on channel %d after its channel.close", conn, role, what, ch)
		case id == 20<<16|40:
			closing[ch] = true
		}
		if ch == 0 && id == 10<<16|50 && p.crossing != nil {
			if _, err := b.Write(p.crossing); err != nil {
				return
			}
		}
		if _, err := b.Write(append(fh, rest...)); err != nil {
			return
		}
	}
}

// frame encodes one AMQP frame; end is the frame-end octet (0xCE when
// valid).
func frame(typ byte, channel uint16, payload []byte, end byte) []byte {
	f := []byte{typ, byte(channel >> 8), byte(channel)}
	f = binary.BigEndian.AppendUint32(f, uint32(len(payload)))
	return append(append(f, payload...), end)
}

// warnings records the adapter's Warn-level log messages.
type warnings struct {
	mu   sync.Mutex
	msgs []string
}

func (w *warnings) Enabled(_ context.Context, l slog.Level) bool { return l >= slog.LevelWarn }
func (w *warnings) Handle(_ context.Context, r slog.Record) error {
	msg := r.Message
	r.Attrs(func(a slog.Attr) bool { msg += " " + a.String(); return true })
	w.mu.Lock()
	w.msgs = append(w.msgs, msg)
	w.mu.Unlock()
	return nil
}
func (w *warnings) WithAttrs([]slog.Attr) slog.Handler { return w }
func (w *warnings) WithGroup(string) slog.Handler      { return w }

func (w *warnings) all() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string(nil), w.msgs...)
}

// TestShutdownSendsNothingAfterClose is the regression test for the
// demo's "close: Exception (504) ... expected 'channel.open'": rounds of
// subscribe (acking, nacking with a delay, and dead-lettering handlers),
// publish, wait for the handlers, Shutdown, all through frameProxy. No
// frame may follow its channel's close or the connection's close, and
// Shutdown must return nil. Before the fix the subscription's
// basic.cancel and its channel.close ran in two unordered goroutines that
// Shutdown did not wait for; on an otherwise idle subscription the close
// usually went first. Bounded: at most 25 rounds and 20 s.
func TestShutdownSendsNothingAfterClose(t *testing.T) {
	burl := brokerURL(t)
	proxy, purl := newFrameProxy(t, burl)
	prefix := uniq("closerace")
	cleanupPrefix(t, burl, prefix)
	deadline := time.Now().Add(20 * time.Second)
	rounds := 0
	for ; rounds < 25 && time.Now().Before(deadline); rounds++ {
		shutdownRound(t, purl, fmt.Sprintf("%s-%d", prefix, rounds))
		if t.Failed() {
			break
		}
	}
	t.Logf("%d rounds", rounds)
	if v := proxy.found(); len(v) > 0 {
		t.Errorf("%d frames sent after a close, first ones:\n%s", len(v), strings.Join(v[:min(len(v), 10)], "\n"))
	}
}

func shutdownRound(t *testing.T, purl, topic string) {
	t.Helper()
	w := &warnings{}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tr, err := New(ctx, Options{URL: purl, Logger: slog.New(w), DeadLetterExchange: "amq.fanout"})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	const n = 6
	var acked, nacked, termed, dlt atomic.Int32
	var nackedOnce sync.Map
	handlers := map[string]message.Handler{
		"ack": message.HandlerFunc(func(context.Context, *message.Message) error {
			acked.Add(1)
			return nil
		}),
		// First delivery nacked with a delay (a retry-queue publish on
		// the publishing connection, then an ack), the redelivery acked.
		"delay": message.HandlerFunc(func(_ context.Context, m *message.Message) error {
			if _, again := nackedOnce.LoadOrStore(m.ID, true); again {
				nacked.Add(1)
				return nil
			}
			return message.RetryAfter(errors.New("later"), 5*time.Millisecond)
		}),
		// Rejected into the queue's dead-letter exchange.
		"term": message.HandlerFunc(func(context.Context, *message.Message) error {
			termed.Add(1)
			return message.Permanent(errors.New("refused by the test"))
		}),
		// Published to a dead-letter topic, then acked.
		"dlt": message.HandlerFunc(func(context.Context, *message.Message) error {
			dlt.Add(1)
			return message.Permanent(errors.New("refused by the test"))
		}),
	}
	// The dead-letter topic needs a queue, or its publish is unroutable.
	if err := tr.Declare(ctx, topic+"-dlt", transport.SubscribeOptions{Group: "kept"}); err != nil {
		t.Fatal(err)
	}
	subs := make(chan error, len(handlers))
	for g, h := range handlers {
		o := transport.SubscribeOptions{Group: g, MaxInFlight: 4}
		if g == "dlt" {
			o.DeadLetterTopic = topic + "-dlt"
		}
		if err := tr.Declare(ctx, topic, o); err != nil {
			t.Fatal(err)
		}
		go func() { subs <- tr.Subscribe(context.Background(), topic, h, o) }()
	}
	for i := range n {
		m := message.New([]byte("x"))
		m.ID = fmt.Sprintf("%s-%d", topic, i)
		if err := tr.Publish(ctx, topic, m); err != nil {
			t.Fatal(err)
		}
	}
	if !eventually(10*time.Second, func() bool {
		return acked.Load() == n && nacked.Load() == n && termed.Load() == n && dlt.Load() == n
	}) {
		t.Errorf("handled: ack %d, delayed nack %d, term %d, dead-letter topic %d; want %d each", acked.Load(), nacked.Load(), termed.Load(), dlt.Load(), n)
		for _, m := range w.all()[:min(len(w.all()), 5)] {
			t.Log("warning:", m)
		}
	}
	// Ping opens and closes a channel on the consuming connection too.
	_ = tr.Ping(ctx)
	if err := tr.Shutdown(ctx); err != nil {
		t.Errorf("%s: Shutdown: %v", topic, err)
	}
	for range handlers {
		if err := <-subs; !errors.Is(err, transport.ErrClosed) {
			t.Errorf("Subscribe after Shutdown = %v, want ErrClosed", err)
		}
	}
	for _, m := range w.all() {
		if strings.Contains(m, "channel error") || strings.Contains(m, "still under way") {
			t.Errorf("%s: warning at Shutdown: %s", topic, m)
		}
	}
	// Each topic's queues are deleted by cleanupPrefix.
}

// TestConsumerChanCloseStopsSettles: settles racing a consumer channel's
// close either go out before the channel.close or fail with
// amqp.ErrClosed without sending; the connection survives (another
// channel still works).
func TestConsumerChanCloseStopsSettles(t *testing.T) {
	burl := brokerURL(t)
	proxy, purl := newFrameProxy(t, burl)
	conn, err := amqp.Dial(purl)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	q := uniq("ccclose")
	setup, err := conn.Channel()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { // on a connection of its own: this one may have died
		if c, err := amqp.Dial(burl); err == nil {
			if ch, err := c.Channel(); err == nil {
				_, _ = ch.QueueDelete(q, false, false, false)
			}
			c.Close()
		}
	})
	if _, err := setup.QueueDeclare(q, false, false, false, false, nil); err != nil {
		t.Fatal(err)
	}
	const n = 200
	for range n {
		if err := setup.PublishWithContext(context.Background(), "", q, false, false, amqp.Publishing{Body: []byte("x")}); err != nil {
			t.Fatal(err)
		}
	}
	for round := range 5 {
		ch, err := conn.Channel()
		if err != nil {
			t.Fatal(err)
		}
		cc := &consumerChan{ch: ch}
		if err := ch.Qos(n, 0, false); err != nil {
			t.Fatal(err)
		}
		dl, err := ch.Consume(q, "", false, false, false, false, nil)
		if err != nil {
			t.Fatal(err)
		}
		var tags []uint64
		for len(tags) < 40 {
			select {
			case d := <-dl:
				tags = append(tags, d.DeliveryTag)
			case <-time.After(10 * time.Second):
				t.Fatalf("round %d: %d deliveries", round, len(tags))
			}
		}
		var wg sync.WaitGroup
		var sent, refused atomic.Int32
		start := make(chan struct{})
		for i, tag := range tags {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				var err error
				switch i % 3 {
				case 0:
					err = cc.ack(tag)
				case 1:
					err = cc.nack(tag, true)
				default:
					err = cc.reject(tag)
				}
				switch {
				case err == nil:
					sent.Add(1)
				case errors.Is(err, amqp.ErrClosed):
					refused.Add(1)
				default:
					t.Errorf("settle: %v", err)
				}
			}()
		}
		close(start)
		// Close once some settles went out, with the rest racing it.
		for give := time.Now().Add(5 * time.Second); sent.Load() < 10 && time.Now().Before(give); {
			runtime.Gosched()
		}
		if err := cc.close(); err != nil {
			t.Errorf("round %d: close: %v", round, err)
		}
		wg.Wait()
		if err := cc.ack(tags[0]); !errors.Is(err, amqp.ErrClosed) {
			t.Errorf("ack after close = %v, want amqp.ErrClosed", err)
		}
		if err := cc.close(); err != nil {
			t.Errorf("second close = %v", err)
		}
		t.Logf("round %d: %d settled before the close, %d refused", round, sent.Load(), refused.Load())
	}
	if _, err := setup.QueueDeclarePassive(q, false, false, false, false, nil); err != nil || conn.IsClosed() {
		t.Errorf("connection after the closes: %v (closed %v)", err, conn.IsClosed())
	}
	if v := proxy.found(); len(v) > 0 {
		t.Errorf("%d frames sent after a close, first ones:\n%s", len(v), strings.Join(v[:min(len(v), 10)], "\n"))
	}
}

// TestCloseCrossedByChannelFrame: a frame for a channel the broker has
// dropped, reaching it just ahead of the connection.close (injected by the
// proxy: a basic.ack on a channel never opened), makes RabbitMQ close the
// connection with 504 CHANNEL_ERROR "expected 'channel.open'", which
// amqp091 hands to the close handshake waiting for close-ok — the demo's
// failure. Close logs it and returns nil. A broken frame in the same
// place (501 FRAME_ERROR) is still returned. (RabbitMQ 3.10 ignores
// channel frames that arrive after the connection.close.)
func TestCloseCrossedByChannelFrame(t *testing.T) {
	burl := brokerURL(t)
	ack := binary.BigEndian.AppendUint16(nil, 60)
	ack = binary.BigEndian.AppendUint16(ack, 80)
	ack = binary.BigEndian.AppendUint64(ack, 1)
	ack = append(ack, 0)
	for _, c := range []struct {
		name   string
		inject []byte
		want   string // in Close's error; "" for nil
	}{
		{"ack on a dropped channel", frame(1, 999, ack, 0xCE), ""},
		{"broken frame", frame(1, 999, ack, 0x00), "501"},
	} {
		t.Run(c.name, func(t *testing.T) {
			proxy, purl := newFrameProxy(t, burl)
			proxy.crossing = c.inject
			w := &warnings{}
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			tr, err := New(ctx, Options{URL: purl, Logger: slog.New(w)})
			if err != nil {
				t.Fatal(err)
			}
			err = tr.Close()
			switch {
			case c.want == "" && err != nil:
				t.Errorf("Close = %v, want nil", err)
			case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
				t.Errorf("Close = %v, want an error with %q", err, c.want)
			}
			logged := strings.Join(w.all(), "\n")
			if c.want == "" && !strings.Contains(logged, "expected 'channel.open'") {
				t.Errorf("no warning naming the broker's 504; warnings: %q", w.all())
			}
			t.Logf("Close = %v; warnings %q", err, w.all())
		})
	}
}

// TestCloseReportsOnlyRealFailures: what Close reports from a close
// handshake.
func TestCloseReportsOnlyRealFailures(t *testing.T) {
	for _, c := range []struct {
		err  error
		skip bool
	}{
		{&amqp.Error{Code: amqp.ChannelError, Reason: "CHANNEL_ERROR - expected 'channel.open'", Server: true}, true},
		{fmt.Errorf("wrapped: %w", &amqp.Error{Code: amqp.ChannelError, Server: true}), true},
		{&amqp.Error{Code: amqp.ConnectionForced, Reason: "CONNECTION_FORCED - broker forced connection closure", Server: true}, false},
		{&amqp.Error{Code: amqp.InternalError, Server: true}, false},
		{&amqp.Error{Code: amqp.FrameError, Server: true}, false},
		{errors.New("write: broken pipe"), false},
	} {
		if got := closeCrossed(c.err); got != c.skip {
			t.Errorf("closeCrossed(%v) = %v, want %v", c.err, got, c.skip)
		}
	}
}

// TestCloseWhileBusy: Close cuts off running handlers and Publish calls.
// It returns nil, sends no basic.cancel or channel.close on the consuming
// connection after its connection.close, refuses settles from the moment
// it begins (one already being written may still cross the close: counted,
// not failed; so may a Publish under way on the publishing connection;
// RabbitMQ 3.10 ignores both after a connection.close), and loses
// nothing: every message whose Publish returned nil was either handled or
// is back in the queue. Bounded: at most 8 rounds and 15 s.
func TestCloseWhileBusy(t *testing.T) {
	burl := brokerURL(t)
	proxy, purl := newFrameProxy(t, burl)
	prefix := uniq("closebusy")
	cleanupPrefix(t, burl, prefix)
	_, raw := rawChannel(t, burl)
	deadline := time.Now().Add(15 * time.Second)
	rounds := 0
	for ; rounds < 8 && time.Now().Before(deadline) && !t.Failed(); rounds++ {
		topic := fmt.Sprintf("%s-%d", prefix, rounds)
		closeBusyRound(t, purl, raw, topic)
	}
	t.Logf("%d rounds", rounds)
	var settles, publishing int
	for _, v := range proxy.found() {
		switch {
		case strings.Contains(v, "(publish)"):
			publishing++ // a Publish cut off mid-way: allowed, see above
		case strings.Contains(v, "after connection.close") && (strings.Contains(v, "basic.ack") || strings.Contains(v, "basic.nack") || strings.Contains(v, "basic.reject")):
			settles++ // a settle that passed the check just before Close
		default:
			t.Errorf("sent after a close: %s", v)
		}
	}
	t.Logf("frames crossing the close: %d settles, %d on publishing connections", settles, publishing)
}

func closeBusyRound(t *testing.T, purl string, raw *amqp.Channel, topic string) {
	t.Helper()
	w := &warnings{}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	tr, err := New(ctx, Options{URL: purl, Logger: slog.New(w)})
	if err != nil {
		t.Fatal(err)
	}
	o := transport.SubscribeOptions{Group: "g", MaxInFlight: 16}
	if err := tr.Declare(ctx, topic, o); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	handled := map[string]bool{}
	confirmed := map[string]bool{}
	sub := make(chan error, 1)
	go func() {
		sub <- tr.Subscribe(context.Background(), topic, message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			time.Sleep(200 * time.Microsecond)
			mu.Lock()
			handled[m.ID] = true
			mu.Unlock()
			return nil
		}), o)
	}()
	stop := make(chan struct{})
	var pubs sync.WaitGroup
	for p := range 2 {
		pubs.Add(1)
		go func() {
			defer pubs.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				batch := make([]*message.Message, 10)
				for j := range batch {
					batch[j] = message.New([]byte("x"))
					batch[j].ID = fmt.Sprintf("%d-%d-%d", p, i, j)
				}
				if err := tr.Publish(ctx, topic, batch...); err != nil {
					return // cut off by Close: its caller knows
				}
				mu.Lock()
				for _, m := range batch {
					confirmed[m.ID] = true
				}
				mu.Unlock()
			}
		}()
	}
	if !eventually(10*time.Second, func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(handled) >= 100
	}) {
		t.Errorf("%s: handlers did not get going", topic)
	}
	if err := tr.Close(); err != nil {
		t.Errorf("%s: Close: %v", topic, err)
	}
	close(stop)
	pubs.Wait()
	if err := <-sub; !errors.Is(err, transport.ErrClosed) {
		t.Errorf("Subscribe after Close = %v, want ErrClosed", err)
	}
	// Nothing lost: what is not acked is back in the queue.
	queued := map[string]bool{}
	q := QueueName(topic, "g")
	for idle := time.Now(); time.Since(idle) < 300*time.Millisecond; {
		d, ok, err := raw.Get(q, true)
		if err != nil {
			t.Fatal(err)
		}
		if !ok {
			time.Sleep(10 * time.Millisecond)
			continue
		}
		queued[d.MessageId] = true
		idle = time.Now()
	}
	mu.Lock()
	defer mu.Unlock()
	for id := range confirmed {
		if !handled[id] && !queued[id] {
			t.Errorf("%s: message %s confirmed, neither handled nor in the queue", topic, id)
		}
	}
	t.Logf("%s: %d confirmed, %d handled, %d back in the queue; warnings %q", topic, len(confirmed), len(handled), len(queued), w.all())
}
