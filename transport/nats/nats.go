package natstransport

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// Sentinel errors of this package. SDK errors stay reachable with
// errors.Is / errors.As through the wrapping.
var (
	// ErrNameConflict: two courier names map onto one NATS stream or
	// consumer name, or an existing stream or consumer does not match
	// what the topic or group needs.
	ErrNameConflict = errors.New("natstransport: name conflict")
	// ErrNoRedelivery is returned by a nack in core NATS mode, which
	// cannot deliver a message again; the Dispatcher logs it.
	ErrNoRedelivery = errors.New("natstransport: core NATS cannot redeliver; message dropped")
	// ErrNoAck: JetStream did not acknowledge a publish within
	// Options.APITimeout (typically a connection lost with the publish in
	// flight). The message may or may not be stored; publishing it again
	// with the same ID is safe within the stream's duplicate window.
	ErrNoAck = errors.New("natstransport: no publish acknowledgement")
)

// Transport is a courier connection to a NATS server, in JetStream mode
// (the default) or core NATS mode (Options.Core). It implements
// transport.Conn and is safe for concurrent use.
type Transport struct {
	o    Options
	nc   *nats.Conn
	js   jetstream.JetStream
	log  *slog.Logger
	caps transport.Capabilities
	sec  []string

	mu      sync.Mutex
	streams map[string]jetstream.Stream // by topic, ensured

	closing  chan struct{} // closed by Shutdown and Close: stop fetching
	hard     chan struct{} // closed by Close or an expired Shutdown: cancel handlers
	stateMu  sync.Mutex
	closed   bool
	hardDone bool
	subs     sync.WaitGroup
	closeErr error
	ncClosed sync.Once
}

var _ transport.Conn = (*Transport)(nil)

// New connects to the server named by opts.URL. It returns when the
// connection is up (and, in JetStream mode, JetStream answered), or with
// an error when ctx ends first or the server refuses.
func New(ctx context.Context, opts Options) (*Transport, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	o := opts.withDefaults()
	if err := o.validate(); err != nil {
		return nil, err
	}
	t := &Transport{
		o: o, log: o.Logger, streams: map[string]jetstream.Stream{},
		closing: make(chan struct{}), hard: make(chan struct{}),
	}
	t.sec = o.secrets()
	nopts, err := o.natsOptions(t)
	if err != nil {
		return nil, err
	}
	servers := strings.Join(append([]string{o.URL}, o.Servers...), ",")
	type res struct {
		nc  *nats.Conn
		err error
	}
	ch := make(chan res, 1)
	go func() {
		nc, err := nats.Connect(servers, nopts...)
		ch <- res{nc, err}
	}()
	var nc *nats.Conn
	select {
	case r := <-ch:
		if r.err != nil {
			return nil, t.wrap(fmt.Sprintf("natstransport: connect to %s", transport.Redact(o.URL)), r.err)
		}
		nc = r.nc
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.nc != nil {
				r.nc.Close()
			}
		}()
		return nil, ctx.Err()
	}
	t.nc = nc
	if err := ctx.Err(); err != nil {
		nc.Close()
		return nil, err
	}
	if !o.Core {
		js, err := jetstream.New(nc,
			jetstream.WithDefaultTimeout(o.APITimeout),
			jetstream.WithPublishAsyncMaxPending(o.PublishAsyncMaxPending),
			jetstream.WithPublishAsyncTimeout(o.APITimeout),
		)
		if err != nil {
			nc.Close()
			return nil, t.wrap("natstransport: jetstream", err)
		}
		t.js = js
		if _, err := js.AccountInfo(ctx); err != nil {
			nc.Close()
			if cerr := ctx.Err(); cerr != nil {
				return nil, cerr
			}
			return nil, t.wrap("natstransport: JetStream not available (set core=true for core NATS)", err)
		}
	}
	t.caps = t.capabilities()
	return t, nil
}

// wrap returns an error with prefix, err's text scrubbed of credentials
// and err still reachable with errors.Is/As.
func (t *Transport) wrap(prefix string, err error) error {
	return &opError{prefix: prefix, err: err, sec: t.sec}
}

func (t *Transport) redact(err error) string {
	if err == nil {
		return ""
	}
	return transport.RedactSecrets(err.Error(), t.sec...)
}

type opError struct {
	prefix string
	err    error
	sec    []string
}

func (e *opError) Error() string {
	return transport.RedactSecrets(e.prefix+": "+e.err.Error(), e.sec...)
}
func (e *opError) Unwrap() error { return e.err }

func (t *Transport) capabilities() transport.Capabilities {
	max := int(t.nc.MaxPayload())
	// "NATS/1.0\r\n" + "\r\n" + "Nats-Msg-Id: " + 64-byte ID + "\r\n"
	idOverhead := len("NATS/1.0\r\n") + 2 + len(hdrMsgID) + 4 + 64
	if t.o.Stream != "" && !t.o.Core {
		// Bound stream: the ID also travels in Courier-Id, and
		// Nats-Msg-Id is the quoted ID scoped by the subject (dedupID);
		// room for a subject of up to 256 bytes.
		idOverhead += len(hdrID) + 4 + 64 + 2 + len(" subject=") + 2 + 256
	}
	lim := transport.Limits{
		MaxPayload: max - idOverhead,
		// ID and payload with the framing of the ID header; a key and
		// further headers cost their name and 4 bytes of framing each,
		// which Publish checks exactly against max_payload.
		MaxMessage: max - (len("NATS/1.0\r\n") + 2 + len(hdrMsgID) + 4),
	}
	if t.o.Core {
		return transport.Capabilities{
			OrderedByKey: true, // per-key order within a subscriber (Dispatcher)
			DeadLetter:   true, // the Dispatcher publishes to DeadLetterTopic
			Limits:       lim,
		}
	}
	return transport.Capabilities{
		Persistent:     t.o.Storage == "file",
		Redelivery:     true,
		DelayedNack:    true,
		AttemptCount:   true,
		OrderedByKey:   true,
		DeadLetter:     true,
		Replay:         t.o.Retention == "limits",
		BrokerTime:     true,
		LeaseExtension: true,
		Limits:         lim,
	}
}

// Capabilities tells what this transport does; see the package doc.
func (t *Transport) Capabilities() transport.Capabilities { return t.caps }

// As sets target to a native client: **nats.Conn, or *jetstream.JetStream
// (JetStream mode only).
func (t *Transport) As(target any) bool {
	switch p := target.(type) {
	case **nats.Conn:
		*p = t.nc
		return true
	case *jetstream.JetStream:
		if t.js == nil {
			return false
		}
		*p = t.js
		return true
	}
	return false
}

func (t *Transport) isClosed() bool {
	t.stateMu.Lock()
	defer t.stateMu.Unlock()
	return t.closed
}

// subject is the NATS subject of topic.
func (t *Transport) subject(topic string) string { return t.o.SubjectPrefix + topic }

// streamName is the stream a topic lives in.
func (t *Transport) streamName(topic string) string {
	if t.o.Stream != "" {
		return t.o.Stream
	}
	return natsName(t.o.StreamPrefix + topic)
}

// natsName makes s a valid stream or consumer name: "." becomes "_", and
// names over 200 bytes are cut and suffixed with a hash so they stay
// unique. Collisions ("a.b" and "a_b") are caught by the metadata check in
// ensureStream and ensureConsumer.
func natsName(s string) string {
	s = strings.ReplaceAll(s, ".", "_")
	if len(s) > 200 {
		h := sha256.Sum256([]byte(s))
		s = s[:183] + "-" + hex.EncodeToString(h[:8])
	}
	return s
}

const (
	metaTopic = "courier_topic"
	metaGroup = "courier_group"
)

// ensureStream returns the stream of topic, creating it when allowed.
func (t *Transport) ensureStream(ctx context.Context, topic string) (jetstream.Stream, error) {
	name := t.streamName(topic)
	t.mu.Lock()
	s := t.streams[topic]
	t.mu.Unlock()
	if s != nil {
		return s, nil
	}
	subj := t.subject(topic)
	if t.o.Stream != "" || t.o.NoProvision {
		st, err := t.js.Stream(ctx, name)
		if err != nil {
			if cerr := ctx.Err(); cerr != nil {
				return nil, cerr
			}
			return nil, t.wrap(fmt.Sprintf("natstransport: stream %q of topic %q", name, topic), err)
		}
		s = st
	} else {
		cfg := jetstream.StreamConfig{
			Name:        name,
			Description: "courier topic " + topic,
			Subjects:    []string{subj},
			Retention:   jetstream.LimitsPolicy,
			Storage:     jetstream.FileStorage,
			Replicas:    t.o.Replicas,
			MaxAge:      t.o.MaxAge,
			MaxBytes:    -1,
			MaxMsgs:     -1,
			Discard:     jetstream.DiscardOld,
			Duplicates:  t.o.DuplicateWindow,
			Metadata:    map[string]string{metaTopic: topic},
		}
		if t.o.MaxBytes > 0 {
			cfg.MaxBytes = t.o.MaxBytes
		}
		if t.o.Retention == "interest" {
			cfg.Retention = jetstream.InterestPolicy
		}
		if t.o.Storage == "memory" {
			cfg.Storage = jetstream.MemoryStorage
		}
		st, err := t.js.CreateStream(ctx, cfg)
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			// Exists with another configuration: use it when it is the
			// same topic's stream (settings changed by an operator).
			st, err = t.js.Stream(ctx, name)
			if err == nil {
				info := st.CachedInfo()
				if got := info.Config.Metadata[metaTopic]; got != "" && got != topic {
					return nil, fmt.Errorf("%w: topics %q and %q both map to stream %q; rename one", ErrNameConflict, topic, got, name)
				}
				found := false
				for _, sj := range info.Config.Subjects {
					if sj == subj {
						found = true
					}
				}
				if !found {
					return nil, fmt.Errorf("%w: stream %q exists but does not hold subject %q (it holds %v)", ErrNameConflict, name, subj, info.Config.Subjects)
				}
			}
		}
		if err != nil {
			if cerr := ctx.Err(); cerr != nil {
				return nil, cerr
			}
			return nil, t.wrap(fmt.Sprintf("natstransport: create stream %q for topic %q", name, topic), err)
		}
		s = st
	}
	t.mu.Lock()
	t.streams[topic] = s
	t.mu.Unlock()
	return s, nil
}

func (t *Transport) forgetStream(topic string) {
	t.mu.Lock()
	delete(t.streams, topic)
	t.mu.Unlock()
}

// Publish sends msgs to topic. In JetStream mode it returns once the
// server stored every message (one acknowledged publish, or asynchronous
// publishes with every acknowledgement awaited); a message the stream
// de-duplicates (same topic and ID within its duplicate window; see the
// package doc) is acknowledged but not stored again. In core mode it returns once the server received them (flush).
// A message over the server's max_payload fails the whole call before
// anything is sent, with a *transport.LimitError.
func (t *Transport) Publish(ctx context.Context, topic string, msgs ...*message.Message) error {
	if t.isClosed() {
		return transport.ErrClosed
	}
	return t.publish(ctx, topic, msgs)
}

// publish is Publish without the closed check, for dead-letter copies
// published while a Shutdown drains.
func (t *Transport) publish(ctx context.Context, topic string, msgs []*message.Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := transport.PreparePublish(topic, msgs, t.caps.Limits); err != nil {
		return err
	}
	if len(msgs) == 0 {
		return nil
	}
	subj := t.subject(topic)
	max := int(t.nc.MaxPayload())
	nm := make([]*nats.Msg, len(msgs))
	for i, m := range msgs {
		var dedup string
		if !t.o.Core {
			dedup = dedupID(t.o.Stream, subj, m)
		}
		msg, err := encode(i, subj, m, dedup)
		if err != nil {
			return err
		}
		if n := wireSize(msg); n > max {
			return &transport.LimitError{Index: i, MessageID: m.ID, What: "message", Size: n, Limit: max}
		}
		nm[i] = msg
	}
	if t.o.Core {
		return t.publishCore(ctx, nm)
	}
	if _, err := t.ensureStream(ctx, topic); err != nil {
		if ctx.Err() == nil && t.isClosed() {
			return transport.ErrClosed
		}
		return err
	}
	err := t.publishJS(ctx, nm)
	if errors.Is(err, jetstream.ErrNoStreamResponse) && t.o.Stream == "" && !t.o.NoProvision {
		// The stream may have been deleted under us: provision again
		// and retry once (the IDs de-duplicate a double store).
		t.forgetStream(topic)
		if _, serr := t.ensureStream(ctx, topic); serr == nil {
			err = t.publishJS(ctx, nm)
		}
	}
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		if t.isClosed() {
			return transport.ErrClosed // closed while publishing
		}
		return err
	}
	return nil
}

func (t *Transport) publishJS(ctx context.Context, nm []*nats.Msg) error {
	// An acknowledgement comes within milliseconds; one lost with a
	// dropped connection never comes. Waiting at most APITimeout (plus a
	// little per message of a batch) turns that into an error the caller
	// can retry (the IDs make a retry safe) instead of a hang until the
	// caller's deadline.
	wait := t.o.APITimeout + time.Duration(len(nm)-1)*time.Millisecond
	parent := ctx
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	noAck := func(i int, err error) error {
		if parent.Err() == nil && errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("%w for message %d to %q within %s (it may or may not be stored; a retry with the same ID is de-duplicated): %w", ErrNoAck, i, nm[i].Subject, wait, err)
		}
		return t.wrap(fmt.Sprintf("natstransport: publish message %d to %q", i, nm[i].Subject), err)
	}
	if len(nm) == 1 {
		ack, err := t.js.PublishMsg(ctx, nm[0])
		if err != nil {
			return noAck(0, err)
		}
		t.logDuplicate(nm[0], ack)
		return nil
	}
	// Asynchronous publishes in windows, every acknowledgement awaited.
	window := t.o.PublishAsyncMaxPending / 2
	if window < 1 {
		window = 1
	}
	var errs []error
	for start := 0; start < len(nm); start += window {
		end := min(start+window, len(nm))
		futs := make([]jetstream.PubAckFuture, 0, end-start)
		for i := start; i < end; i++ {
			f, err := t.js.PublishMsgAsync(nm[i])
			if err != nil {
				errs = append(errs, t.wrap(fmt.Sprintf("natstransport: publish message %d to %q", i, nm[i].Subject), err))
				break
			}
			futs = append(futs, f)
		}
		for j, f := range futs {
			select {
			case ack := <-f.Ok():
				t.logDuplicate(nm[start+j], ack)
			case err := <-f.Err():
				errs = append(errs, noAck(start+j, err))
			case <-ctx.Done():
				return noAck(start+j, ctx.Err())
			}
		}
		if len(errs) > 0 {
			return errors.Join(errs...)
		}
	}
	return nil
}

// logDuplicate logs, at Debug, a publish the stream acknowledged without
// storing it: a message with the same Nats-Msg-Id was stored within the
// stream's duplicate window (a retry, or a distinct message reusing an
// ID).
func (t *Transport) logDuplicate(msg *nats.Msg, ack *jetstream.PubAck) {
	if ack == nil || !ack.Duplicate {
		return
	}
	t.log.Debug("natstransport: publish de-duplicated: the stream already holds a message with this Nats-Msg-Id within its duplicate window", "subject", msg.Subject, "nats_msg_id", msg.Header.Get(hdrMsgID), "stream", ack.Stream, "sequence", ack.Sequence)
}

func (t *Transport) publishCore(ctx context.Context, nm []*nats.Msg) error {
	for i, msg := range nm {
		if err := t.nc.PublishMsg(msg); err != nil {
			if t.isClosed() && errors.Is(err, nats.ErrConnectionClosed) {
				return transport.ErrClosed
			}
			return t.wrap(fmt.Sprintf("natstransport: publish message %d to %q", i, msg.Subject), err)
		}
	}
	fctx := ctx
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		fctx, cancel = context.WithTimeout(ctx, t.o.APITimeout)
		defer cancel()
	}
	if err := t.nc.FlushWithContext(fctx); err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		return t.wrap("natstransport: flush", err)
	}
	return nil
}

// Declare creates the topic's stream and the group's durable consumer, so
// messages published from then on are kept for the group. Declaring an
// existing group is a no-op (its settings are not changed); a consumer of
// that name that belongs to another group or subject is an
// ErrNameConflict. Core NATS cannot keep messages for an absent group:
// there Declare returns transport.ErrUnsupported.
func (t *Transport) Declare(ctx context.Context, topic string, opts transport.SubscribeOptions) error {
	if t.isClosed() {
		return transport.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if opts.Group == "" {
		return fmt.Errorf("natstransport: Declare needs SubscribeOptions.Group")
	}
	if err := transport.CheckSubscribe(topic, opts, t.caps.Limits); err != nil {
		return err
	}
	if t.o.Core {
		return fmt.Errorf("%w: core NATS keeps no messages for a group while none of its subscribers runs", transport.ErrUnsupported)
	}
	s, err := t.ensureStream(ctx, topic)
	if err == nil {
		_, err = t.ensureConsumer(ctx, s, topic, opts.Defaults(), false)
	}
	if err != nil && ctx.Err() == nil && t.isClosed() {
		return transport.ErrClosed // closed while declaring
	}
	return err
}

func (t *Transport) durableName(topic, group string) string {
	if t.o.Stream != "" {
		return natsName(group + "-" + topic)
	}
	return natsName(group)
}

// ensureConsumer creates (or finds) the durable consumer of opts.Group.
// With update, an existing consumer's ack wait and max ack pending are set
// to opts' (the last subscriber's settings win).
func (t *Transport) ensureConsumer(ctx context.Context, s jetstream.Stream, topic string, opts transport.SubscribeOptions, update bool) (jetstream.Consumer, error) {
	name := t.durableName(topic, opts.Group)
	cfg := jetstream.ConsumerConfig{
		Durable:       name,
		Description:   "courier group " + opts.Group + " of topic " + topic,
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       opts.AckWait,
		MaxAckPending: opts.MaxInFlight,
		MaxDeliver:    -1,
		FilterSubject: t.subject(topic),
		DeliverPolicy: jetstream.DeliverNewPolicy,
		Metadata:      map[string]string{metaTopic: topic, metaGroup: opts.Group},
	}
	if opts.Start == transport.StartOldest {
		cfg.DeliverPolicy = jetstream.DeliverAllPolicy
	}
	c, err := s.CreateConsumer(ctx, cfg)
	if errors.Is(err, jetstream.ErrConsumerExists) {
		c, err = s.Consumer(ctx, name)
		if err == nil {
			info := c.CachedInfo()
			md := info.Config.Metadata
			if g, ok := md[metaGroup]; ok && (g != opts.Group || md[metaTopic] != topic) {
				return nil, fmt.Errorf("%w: group %q of topic %q and group %q of topic %q both map to consumer %q; rename one", ErrNameConflict, opts.Group, topic, g, md[metaTopic], name)
			}
			if info.Config.FilterSubject != cfg.FilterSubject || info.Config.AckPolicy != jetstream.AckExplicitPolicy {
				return nil, fmt.Errorf("%w: consumer %q exists with filter subject %q and ack policy %s; group %q needs %q with explicit acks", ErrNameConflict, name, info.Config.FilterSubject, info.Config.AckPolicy, opts.Group, cfg.FilterSubject)
			}
			if update && (info.Config.AckWait != cfg.AckWait || info.Config.MaxAckPending != cfg.MaxAckPending) {
				uc := info.Config
				uc.AckWait, uc.MaxAckPending = cfg.AckWait, cfg.MaxAckPending
				c, err = s.UpdateConsumer(ctx, uc)
			}
		}
	}
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return nil, cerr
		}
		return nil, t.wrap(fmt.Sprintf("natstransport: consumer %q for group %q of topic %q", name, opts.Group, topic), err)
	}
	return c, nil
}

// Shutdown stops every subscription from fetching, lets in-flight
// handlers finish and lands their acks, then closes the connection
// (draining buffered publishes). When ctx ends first, handlers are
// cancelled, their messages are left for redelivery, and Shutdown returns
// ctx.Err() after closing.
func (t *Transport) Shutdown(ctx context.Context) error {
	t.stateMu.Lock()
	if !t.closed {
		t.closed = true
		close(t.closing)
	}
	t.stateMu.Unlock()
	done := make(chan struct{})
	go func() { t.subs.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
		t.hardStop()
		<-done
	}
	t.closeConn(ctx)
	return err
}

// Close stops at once: subscriptions stop fetching, handlers' contexts are
// cancelled, and the connection closes; unacked messages are redelivered
// after their ack wait. It is idempotent and safe to call concurrently.
func (t *Transport) Close() error {
	t.stateMu.Lock()
	if !t.closed {
		t.closed = true
		close(t.closing)
	}
	t.stateMu.Unlock()
	t.hardStop()
	t.closeConn(nil)
	return nil
}

func (t *Transport) hardStop() {
	t.stateMu.Lock()
	if !t.hardDone {
		t.hardDone = true
		close(t.hard)
	}
	t.stateMu.Unlock()
}

// closeConn flushes what is buffered (when ctx allows) and closes the
// connection once.
func (t *Transport) closeConn(ctx context.Context) {
	t.ncClosed.Do(func() {
		if ctx != nil && ctx.Err() == nil && t.nc.IsConnected() {
			fctx, cancel := context.WithTimeout(ctx, t.o.APITimeout)
			_ = t.nc.FlushWithContext(fctx)
			cancel()
		}
		t.nc.Close()
	})
}
