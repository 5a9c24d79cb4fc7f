package transport

import (
	"context"

	"github.com/courierkit/courier/message"
)

// DeliverBatch hands n messages to handlers in order, as n calls of
// Deliver would: at(i) returns the i-th message and its Acker, and is
// called once per message taken, in order. It returns how many were
// taken; when that is below n the error says why (ctx.Err() when ctx
// ended first, ErrClosed after Stop or once the handlers' context ended)
// and messages from that index on were
// not taken (their Ackers are untouched: the caller must leave them for
// redelivery).
//
// With Concurrency 1 the batch costs one lock and one in-flight
// (MaxInFlight) round per run of messages instead of one per message: the
// handlers run in the caller's goroutine one after another while the
// batch holds the inline turn, and their tokens return together at the
// end of the run; ctx is checked before each message, so when it ends
// mid-run (a revoked partition) no further handler starts and the rest
// are not taken. With more concurrency the tokens of a run are taken
// together and each message goes to a worker as with Deliver.
func (d *Dispatcher) DeliverBatch(ctx context.Context, n int, at func(i int) (*message.Message, Acker)) (int, error) {
	for i := 0; i < n; {
		if err := ctx.Err(); err != nil {
			return i, err
		}
		k, err := d.sem.acquire(ctx, d.ctx.Done(), n-i)
		if err != nil {
			return i, err
		}
		d.jobs.Add(int64(k))
		if d.stopped.Load() || d.ctx.Err() != nil {
			d.sem.release(k)
			d.jobsDone(k)
			return i, ErrClosed
		}
		if d.work == nil {
			if r := d.runInline(ctx, i, k, at); r < k {
				return i + r, ctx.Err()
			}
		} else {
			for j := i; j < i+k; j++ {
				m, a := at(j)
				d.take(job{m: m, a: a})
			}
		}
		i += k
	}
	return n, nil
}

// runInline runs messages from..from+k of at under the inline turn,
// holding their k tokens until the run ends (or a settle panics), and
// returns how many it took: all k, unless ctx ended first.
func (d *Dispatcher) runInline(ctx context.Context, from, k int, at func(int) (*message.Message, Acker)) int {
	d.inline.Lock()
	defer func() {
		d.inline.Unlock()
		d.sem.release(k)
		d.jobsDone(k)
	}()
	for i := from; i < from+k; i++ {
		if ctx.Err() != nil {
			return i - from // the caller gave up: the rest are not taken
		}
		m, a := at(i)
		j := job{m: m, a: a}
		var err error
		if d.ctx.Err() != nil {
			err = d.ctx.Err() // stopping hard: do not start new work
		} else {
			err = d.call(m)
		}
		d.settleOnly(j, err)
	}
	return k
}
