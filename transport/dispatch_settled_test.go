package transport_test

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// hookAcker records the broker calls for one message and can fail them.
type hookAcker struct {
	ackErr, nackErr error
	calls           atomic.Int32 // broker calls made
}

func (a *hookAcker) Ack(context.Context) error { a.calls.Add(1); return a.ackErr }
func (a *hookAcker) Nack(context.Context, time.Duration) error {
	a.calls.Add(1)
	return a.nackErr
}

type hookTermAcker struct {
	*hookAcker
	termErr error
}

func (a hookTermAcker) Term(context.Context, string) error { a.calls.Add(1); return a.termErr }

type ctxKey struct{}

// settledRec collects Settled calls by message ID.
type settledRec struct {
	t     *testing.T
	mu    sync.Mutex
	got   map[string][]transport.Settlement
	calls map[string]int32 // broker calls seen when the hook ran
	ack   map[string]*hookAcker
}

func (r *settledRec) hook(ctx context.Context, m *message.Message, s transport.Settlement) {
	if ctx.Err() != nil {
		r.t.Errorf("%s: hook ctx cancelled: %v", m.ID, ctx.Err())
	}
	if ctx.Value(ctxKey{}) != "parent" {
		r.t.Errorf("%s: hook ctx lost the handler context's values", m.ID)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.got[m.ID] = append(r.got[m.ID], s)
	r.calls[m.ID] = r.ack[m.ID].calls.Load()
}

// TestDispatcherSettledHook: the Settled hook runs exactly once per taken
// message, after the broker call, with what was done, for every outcome
// and in every delivery mode.
func TestDispatcherSettledHook(t *testing.T) {
	errH := errors.New("handler failed")
	errBroker := errors.New("broker said no")
	errDLQ := errors.New("dlq down")
	type tc struct {
		name    string
		handler func() error
		attempt int
		so      transport.SubscribeOptions
		dlqErr  error
		acker   func() transport.Acker // nil: plain hookAcker
		ackErr  error
		nackErr error
		want    transport.Settlement // errors compared with errors.Is
	}
	dlt := "orders-dlq"
	cases := []tc{
		{name: "ack", handler: func() error { return nil }, want: transport.Settlement{Outcome: transport.Acked}},
		{name: "ack fails", handler: func() error { return nil }, ackErr: errBroker, want: transport.Settlement{Outcome: transport.Acked, SettleErr: errBroker}},
		{name: "nack NackDelay", handler: func() error { return errH }, so: transport.SubscribeOptions{NackDelay: time.Second}, want: transport.Settlement{Outcome: transport.Nacked, Delay: time.Second, HandlerErr: errH}},
		{name: "nack RetryAfter", handler: func() error { return message.RetryAfter(errH, 3*time.Second) }, want: transport.Settlement{Outcome: transport.Nacked, Delay: 3 * time.Second, HandlerErr: errH}},
		{name: "nack fails", handler: func() error { return errH }, nackErr: errBroker, want: transport.Settlement{Outcome: transport.Nacked, HandlerErr: errH, SettleErr: errBroker}},
		{name: "panic nacks", handler: func() error { panic("bug") }, want: transport.Settlement{Outcome: transport.Nacked, HandlerErr: errAny}},
		{name: "permanent to DLT", handler: func() error { return message.Permanent(errH) }, so: transport.SubscribeOptions{DeadLetterTopic: dlt}, want: transport.Settlement{Outcome: transport.DeadLettered, DeadLetterTopic: dlt, HandlerErr: errH}},
		{name: "max attempts to DLT", handler: func() error { return errH }, attempt: 3, so: transport.SubscribeOptions{DeadLetterTopic: dlt, MaxAttempts: 3}, want: transport.Settlement{Outcome: transport.DeadLettered, DeadLetterTopic: dlt, HandlerErr: errH}},
		{name: "DLT ack fails", handler: func() error { return message.Permanent(errH) }, so: transport.SubscribeOptions{DeadLetterTopic: dlt}, ackErr: errBroker, want: transport.Settlement{Outcome: transport.DeadLettered, DeadLetterTopic: dlt, HandlerErr: errH, SettleErr: errBroker}},
		{name: "DLT publish fails nacks", handler: func() error { return message.Permanent(errH) }, so: transport.SubscribeOptions{DeadLetterTopic: dlt, NackDelay: time.Second}, dlqErr: errDLQ, want: transport.Settlement{Outcome: transport.Nacked, Delay: time.Second, DeadLetterTopic: dlt, HandlerErr: errH, SettleErr: errDLQ}},
		{name: "DLT publish and nack fail", handler: func() error { return message.Permanent(errH) }, so: transport.SubscribeOptions{DeadLetterTopic: dlt}, dlqErr: errDLQ, nackErr: errBroker, want: transport.Settlement{Outcome: transport.Nacked, DeadLetterTopic: dlt, HandlerErr: errH, SettleErr: errBroker}},
		{name: "term", handler: func() error { return message.Permanent(errH) }, acker: func() transport.Acker { return hookTermAcker{hookAcker: &hookAcker{}} }, want: transport.Settlement{Outcome: transport.Terminated, HandlerErr: errH}},
		{name: "term fails", handler: func() error { return message.Permanent(errH) }, acker: func() transport.Acker { return hookTermAcker{hookAcker: &hookAcker{}, termErr: errBroker} }, want: transport.Settlement{Outcome: transport.Terminated, HandlerErr: errH, SettleErr: errBroker}},
		{name: "drop", handler: func() error { return message.Permanent(errH) }, want: transport.Settlement{Outcome: transport.Dropped, HandlerErr: errH}},
		{name: "drop ack fails", handler: func() error { return message.Permanent(errH) }, ackErr: errBroker, want: transport.Settlement{Outcome: transport.Dropped, HandlerErr: errH, SettleErr: errBroker}},
	}
	modes := []struct {
		name  string
		conc  int
		batch bool
	}{{"Deliver/inline", 1, false}, {"Deliver/workers", 4, false}, {"DeliverBatch/inline", 1, true}, {"DeliverBatch/workers", 4, true}}
	const n = 5 // messages per case and mode
	for _, mode := range modes {
		for _, c := range cases {
			t.Run(mode.name+"/"+c.name, func(t *testing.T) {
				rec := &settledRec{t: t, got: map[string][]transport.Settlement{}, calls: map[string]int32{}, ack: map[string]*hookAcker{}}
				so := c.so
				so.Concurrency = mode.conc
				so.Settled = rec.hook
				parent := context.WithValue(context.Background(), ctxKey{}, "parent")
				d := transport.NewDispatcher(parent, message.HandlerFunc(func(context.Context, *message.Message) error { return c.handler() }), transport.DispatchOptions{
					Topic: "orders", Group: "g", Subscribe: so,
					DeadLetter: func(context.Context, string, *message.Message) error { return c.dlqErr },
				})
				msgs := make([]*message.Message, n)
				ackers := make([]transport.Acker, n)
				for i := range n {
					id := "m" + strconv.Itoa(i)
					msgs[i] = &message.Message{ID: id, Attempt: max(c.attempt, 1)}
					var ha *hookAcker
					if c.acker != nil {
						ta := c.acker().(hookTermAcker)
						ha, ackers[i] = ta.hookAcker, ta
					} else {
						ha = &hookAcker{}
						ackers[i] = ha
					}
					ha.ackErr, ha.nackErr = c.ackErr, c.nackErr
					rec.ack[id] = ha
				}
				ctx := context.Background()
				if mode.batch {
					if k, err := d.DeliverBatch(ctx, n, func(i int) (*message.Message, transport.Acker) { return msgs[i], ackers[i] }); k != n || err != nil {
						t.Fatalf("DeliverBatch: %d, %v", k, err)
					}
				} else {
					for i := range n {
						if err := d.Deliver(ctx, msgs[i], ackers[i]); err != nil {
							t.Fatal(err)
						}
					}
				}
				if err := d.Stop(ctx); err != nil {
					t.Fatal(err)
				}
				rec.mu.Lock()
				defer rec.mu.Unlock()
				for _, m := range msgs {
					got := rec.got[m.ID]
					if len(got) != 1 {
						t.Fatalf("%s: hook called %d times, want 1", m.ID, len(got))
					}
					if rec.calls[m.ID] == 0 {
						t.Errorf("%s: hook ran before the broker call", m.ID)
					}
					if msg := sameSettlement(got[0], c.want); msg != "" {
						t.Errorf("%s: %s\ngot  %+v\nwant %+v", m.ID, msg, got[0], c.want)
					}
				}
			})
		}
	}
}

var errAny = errors.New("any error")

func sameSettlement(got, want transport.Settlement) string {
	switch {
	case got.Outcome != want.Outcome:
		return "outcome " + got.Outcome.String() + ", want " + want.Outcome.String()
	case got.Delay != want.Delay:
		return "delay"
	case got.DeadLetterTopic != want.DeadLetterTopic:
		return "dead-letter topic"
	case !sameErr(got.HandlerErr, want.HandlerErr):
		return "handler error"
	case !sameErr(got.SettleErr, want.SettleErr):
		return "settle error"
	}
	return ""
}

func sameErr(got, want error) bool {
	switch want {
	case nil:
		return got == nil
	case errAny:
		return got != nil
	}
	return errors.Is(got, want)
}

// TestDispatcherSettledHardStop: messages nacked unrun by a hard stop
// (Cancel) are reported as Nacked with context.Canceled, once each; a
// Deliver that comes after the Cancel is refused (ErrClosed, the message
// not taken) and not reported.
func TestDispatcherSettledHardStop(t *testing.T) {
	for _, conc := range []int{1, 2} {
		t.Run("concurrency"+strconv.Itoa(conc), func(t *testing.T) {
			var mu sync.Mutex
			got := map[string][]transport.Settlement{}
			started := make(chan struct{}, 8)
			d := transport.NewDispatcher(context.Background(), message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
				started <- struct{}{}
				<-ctx.Done()
				return ctx.Err()
			}), transport.DispatchOptions{Subscribe: transport.SubscribeOptions{
				Concurrency: conc,
				Settled: func(_ context.Context, m *message.Message, s transport.Settlement) {
					mu.Lock()
					got[m.ID] = append(got[m.ID], s)
					mu.Unlock()
				},
			}})
			ctx := context.Background()
			var wg sync.WaitGroup
			const n = 4
			var taken sync.Map
			for i := range n {
				wg.Go(func() {
					id := "m" + strconv.Itoa(i)
					switch err := d.Deliver(ctx, &message.Message{ID: id}, &hookAcker{}); {
					case err == nil:
						taken.Store(id, true)
					case !errors.Is(err, transport.ErrClosed):
						t.Errorf("Deliver: %v", err)
					}
				})
			}
			<-started
			d.Cancel()
			wg.Wait()
			if err := d.Stop(ctx); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			defer mu.Unlock()
			nTaken := 0
			taken.Range(func(k, _ any) bool {
				nTaken++
				if len(got[k.(string)]) != 1 {
					t.Errorf("taken message %s reported %d times", k, len(got[k.(string)]))
				}
				return true
			})
			if len(got) != nTaken || nTaken == 0 {
				t.Fatalf("hook saw %d messages, %d were taken", len(got), nTaken)
			}
			for id, ss := range got {
				if len(ss) != 1 || ss[0].Outcome != transport.Nacked || !errors.Is(ss[0].HandlerErr, context.Canceled) {
					t.Errorf("%s: %+v", id, ss)
				}
			}
		})
	}
}

// TestDispatcherSettledHookPanics: a panicking hook is recovered; the
// message stays settled once and the Dispatcher keeps going.
func TestDispatcherSettledHookPanics(t *testing.T) {
	var calls atomic.Int32
	d := transport.NewDispatcher(context.Background(), message.HandlerFunc(func(context.Context, *message.Message) error { return nil }), transport.DispatchOptions{
		Subscribe: transport.SubscribeOptions{Settled: func(context.Context, *message.Message, transport.Settlement) {
			calls.Add(1)
			panic("hook bug")
		}},
	})
	ctx := context.Background()
	acks := make([]*hookAcker, 3)
	for i := range acks {
		acks[i] = &hookAcker{}
		if err := d.Deliver(ctx, &message.Message{ID: "m"}, acks[i]); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	for i, a := range acks {
		if a.calls.Load() != 1 {
			t.Errorf("message %d: %d broker calls", i, a.calls.Load())
		}
	}
	if calls.Load() != 3 {
		t.Errorf("hook called %d times, want 3", calls.Load())
	}
}

func TestOutcomeString(t *testing.T) {
	for o, want := range map[transport.Outcome]string{
		transport.Acked: "ack", transport.Nacked: "nack", transport.DeadLettered: "dead_letter",
		transport.Terminated: "terminate", transport.Dropped: "drop", 0: "Outcome(0)",
	} {
		if o.String() != want {
			t.Errorf("%d: %q, want %q", int(o), o.String(), want)
		}
	}
}
