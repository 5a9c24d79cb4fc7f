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

// Transport connects to one RabbitMQ broker (or cluster entry point),
// with one connection for publishing and one for consuming. It implements
// transport.Conn and reconnects by itself.
type Transport struct {
	o       Options
	url     string // with credentials; never printed
	secrets []string
	log     *slog.Logger
	caps    transport.Capabilities

	// Publishing and consuming use separate connections (pub, sub), as
	// RabbitMQ advises: during a resource alarm the broker stops reading
	// from connections that publish, which must not stall consumers'
	// acks.
	pub, sub *link

	mu       sync.Mutex // guards the fields below and both links
	closed   bool
	stopping bool
	done     chan struct{} // closed by Close and Shutdown
	closedCh chan struct{} // closed by Close
	subs     map[*subscription]struct{}
	declared map[string]time.Time // retry queues declared on pub's gen

	pubSlots chan struct{}
	pubIdle  chan *pubChan
	bg       sync.WaitGroup

	// Channel work still sending frames (a consumer channel's
	// basic.cancel and channel.close, a publish channel's close, a Ping
	// or Lag channel): Shutdown lets it finish before it closes the
	// connections, since a frame on a channel that the broker has already
	// dropped is a connection error (504 "expected 'channel.open'").
	chanBusy int
	chanIdle chan struct{} // closed when chanBusy drops to 0
}

// link is one of the Transport's two connections, with its reconnect
// state. Its fields are guarded by Transport.mu.
type link struct {
	t         *Transport
	role      string // "publish" or "consume": suffix of the connection name
	conn      *amqp.Connection
	gen       uint64
	ready     chan struct{} // closed when conn is usable; replaced on loss
	unblocked chan struct{} // closed while the broker reads from conn
}

// Connections are the native connections of a Transport (see As).
type Connections struct {
	Publish, Consume *amqp.Connection
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
		o: o, log: o.Logger, done: make(chan struct{}), closedCh: make(chan struct{}),
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
		pass := o.Password
		if pass == "" && u.User != nil {
			// Only the user name is overridden: keep the URL's password.
			pass, _ = u.User.Password()
		}
		u.User = url.UserPassword(user, pass)
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
	t.pub = &link{t: t, role: "publish", ready: make(chan struct{}), unblocked: closedChan}
	t.sub = &link{t: t, role: "consume", ready: make(chan struct{}), unblocked: closedChan}
	var conns []*amqp.Connection
	for _, l := range []*link{t.pub, t.sub} {
		c, err := t.dial(ctx, l.role)
		if err != nil {
			for _, c := range conns {
				_ = c.CloseDeadline(time.Now().Add(closeWait))
			}
			if ctx.Err() != nil && errors.Is(err, ctx.Err()) {
				return nil, ctx.Err()
			}
			return nil, err
		}
		conns = append(conns, c)
	}
	t.pub.set(conns[0])
	t.sub.set(conns[1])
	return t, nil
}

// closeWait bounds the AMQP close handshakes of Close, so an unresponsive
// broker cannot hold it.
const closeWait = 2 * time.Second

// chanTask runs f, which sends frames on a channel (its close handshake,
// a basic.cancel), in a goroutine that Close waits for and that Shutdown
// lets finish before closing the connections. Once the transport is
// closed it does nothing: the connection's close ends its channels, and
// a frame sent after the connection.close could only provoke a 504.
func (t *Transport) chanTask(f func()) {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return
	}
	t.bg.Add(1)
	t.chanStartLocked()
	t.mu.Unlock()
	go func() {
		defer t.bg.Done()
		defer t.chanDone()
		f()
	}()
}

func (t *Transport) chanStartLocked() {
	t.chanBusy++
	if t.chanBusy == 1 {
		t.chanIdle = make(chan struct{})
	}
}

func (t *Transport) chanDone() {
	t.mu.Lock()
	t.chanBusy--
	if t.chanBusy == 0 {
		close(t.chanIdle)
	}
	t.mu.Unlock()
}

// chansIdle returns a channel closed once no chanTask is running.
func (t *Transport) chansIdle() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.chanBusy == 0 {
		return closedChan
	}
	return t.chanIdle
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
func (t *Transport) dial(ctx context.Context, role string) (*amqp.Connection, error) {
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
	cfg.Properties.SetClientConnectionName(t.o.ConnectionName + "-" + role)
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

func (l *link) set(c *amqp.Connection) {
	t := l.t
	notify := c.NotifyClose(make(chan *amqp.Error, 1))
	blocked := c.NotifyBlocked(make(chan amqp.Blocking, 4))
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		_ = c.CloseDeadline(time.Now().Add(closeWait))
		return
	}
	l.conn = c
	l.gen++
	if l == t.pub {
		clear(t.declared)
	}
	l.unblocked = closedChan // a new connection starts unblocked
	close(l.ready)
	t.bg.Add(2)
	t.mu.Unlock()
	go l.watch(c, notify)
	go func() {
		defer t.bg.Done()
		// The broker blocks connections that publish during a resource
		// alarm (memory or disk); Publish waits for the unblock.
		for b := range blocked {
			t.mu.Lock()
			if l.conn == c {
				if b.Active && l.unblocked == closedChan {
					l.unblocked = make(chan struct{})
				} else if !b.Active && l.unblocked != closedChan {
					close(l.unblocked)
					l.unblocked = closedChan
				}
			}
			t.mu.Unlock()
			if b.Active {
				t.log.Warn("amqptransport: broker blocked the connection (resource alarm)", "connection", l.role, "reason", b.Reason)
			} else {
				t.log.Info("amqptransport: broker unblocked the connection", "connection", l.role)
			}
		}
	}()
}

var closedChan = func() chan struct{} { c := make(chan struct{}); close(c); return c }()

// whenUnblocked returns a channel closed while the broker accepts
// publishes (connection.blocked not in force).
func (t *Transport) whenUnblocked() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.pub.unblocked
}

// watch waits for c to close and reconnects unless the transport closed.
func (l *link) watch(c *amqp.Connection, notify chan *amqp.Error) {
	t := l.t
	defer t.bg.Done()
	var cause *amqp.Error
	select {
	case cause = <-notify:
	case <-t.done:
		return
	}
	t.mu.Lock()
	if t.closed || l.conn != c {
		t.mu.Unlock()
		return
	}
	l.conn = nil
	l.ready = make(chan struct{})
	t.mu.Unlock()
	if cause != nil {
		t.log.Warn("amqptransport: connection lost; reconnecting", "connection", l.role, "error", t.scrub(cause).Error())
	} else {
		t.log.Warn("amqptransport: connection closed; reconnecting", "connection", l.role)
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
		nc, err := t.dial(ctx, l.role)
		if err == nil {
			t.log.Info("amqptransport: reconnected", "connection", l.role, "attempts", attempt)
			l.set(nc)
			return
		}
		if ctx.Err() != nil {
			return
		}
		d := b.NextBackOff()
		t.log.Debug("amqptransport: reconnect failed", "connection", l.role, "attempt", attempt, "retry_in", d, "error", err.Error())
		select {
		case <-time.After(d):
		case <-t.done:
			return
		}
	}
}

// connection returns the current connection, waiting for a reconnect.
func (l *link) connection(ctx context.Context) (*amqp.Connection, uint64, error) {
	t := l.t
	for {
		t.mu.Lock()
		if t.closed {
			t.mu.Unlock()
			return nil, 0, transport.ErrClosed
		}
		c, gen, ready := l.conn, l.gen, l.ready
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

// closeCrossed reports whether err, returned by a connection's close
// handshake, is the broker's 504 CHANNEL_ERROR: a frame for a channel the
// broker had already dropped reached it while the connection was closing.
func closeCrossed(err error) bool {
	var ae *amqp.Error
	return errors.As(err, &ae) && ae.Code == amqp.ChannelError
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// Capabilities implements transport.Conn.
func (t *Transport) Capabilities() transport.Capabilities { return t.caps }

// As sets a **amqp091.Connection target to the current consuming
// connection, and a *Connections target to both current connections
// (publishing and consuming). Both change after a reconnect; As reports
// false while the one asked for is reconnecting.
func (t *Transport) As(target any) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	switch p := target.(type) {
	case **amqp.Connection:
		if t.sub.conn == nil {
			return false
		}
		*p = t.sub.conn
		return true
	case *Connections:
		if t.sub.conn == nil || t.pub.conn == nil {
			return false
		}
		*p = Connections{Publish: t.pub.conn, Consume: t.sub.conn}
		return true
	}
	return false
}

// Close closes the connection at once: running handlers' contexts are
// cancelled, their unsettled messages return to the queues, and every
// Subscribe returns transport.ErrClosed (as soon as its handlers return;
// Close does not wait for them). It is idempotent and safe to call
// concurrently.
//
// Close returns an error when a connection's close handshake fails: the
// broker ended the connection for a reason of its own while it was being
// closed (320 CONNECTION_FORCED, 541 INTERNAL_ERROR, 501 FRAME_ERROR, an
// I/O error). It does not report a connection already lost, a handshake
// that outlasts its 2 s bound, or the broker's 504 CHANNEL_ERROR (for
// example "expected 'channel.open'"): a 504 at that point comes from a
// frame for a channel the broker had dropped reaching it just ahead of
// the close (no longer one of the adapter's own; an application's own use
// of a channel from Message.As can still send one), which loses nothing — unsettled deliveries
// return to their queues and every Publish reports its own outcome to
// its caller. That case is logged at Warn with the connection's role.
// See "Closing order" in the package doc.
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
	conns := []*amqp.Connection{t.pub.conn, t.sub.conn}
	roles := []string{t.pub.role, t.sub.role}
	t.pub.conn, t.sub.conn = nil, nil
	subs := make([]*subscription, 0, len(t.subs))
	for s := range t.subs {
		subs = append(subs, s)
	}
	t.mu.Unlock()
	for _, s := range subs {
		// No settle may follow the connection.close (see consumerChan);
		// the broker requeues what is unsettled.
		if c := s.cur.Load(); c != nil {
			c.stop()
		}
		s.d.Cancel()
	}
	errs := make([]error, len(conns))
	var wg sync.WaitGroup
	for i, c := range conns {
		if c == nil {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			// An unresponsive broker (or one in a resource alarm, which
			// stops reading from publishing connections) cannot hold
			// Close longer than closeWait.
			cerr := c.CloseDeadline(time.Now().Add(closeWait))
			switch {
			case cerr == nil || errors.Is(cerr, amqp.ErrClosed) || isTimeout(cerr):
			case closeCrossed(cerr):
				t.log.Warn("amqptransport: the broker ended the connection with a channel error while it was being closed (a frame crossed the close; nothing is lost)",
					"connection", roles[i], "error", t.scrub(cerr).Error())
			default:
				errs[i] = t.scrub(fmt.Errorf("amqptransport: close: %w", cerr))
			}
		}()
	}
	wg.Wait()
	err := errors.Join(errs...)
	// Subscribe calls return ErrClosed on their own once their handlers
	// (whose context is now cancelled) return; Close does not wait for
	// them, as http.Server.Close does not wait for handlers.
	t.bg.Wait()
	return err
}

// Shutdown stops every subscription from taking messages (basic.cancel),
// waits for running handlers and their acks, for running Publish calls
// and (at most 2 s) for the channels' close handshakes, and closes. When ctx ends first, it cancels the handlers'
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
		// Let channel closes and consumer cancels under way finish, so
		// none of their frames follows the connection.close (at most
		// closeWait: an unresponsive broker cannot hold Shutdown).
		wait := time.NewTimer(closeWait)
		defer wait.Stop()
		select {
		case <-t.chansIdle():
		case <-wait.C:
			t.log.Warn("amqptransport: channel close handshakes still under way at shutdown; closing the connections anyway")
		case <-ctx.Done():
			return ctx.Err()
		case <-t.closedCh:
		}
		return nil
	}()
	if cerr := t.Close(); err == nil {
		err = cerr
	}
	return err
}
