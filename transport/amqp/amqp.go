package amqptransport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/courierkit/courier/transport"
)

var (
	// ErrUnroutable is matched by the error Publish returns when the broker
	// returned a mandatory message because no queue is bound to take it.
	ErrUnroutable = errors.New("amqptransport: unroutable message")
	// ErrNacked is matched when the broker refused a message with a
	// basic.nack (an internal error or a queue's reject-publish overflow).
	ErrNacked = errors.New("amqptransport: message nacked by the broker")
	// ErrUnconfirmed is matched when the connection was lost before the
	// broker confirmed a message and the publish retry window (or ctx)
	// ended: the message may or may not have been stored.
	ErrUnconfirmed = errors.New("amqptransport: message not confirmed")
	// ErrTopology is matched when the broker refused a declaration
	// because an exchange or queue exists with other settings (406
	// PRECONDITION_FAILED) or may not be declared (403 ACCESS_REFUSED).
	// The *amqp091.Error stays reachable with errors.As.
	ErrTopology = errors.New("amqptransport: topology conflict")
)

// Transport is a connection to one RabbitMQ broker (or cluster entry
// point). It implements transport.Conn. It reconnects by itself.
type Transport struct {
	o       Options
	url     string // with credentials; never printed
	secrets []string
	log     *slog.Logger
	caps    transport.Capabilities

	mu       sync.Mutex
	conn     *amqp.Connection
	gen      uint64
	ready    chan struct{} // closed when conn is usable; replaced on loss
	closed   bool
	stopping bool
	done     chan struct{} // closed by Close and Shutdown
	closedCh chan struct{} // closed by Close
	subs     map[*subscription]struct{}
	declared map[string]time.Time // retry queues declared on this gen

	pubSlots chan struct{}
	pubIdle  chan *pubChan
	bg       sync.WaitGroup
}

var _ transport.Conn = (*Transport)(nil)

// New connects to the broker named by opts.URL and returns a Transport. It
// fails when the first connection cannot be made (later losses are
// reconnected in the background).
func New(ctx context.Context, opts Options) (*Transport, error) {
	o := opts.withDefaults()
	if err := o.validate(); err != nil {
		return nil, err
	}
	u, err := url.Parse(o.URL)
	if err != nil {
		return nil, errors.New("amqptransport: malformed URL " + transport.Redact(o.URL))
	}
	if u.Scheme != "amqp" && u.Scheme != "amqps" {
		return nil, fmt.Errorf("amqptransport: URL scheme %q: want amqp or amqps", u.Scheme)
	}
	t := &Transport{
		o: o, log: o.Logger, done: make(chan struct{}), closedCh: make(chan struct{}), ready: make(chan struct{}),
		subs: map[*subscription]struct{}{}, declared: map[string]time.Time{},
		pubSlots: make(chan struct{}, o.PublishChannels),
		pubIdle:  make(chan *pubChan, o.PublishChannels),
	}
	if u.User != nil {
		t.secrets = append(t.secrets, u.User.Username())
		if p, ok := u.User.Password(); ok {
			t.secrets = append(t.secrets, p)
		}
	}
	if o.Username != "" || o.Password != "" {
		user := o.Username
		if user == "" && u.User != nil {
			user = u.User.Username()
		}
		u.User = url.UserPassword(user, o.Password)
		t.secrets = append(t.secrets, o.Username, o.Password)
	}
	t.url = u.String()
	t.caps = transport.Capabilities{
		Persistent:     true,
		Redelivery:     true,
		DelayedNack:    true,
		AttemptCount:   true,
		OrderedByKey:   true,
		DeadLetter:     true,
		Replay:         false,
		BrokerTime:     false,
		LeaseExtension: true,
		Limits: transport.Limits{
			MaxPayload:     o.MaxPayload,
			MaxIDBytes:     255,
			MaxKeyBytes:    255,
			MaxHeaderBytes: maxHeaderTotal,
			MaxNameLen:     maxNameLen,
		},
	}
	conn, err := t.dial(ctx)
	if err != nil {
		if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
			return nil, ctx.Err()
		}
		return nil, err
	}
	t.setConn(conn)
	return t, nil
}

const (
	// maxNameLen keeps "<topic>.<group>" and its retry queues within
	// AMQP's 255-byte short strings.
	maxNameLen = 100
	// maxHeaderTotal bounds the encoded properties (ID, key, headers),
	// which travel in one content-header frame of at most frame_max
	// (128 KiB by default).
	maxHeaderTotal = 120 << 10
)

// dial makes one connection. Errors never carry the credentials.
func (t *Transport) dial(ctx context.Context) (*amqp.Connection, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	timeout := t.o.DialTimeout
	cfg := amqp.Config{
		Heartbeat:       t.o.Heartbeat,
		TLSClientConfig: t.o.TLSConfig,
		Properties:      amqp.NewConnectionProperties(),
		Locale:          "en_US",
		Dial: func(network, addr string) (net.Conn, error) {
			d := net.Dialer{Timeout: timeout}
			c, err := d.DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			// Bounds the handshake; amqp091 clears it once open.
			if err := c.SetDeadline(time.Now().Add(timeout)); err != nil {
				c.Close()
				return nil, err
			}
			return c, nil
		},
	}
	cfg.Properties.SetClientConnectionName(t.o.ConnectionName)
	var conn *amqp.Connection
	var err error
	done := make(chan struct{})
	go func() {
		defer close(done)
		conn, err = amqp.DialConfig(t.url, cfg)
	}()
	select {
	case <-done:
	case <-ctx.Done():
		<-done // the dialer honours ctx; the handshake has its deadline
		if err == nil {
			conn.Close()
		}
		return nil, ctx.Err()
	}
	if err != nil {
		return nil, t.scrub(fmt.Errorf("amqptransport: connect to %s: %w", transport.Redact(t.url), err))
	}
	return conn, nil
}

// scrub hides credentials in err's text, keeping its chain.
func (t *Transport) scrub(err error) error {
	if err == nil {
		return nil
	}
	return &scrubbed{err: err, secrets: t.secrets}
}

type scrubbed struct {
	err     error
	secrets []string
}

func (e *scrubbed) Error() string { return transport.RedactSecrets(e.err.Error(), e.secrets...) }
func (e *scrubbed) Unwrap() error { return e.err }

func (t *Transport) setConn(c *amqp.Connection) {
	notify := c.NotifyClose(make(chan *amqp.Error, 1))
	blocked := c.NotifyBlocked(make(chan amqp.Blocking, 4))
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		c.Close()
		return
	}
	t.conn = c
	t.gen++
	clear(t.declared)
	close(t.ready)
	t.bg.Add(2)
	t.mu.Unlock()
	go t.watch(c, notify)
	go func() {
		defer t.bg.Done()
		// The broker blocks publishers during a resource alarm (memory
		// or disk); Publish then waits, bounded by its ctx.
		for b := range blocked {
			if b.Active {
				t.log.Warn("amqptransport: broker blocked publishing", "reason", b.Reason)
			} else {
				t.log.Info("amqptransport: broker unblocked publishing")
			}
		}
	}()
}

// watch waits for c to close and reconnects unless the transport closed.
func (t *Transport) watch(c *amqp.Connection, notify chan *amqp.Error) {
	defer t.bg.Done()
	var cause *amqp.Error
	select {
	case cause = <-notify:
	case <-t.done:
		return
	}
	t.mu.Lock()
	if t.closed || t.conn != c {
		t.mu.Unlock()
		return
	}
	t.conn = nil
	t.ready = make(chan struct{})
	t.mu.Unlock()
	if cause != nil {
		t.log.Warn("amqptransport: connection lost; reconnecting", "error", t.scrub(cause).Error())
	} else {
		t.log.Warn("amqptransport: connection closed; reconnecting")
	}
	b := backoff.NewExponentialBackOff()
	b.InitialInterval = t.o.ReconnectMin
	b.MaxInterval = t.o.ReconnectMax
	b.Reset()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-t.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	for attempt := 1; ; attempt++ {
		nc, err := t.dial(ctx)
		if err == nil {
			t.log.Info("amqptransport: reconnected", "attempts", attempt)
			t.setConn(nc)
			return
		}
		if ctx.Err() != nil {
			return
		}
		d := b.NextBackOff()
		t.log.Debug("amqptransport: reconnect failed", "attempt", attempt, "retry_in", d, "error", err.Error())
		select {
		case <-time.After(d):
		case <-t.done:
			return
		}
	}
}

// connection returns the current connection, waiting for a reconnect.
func (t *Transport) connection(ctx context.Context) (*amqp.Connection, uint64, error) {
	for {
		t.mu.Lock()
		if t.closed {
			t.mu.Unlock()
			return nil, 0, transport.ErrClosed
		}
		c, gen, ready := t.conn, t.gen, t.ready
		t.mu.Unlock()
		if c != nil && !c.IsClosed() {
			return c, gen, nil
		}
		if c != nil {
			// Closed but watch has not noticed yet: wait briefly.
			select {
			case <-time.After(10 * time.Millisecond):
				continue
			case <-ctx.Done():
				return nil, 0, ctx.Err()
			case <-t.done:
				return nil, 0, transport.ErrClosed
			}
		}
		select {
		case <-ready:
		case <-ctx.Done():
			return nil, 0, ctx.Err()
		case <-t.done:
			return nil, 0, transport.ErrClosed
		}
	}
}

// isConnLoss reports whether err comes from a lost connection (retry after
// the reconnect) rather than a channel-level refusal.
func (t *Transport) isConnLoss(c *amqp.Connection, err error) bool {
	if c != nil && c.IsClosed() {
		return true
	}
	var ae *amqp.Error
	if errors.As(err, &ae) {
		switch ae.Code {
		case amqp.ConnectionForced, amqp.FrameError, amqp.InternalError, amqp.ChannelError:
			return true
		}
		return false
	}
	return errors.Is(err, amqp.ErrClosed) || errors.Is(err, net.ErrClosed)
}

// Capabilities implements transport.Conn.
func (t *Transport) Capabilities() transport.Capabilities { return t.caps }

// As sets *amqp091.Connection targets (a **amqp091.Connection) to the
// current connection.
func (t *Transport) As(target any) bool {
	switch p := target.(type) {
	case **amqp.Connection:
		t.mu.Lock()
		defer t.mu.Unlock()
		if t.conn == nil {
			return false
		}
		*p = t.conn
		return true
	}
	return false
}

// Close closes the connection at once: running handlers' contexts are
// cancelled, their unsettled messages return to the queues, and every
// Subscribe returns transport.ErrClosed (as soon as its handlers return;
// Close does not wait for them). It is idempotent and safe to call
// concurrently.
func (t *Transport) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	close(t.closedCh)
	if !t.stopping {
		t.stopping = true
		close(t.done)
	}
	c := t.conn
	t.conn = nil
	subs := make([]*subscription, 0, len(t.subs))
	for s := range t.subs {
		subs = append(subs, s)
	}
	t.mu.Unlock()
	for _, s := range subs {
		s.d.Cancel()
	}
	var err error
	if c != nil {
		if cerr := c.Close(); cerr != nil && !errors.Is(cerr, amqp.ErrClosed) {
			err = t.scrub(fmt.Errorf("amqptransport: close: %w", cerr))
		}
	}
	// Subscribe calls return ErrClosed on their own once their handlers
	// (whose context is now cancelled) return; Close does not wait for
	// them, as http.Server.Close does not wait for handlers.
	t.bg.Wait()
	return err
}

// Shutdown stops every subscription from taking messages (basic.cancel),
// waits for running handlers and their acks and for running Publish
// calls, and closes. When ctx ends first, it cancels the handlers'
// context, closes at once (what is unacked returns to the queues) and
// returns ctx.Err().
func (t *Transport) Shutdown(ctx context.Context) error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	if !t.stopping {
		t.stopping = true
		close(t.done)
	}
	subs := make([]*subscription, 0, len(t.subs))
	for s := range t.subs {
		subs = append(subs, s)
	}
	t.mu.Unlock()
	err := func() error {
		for _, s := range subs {
			select {
			case <-s.exited:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		// Wait for running publishes (each holds a slot).
		for range cap(t.pubSlots) {
			select {
			case t.pubSlots <- struct{}{}:
			case <-ctx.Done():
				return ctx.Err()
			case <-t.closedCh:
				return nil
			}
		}
		return nil
	}()
	if cerr := t.Close(); err == nil {
		err = cerr
	}
	return err
}
