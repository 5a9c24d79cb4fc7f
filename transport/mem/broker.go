package memtransport

import (
	"container/heap"
	"sync"
	"time"

	"github.com/courierkit/courier/message"
)

// Broker is the in-process broker state: topics, their durable groups and
// the messages retained for them. Transports that share a Broker (through
// Options.Broker, or a named mem://NAME URL) see the same topics, as
// services connected to one server would. A Broker lives as long as it is
// referenced; it has no goroutines of its own.
type Broker struct {
	mu     sync.RWMutex
	topics map[string]*topic
}

// NewBroker returns an empty broker.
func NewBroker() *Broker { return &Broker{topics: make(map[string]*topic)} }

func (b *Broker) topic(name string) *topic {
	b.mu.RLock()
	t := b.topics[name]
	b.mu.RUnlock()
	if t != nil {
		return t
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if t = b.topics[name]; t == nil {
		t = &topic{name: name, groups: make(map[string]*group), space: make(chan struct{})}
		b.topics[name] = t
	}
	return t
}

// record is one published message, immutable once stored and shared by
// every group's entry.
type record struct {
	id      string
	key     string
	headers message.Header
	payload []byte
	time    time.Time
}

// entry is a record's place in one group.
type entry struct {
	rec     *record
	attempt int   // deliveries so far
	due     int64 // unix nanos; for delayed entries
	held    bool  // its key stays busy while it waits (ordered nack)
}

// topic holds its groups; one mutex guards the topic and all its groups so
// that a publish lands in every group at once.
type topic struct {
	name   string
	mu     sync.Mutex
	groups map[string]*group // durable groups by name
	subs   []*group          // private groups of subscriptions without a group
	all    []*group          // groups then subs, rebuilt when either changes

	waiters int           // publishers blocked on a full backlog
	space   chan struct{} // closed and replaced when room frees up
}

// group is one consumer group's queue.
type group struct {
	name    string
	private bool
	ready   queue
	delayed delayHeap
	backlog int            // ready + delayed + in flight
	busy    map[string]int // keys with a message out (OrderedByKey)
	ordered bool
	// parked holds, per busy key, its messages taken off the ready queue
	// while the key is busy, in order (OrderedByKey): so a key with many
	// waiting messages never stands between the fetch loop and other
	// keys' messages. nparked counts them.
	parked  map[string][]entry
	nparked int
	wake    chan struct{} // cap 1: something became deliverable
}

func newGroup(name string, private bool) *group {
	return &group{name: name, private: private, wake: make(chan struct{}, 1), busy: make(map[string]int), parked: make(map[string][]entry)}
}

// park sets aside e, whose key is busy, until the key frees. Called with
// the topic's mu held.
func (g *group) park(e entry) {
	k := e.rec.key
	g.parked[k] = append(g.parked[k], e)
	g.nparked++
}

// release marks one of k's messages settled or returned. When k frees, its
// first parked message goes to the front of the ready queue (ahead of k's
// messages still in it, which came after); the rest stay parked until
// k frees again, so each is moved only once. Called with the topic's mu
// held.
func (g *group) release(k string) {
	if g.busy[k]--; g.busy[k] > 0 {
		return
	}
	delete(g.busy, k)
	p := g.parked[k]
	if len(p) == 0 {
		return
	}
	e := p[0]
	p[0] = entry{}
	if p = p[1:]; len(p) == 0 {
		delete(g.parked, k)
	} else {
		g.parked[k] = p
	}
	g.nparked--
	g.ready.pushFront(e)
}

func (g *group) signal() {
	select {
	case g.wake <- struct{}{}:
	default:
	}
}

// rebuild refreshes t.all; called with t.mu held.
func (t *topic) rebuild() {
	t.all = t.all[:0]
	for _, g := range t.groups {
		t.all = append(t.all, g)
	}
	t.all = append(t.all, t.subs...)
}

// freed is called with t.mu held when g's backlog went down. Blocked
// publishers are woken only once the group has drained to three quarters
// of the limit, so a full topic does not wake them for every single ack.
func (t *topic) freed(g *group, limit int) {
	if t.waiters > 0 && (g == nil || g.backlog <= limit-limit/4) {
		close(t.space)
		t.space = make(chan struct{})
	}
}

// queue is a FIFO of entries with cheap push-front (for redelivery).
type queue struct {
	buf  []entry
	head int
}

func (q *queue) len() int { return len(q.buf) - q.head }

func (q *queue) push(e entry) { q.buf = append(q.buf, e) }

func (q *queue) pushFront(e entry) {
	if q.head > 0 {
		q.head--
		q.buf[q.head] = e
		return
	}
	q.buf = append(q.buf, entry{})
	copy(q.buf[1:], q.buf)
	q.buf[0] = e
}

// remove takes out the i-th entry from the front, keeping order.
func (q *queue) remove(i int) entry {
	idx := q.head + i
	e := q.buf[idx]
	if i == 0 {
		q.buf[idx] = entry{}
		q.head++
	} else {
		copy(q.buf[idx:], q.buf[idx+1:])
		q.buf[len(q.buf)-1] = entry{}
		q.buf = q.buf[:len(q.buf)-1]
	}
	if q.head == len(q.buf) {
		q.buf, q.head = q.buf[:0], 0
	} else if q.head > 1024 && q.head > len(q.buf)/2 {
		n := copy(q.buf, q.buf[q.head:])
		clear(q.buf[n:])
		q.buf, q.head = q.buf[:n], 0
	}
	return e
}

type delayHeap []entry

func (h delayHeap) Len() int           { return len(h) }
func (h delayHeap) Less(i, j int) bool { return h[i].due < h[j].due }
func (h delayHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *delayHeap) Push(x any)        { *h = append(*h, x.(entry)) }
func (h *delayHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = entry{}
	*h = old[:len(old)-1]
	return e
}

// promote moves due delayed entries to the ready queue, in due order, and
// returns the next due time (0 when none is waiting).
func (g *group) promote(now int64) int64 {
	for len(g.delayed) > 0 {
		if g.delayed[0].due > now {
			return g.delayed[0].due
		}
		e := heap.Pop(&g.delayed).(entry)
		if e.held {
			// An ordered key's redelivery goes before the key's later
			// messages, which are behind it in the ready queue.
			g.ready.pushFront(e)
		} else {
			g.ready.push(e)
		}
	}
	return 0
}
