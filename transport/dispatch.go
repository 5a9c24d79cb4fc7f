package transport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/courierkit/courier/message"
)

// Acker settles one received message with its broker. The Dispatcher calls
// exactly one of its methods once per message, with a context that is not
// cancelled by the subscription stopping (context.WithoutCancel), so settling
// lands during shutdown.
type Acker interface {
	// Ack removes the message: it will not be delivered again.
	Ack(ctx context.Context) error
	// Nack returns the message for redelivery no sooner than delay from
	// now (where the broker can delay; 0 means at once).
	Nack(ctx context.Context, delay time.Duration) error
}

// Terminator is an optional Acker method for brokers with a native
// "never redeliver" (JetStream Term, a RabbitMQ reject into a dead-letter
// exchange). The Dispatcher calls it for a permanently failed message when
// no DeadLetterTopic is configured; reason is the error text.
type Terminator interface {
	Term(ctx context.Context, reason string) error
}

// DispatchOptions configure a Dispatcher.
type DispatchOptions struct {
	// Topic and Group are the subscription's, used for dead-letter headers
	// and log attributes.
	Topic, Group string
	// Subscribe carries the subscription's options; Defaults() is applied.
	Subscribe SubscribeOptions
	// DeadLetter publishes a dead-letter copy (built by DeadLetterMessage)
	// to Subscribe.DeadLetterTopic. Adapters pass their own Publish; nil
	// means no dead-letter topic is available.
	DeadLetter func(ctx context.Context, topic string, m *message.Message) error
	// Logger receives settle failures and dropped messages; nil discards.
	Logger *slog.Logger
}

// Dispatcher is the delivery engine shared by the adapters: an adapter
// fetches messages from its broker and passes each to Deliver with an Acker;
// the Dispatcher runs the handler with the subscription's concurrency,
// per-key ordering and in-flight bound, recovers handler panics, and settles
// each message exactly once: nil → Ack; a Permanent error or MaxAttempts
// reached → dead-letter topic (then Ack), native Term, or drop; any other
// error → Nack with the delay from message.RetryAfter or NackDelay. After
// each settle it calls SubscribeOptions.Settled, when set, with what it
// did (Settlement).
//
// Handlers run with the Dispatcher's context, which ends when the parent
// context given to NewDispatcher (the Subscribe ctx) ends or Cancel is
// called, so a graceful stop (Stop without Cancel) lets them finish.
type Dispatcher struct {
	h      message.Handler
	o      SubscribeOptions
	topic  string
	group  string
	dlq    func(context.Context, string, *message.Message) error
	log    *slog.Logger
	ctx    context.Context // handler context
	cancel context.CancelFunc
	sctx   context.Context // settle context: never cancelled

	sem     *sema // MaxInFlight tokens
	work    chan job
	workers sync.WaitGroup
	jobs    atomic.Int64  // taken, not yet settled
	idle    chan struct{} // closed once stopped with no job left
	idled   sync.Once

	mu      sync.Mutex
	inline  sync.Mutex // Concurrency 1: one handler at a time, whoever calls Deliver
	keys    map[string]*keyQueue
	stopped atomic.Bool
	once    sync.Once
}

type job struct {
	m *message.Message
	a Acker
}

type keyQueue struct{ pending []job }

// NewDispatcher returns a Dispatcher for h. parent is the subscription's
// context: handlers run with a context derived from it, while acks and
// dead-letter publishes use context.WithoutCancel(parent) so they land even
// as the subscription stops.
func NewDispatcher(parent context.Context, h message.Handler, o DispatchOptions) *Dispatcher {
	so := o.Subscribe.Defaults()
	d := &Dispatcher{
		h: h, o: so, topic: o.Topic, group: o.Group, dlq: o.DeadLetter,
		log: o.Logger, sem: newSema(so.MaxInFlight), idle: make(chan struct{}),
		sctx: context.WithoutCancel(parent),
	}
	if d.group == "" {
		d.group = so.Group
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	d.ctx, d.cancel = context.WithCancel(parent)
	if so.Concurrency > 1 {
		d.work = make(chan job)
		if so.OrderedByKey {
			d.keys = make(map[string]*keyQueue)
		}
		d.workers.Add(so.Concurrency)
		for range so.Concurrency {
			go d.worker()
		}
	}
	return d
}

// Context is the context handlers run with.
func (d *Dispatcher) Context() context.Context { return d.ctx }

// Deliver hands m to a handler. It may be called from several goroutines.
// It blocks while MaxInFlight messages are unsettled (and, with
// Concurrency 1, while the handler runs: such a call runs the handler in
// the caller's goroutine, one call at a time), and returns
// ctx.Err() when ctx ends first, or ErrClosed after Stop or once the
// handlers' context ended (Cancel, or the Subscribe ctx); the message was
// then not taken and a is untouched: the caller must leave it for
// redelivery (it was not run, so it should not count as an attempt).
func (d *Dispatcher) Deliver(ctx context.Context, m *message.Message, a Acker) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if _, err := d.sem.acquire(ctx, d.ctx.Done(), 1); err != nil {
		return err
	}
	d.jobs.Add(1)
	if d.stopped.Load() || d.ctx.Err() != nil {
		d.sem.release(1)
		d.jobDone()
		return ErrClosed
	}
	d.take(job{m: m, a: a})
	return nil
}

// take runs j (Concurrency 1) or hands it to a worker, once its token is
// held and counted in jobs.
func (d *Dispatcher) take(j job) {
	m := j.m
	if d.work == nil {
		// Adapters may call Deliver from several goroutines (receivers,
		// client-library callbacks): the lock keeps Concurrency 1 true.
		d.inline.Lock()
		defer d.inline.Unlock() // a panicking Acker must not leave it held
		d.run(j)
		return
	}
	d.mu.Lock()
	if d.keys != nil && m.Key != "" {
		if q, busy := d.keys[m.Key]; busy {
			q.pending = append(q.pending, j)
			d.mu.Unlock()
			return
		}
		d.keys[m.Key] = &keyQueue{}
	}
	d.mu.Unlock()
	select {
	case d.work <- j:
		return
	case <-d.ctx.Done():
		// Cancelled while every worker is busy: settle as a nack so the
		// message is redelivered, keeping the one-settle-per-message rule,
		// and so are the messages of its key that queued behind it
		// meanwhile (nobody else will take them).
		for {
			d.settle(j, context.Canceled)
			var ok bool
			if j, ok = d.next(j); !ok {
				return
			}
		}
	}
}

func (d *Dispatcher) worker() {
	defer d.workers.Done()
	for j := range d.work {
		for {
			d.run(j)
			var ok bool
			if j, ok = d.next(j); !ok {
				break
			}
		}
	}
}

// next returns the message of the same key waiting behind j, if any, and
// releases the key otherwise.
func (d *Dispatcher) next(j job) (job, bool) {
	if d.keys == nil || j.m.Key == "" {
		return job{}, false
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	q := d.keys[j.m.Key]
	if q == nil {
		return job{}, false
	}
	if len(q.pending) == 0 {
		delete(d.keys, j.m.Key)
		return job{}, false
	}
	n := q.pending[0]
	q.pending[0] = job{}
	q.pending = q.pending[1:]
	return n, true
}

func (d *Dispatcher) run(j job) {
	var err error
	if d.ctx.Err() != nil {
		err = d.ctx.Err() // stopping hard: do not start new work
	} else {
		err = d.call(j.m)
	}
	d.settle(j, err)
}

func (d *Dispatcher) call(m *message.Message) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("transport: handler panicked: %v", r)
			d.log.Error("courier: handler panicked", "topic", d.topic, "group", d.group, "message_id", m.ID, "panic", r)
		}
	}()
	return d.h.Handle(d.ctx, m)
}

func (d *Dispatcher) settle(j job, err error) {
	defer d.settled()
	d.settleOnly(j, err)
}

// settled returns the token of one settled message.
func (d *Dispatcher) settled() {
	d.sem.release(1)
	d.jobDone()
}

// settleOnly acks, nacks or dead-letters j and reports it to the
// Settled hook; the caller returns its token. (The hook is checked on each
// path, after the broker call, so that without one no Settlement is built.)
func (d *Dispatcher) settleOnly(j job, err error) {
	m, a := j.m, j.a
	switch {
	case err == nil:
		aerr := a.Ack(d.sctx)
		if aerr != nil {
			d.log.Warn("courier: ack failed; the broker will redeliver", "topic", d.topic, "group", d.group, "message_id", m.ID, "error", aerr)
		}
		if d.o.Settled != nil {
			d.report(m, Settlement{Outcome: Acked, SettleErr: aerr})
		}
	case message.IsPermanent(err) || (d.o.MaxAttempts > 0 && m.Attempt >= d.o.MaxAttempts && !d.stoppedHard(err)):
		d.deadLetter(m, a, err)
	default:
		delay := d.o.NackDelay
		if rd, ok := message.RetryDelay(err); ok {
			delay = rd
		}
		nerr := a.Nack(d.sctx, delay)
		if nerr != nil {
			d.log.Warn("courier: nack failed; the broker will redeliver after its ack wait", "topic", d.topic, "group", d.group, "message_id", m.ID, "error", nerr)
		}
		if d.o.Settled != nil {
			d.report(m, Settlement{Outcome: Nacked, Delay: delay, HandlerErr: err, SettleErr: nerr})
		}
	}
}

// stoppedHard reports a handler error that is the hard stop itself (the
// handlers' context ended: Cancel, or the subscription's ctx), including a
// message that was never started: it goes back to the broker by a nack,
// never down the dead-letter path because its attempts ran out. (A
// Permanent error still is dead-lettered.)
func (d *Dispatcher) stoppedHard(err error) bool {
	return d.ctx.Err() != nil && (errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded))
}

// report calls the Settled hook, keeping a panic in it from taking the
// Dispatcher down.
func (d *Dispatcher) report(m *message.Message, s Settlement) {
	defer func() {
		if r := recover(); r != nil {
			d.log.Error("courier: Settled hook panicked", "topic", d.topic, "group", d.group, "message_id", m.ID, "panic", r)
		}
	}()
	d.o.Settled(d.sctx, m, s)
}

func (d *Dispatcher) deadLetter(m *message.Message, a Acker, cause error) {
	if d.o.DeadLetterTopic != "" && d.dlq != nil {
		dm := DeadLetterMessage(m, d.topic, d.group, cause)
		if err := d.dlq(d.sctx, d.o.DeadLetterTopic, dm); err != nil {
			// Keep the message rather than lose it.
			d.log.Error("courier: dead-letter publish failed; message nacked for redelivery", "topic", d.topic, "group", d.group, "message_id", m.ID, "dead_letter_topic", d.o.DeadLetterTopic, "error", err)
			if nerr := a.Nack(d.sctx, d.o.NackDelay); nerr != nil {
				err = errors.Join(err, nerr)
			}
			if d.o.Settled != nil {
				d.report(m, Settlement{Outcome: Nacked, Delay: d.o.NackDelay, DeadLetterTopic: d.o.DeadLetterTopic, HandlerErr: cause, SettleErr: err})
			}
			return
		}
		err := a.Ack(d.sctx)
		if err != nil {
			d.log.Warn("courier: ack after dead-letter failed; the message may be dead-lettered twice", "topic", d.topic, "message_id", m.ID, "error", err)
		}
		if d.o.Settled != nil {
			d.report(m, Settlement{Outcome: DeadLettered, DeadLetterTopic: d.o.DeadLetterTopic, HandlerErr: cause, SettleErr: err})
		}
		return
	}
	if t, ok := a.(Terminator); ok {
		err := t.Term(d.sctx, cause.Error())
		if err != nil {
			d.log.Warn("courier: term failed", "topic", d.topic, "message_id", m.ID, "error", err)
		}
		if d.o.Settled != nil {
			d.report(m, Settlement{Outcome: Terminated, HandlerErr: cause, SettleErr: err})
		}
		return
	}
	d.log.Error("courier: message failed permanently and no dead-letter topic is configured; dropped", "topic", d.topic, "group", d.group, "message_id", m.ID, "attempt", m.Attempt, "error", cause)
	err := a.Ack(d.sctx)
	if err != nil {
		d.log.Warn("courier: ack failed", "topic", d.topic, "message_id", m.ID, "error", err)
	}
	if d.o.Settled != nil {
		d.report(m, Settlement{Outcome: Dropped, HandlerErr: cause, SettleErr: err})
	}
}

// jobDone counts a settled (or refused) message and signals Stop when it
// was the last one after stopping.
func (d *Dispatcher) jobDone() { d.jobsDone(1) }

func (d *Dispatcher) jobsDone(n int) {
	if d.jobs.Add(-int64(n)) == 0 && d.stopped.Load() {
		d.idled.Do(func() { close(d.idle) })
	}
}

// Cancel ends the handlers' context: running handlers should return, and
// messages not yet started are nacked for redelivery without running
// (whatever their attempt count: a hard stop never dead-letters a message
// for running out of attempts, nor does a handler's ctx.Err() after it).
func (d *Dispatcher) Cancel() { d.cancel() }

// Stop makes further Deliver calls return ErrClosed and waits until every
// taken message is settled. Without Cancel first, running handlers finish
// normally (graceful); when ctx ends first, Stop cancels them, still waits
// for their settlement, and returns ctx.Err(). Stop may be called more than
// once; call it only after the adapter's fetch loop stopped calling Deliver.
func (d *Dispatcher) Stop(ctx context.Context) error {
	d.stopped.Store(true)
	if d.jobs.Load() == 0 {
		d.idled.Do(func() { close(d.idle) })
	}
	var err error
	select {
	case <-d.idle:
	case <-ctx.Done():
		err = ctx.Err()
		d.cancel()
		<-d.idle
	}
	d.once.Do(func() {
		if d.work != nil {
			close(d.work)
		}
	})
	d.workers.Wait()
	d.cancel()
	return err
}

// maxReason bounds the courier-dlq-reason header, in bytes.
const maxReason = 1024

// DeadLetterMessage returns the copy of m that goes to a dead-letter topic:
// same ID, Key, Payload and headers, plus the courier-dlq-* headers
// (reason, source topic and group, attempt, time).
func DeadLetterMessage(m *message.Message, topic, group string, cause error) *message.Message {
	h := make(message.Header, len(m.Headers)+5)
	for k, v := range m.Headers {
		h[k] = v
	}
	reason := "unknown"
	if cause != nil {
		reason = cause.Error()
	}
	// Header values must be valid UTF-8 on some brokers (Pub/Sub refuses
	// the publish otherwise, and the message would loop): replace invalid
	// bytes, and cut long reasons on a character boundary.
	reason = strings.ToValidUTF8(reason, "\uFFFD")
	if len(reason) > maxReason {
		cut := maxReason
		for cut > 0 && !utf8.RuneStart(reason[cut]) {
			cut--
		}
		reason = reason[:cut]
	}
	h[message.HeaderDeadLetterReason] = reason
	h[message.HeaderDeadLetterTopic] = topic
	if group != "" {
		h[message.HeaderDeadLetterGroup] = group
	}
	if m.Attempt > 0 {
		h[message.HeaderDeadLetterAttempts] = strconv.Itoa(m.Attempt)
	}
	h[message.HeaderDeadLetterTime] = time.Now().UTC().Format(time.RFC3339Nano)
	return &message.Message{ID: m.ID, Key: m.Key, Headers: h, Payload: m.Payload}
}

// Reject settles a message the adapter received but cannot hand to the
// handler (it is not in courier's format: malformed encoding, a header it
// cannot read) down the dead-letter path, with cause as the reason and
// without running the handler: a copy with the courier-dlq-* headers to
// DeadLetterTopic and then Ack (Nack when that publish fails, so nothing
// is lost), else the broker's native terminate, else a logged drop. m is
// whatever the adapter could recover of the message (its raw payload and
// headers). The Settled hook sees it like any dead-lettered message, with
// cause (marked permanent) as HandlerErr. Reject takes no in-flight slot
// and may be called from the adapter's receive loop.
func (d *Dispatcher) Reject(m *message.Message, a Acker, cause error) {
	if !message.IsPermanent(cause) {
		cause = message.Permanent(cause)
	}
	d.deadLetter(m, a, cause)
}
