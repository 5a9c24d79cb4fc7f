package kafkatransport_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/IBM/sarama"

	"github.com/courierkit/courier/internal/testenv"
	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	kafkatransport "github.com/courierkit/courier/transport/kafka"
)

func committed(t testing.TB, tr *kafkatransport.Transport, topic, group string) []int64 {
	t.Helper()
	lag, err := tr.Lag(context.Background(), topic, group)
	if err != nil {
		t.Fatalf("Lag: %v", err)
	}
	out := make([]int64, len(lag.Partitions))
	for i, l := range lag.Partitions {
		out[i] = l.Committed
	}
	return out
}

// A crash with a gap: message 5 is still being handled (unacked) while 6
// to 10 are acked. The committed offset must stop at 5 (offset 4), before
// and after the crash, and the group must resume at message 5.
func TestCrashWithGapResumesAtGap(t *testing.T) {
	o := testOptions(t)
	o.Partitions = 1
	tr := newTransport(t, o)
	ctx := context.Background()
	topic, group := name(t, "t"), name(t, "g")
	if err := tr.Declare(ctx, topic, transport.SubscribeOptions{Group: group}); err != nil {
		t.Fatal(err)
	}
	var msgs []*message.Message
	for i := 1; i <= 10; i++ {
		msgs = append(msgs, &message.Message{ID: "m" + strconv.Itoa(i), Payload: []byte(strconv.Itoa(i))})
	}
	if err := tr.Publish(ctx, topic, msgs...); err != nil {
		t.Fatal(err)
	}

	var mu sync.Mutex
	acked := map[string]bool{}
	stuck := make(chan struct{})
	var once sync.Once
	subscribe(t, tr, topic, message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		if m.ID == "m5" {
			once.Do(func() { close(stuck) })
			<-ctx.Done() // never acked before the crash
			return ctx.Err()
		}
		mu.Lock()
		acked[m.ID] = true
		mu.Unlock()
		return nil
	}), transport.SubscribeOptions{Group: group, Concurrency: 4, MaxInFlight: 16})

	waitFor(t, 20*time.Second, "messages 1-4 and 6-10 acked", func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acked) == 9
	})
	<-stuck
	// The commit interval is 200ms: give it several rounds, and check the
	// committed offset reaches the gap and never passes it.
	waitFor(t, 10*time.Second, "offset 4 committed", func() bool { return committed(t, tr, topic, group)[0] == 4 })
	for deadline := time.Now().Add(time.Second); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if c := committed(t, tr, topic, group)[0]; c != 4 {
			t.Fatalf("committed offset %d while message 5 (offset 4) is unacked", c)
		}
	}

	// Crash: Close stops everything at once.
	tr.Close()

	tr2 := newTransport(t, o)
	if c := committed(t, tr2, topic, group)[0]; c != 4 {
		t.Fatalf("after the crash the committed offset is %d, want 4", c)
	}
	got := make(chan string, 20)
	subscribe(t, tr2, topic, message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		got <- m.ID
		return nil
	}), transport.SubscribeOptions{Group: group})
	want := []string{"m5", "m6", "m7", "m8", "m9", "m10"}
	for i, w := range want {
		select {
		case id := <-got:
			if id != w {
				t.Fatalf("delivery %d after restart: got %s, want %s", i, id, w)
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("delivery %d after restart: nothing, want %s", i, w)
		}
	}
	waitFor(t, 10*time.Second, "offset 10 committed", func() bool { return committed(t, tr2, topic, group)[0] == 10 })
}

// keyChecker records, per key, the sequence numbers handled and whether
// two handlers ever ran for one key at once.
type keyChecker struct {
	mu         sync.Mutex
	busy       map[string]bool
	seen       map[string]map[int]int // key → seq → times
	order      map[string][]int       // first-time seqs in handling order
	overlaps   int
	running    int
	maxRunning int
	total      int
}

func newKeyChecker() *keyChecker {
	return &keyChecker{busy: map[string]bool{}, seen: map[string]map[int]int{}, order: map[string][]int{}}
}

func (c *keyChecker) enter(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.busy[key] {
		c.overlaps++
	}
	c.busy[key] = true
	c.running++
	c.maxRunning = max(c.maxRunning, c.running)
}

func (c *keyChecker) leave(key string, seq int, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.busy[key] = false
	c.running--
	if !ok {
		return
	}
	if c.seen[key] == nil {
		c.seen[key] = map[int]int{}
	}
	if c.seen[key][seq] == 0 {
		c.order[key] = append(c.order[key], seq)
		c.total++
	}
	c.seen[key][seq]++
}

func (c *keyChecker) unique() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.total
}

// check verifies that each key's sequence numbers were first handled in
// publish order (redeliveries after a rebalance may repeat earlier ones,
// which at-least-once allows).
func (c *keyChecker) check(t *testing.T, keys, perKey int) {
	t.Helper()
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.overlaps > 0 {
		t.Errorf("%d times two handlers ran for the same key at once", c.overlaps)
	}
	for k := range keys {
		key := "k" + strconv.Itoa(k)
		o := c.order[key]
		if len(o) != perKey {
			t.Errorf("key %s: %d distinct messages handled, want %d", key, len(o), perKey)
			continue
		}
		for i, s := range o {
			if s != i {
				t.Errorf("key %s: handled out of order: %v", key, o)
				break
			}
		}
	}
}

func keyed(keys, perKey int) []*message.Message {
	var msgs []*message.Message
	for i := range perKey {
		for k := range keys {
			msgs = append(msgs, &message.Message{Key: "k" + strconv.Itoa(k), Payload: []byte(strconv.Itoa(i))})
		}
	}
	return msgs
}

// Per-key order under concurrency, with nacks: messages of different keys
// run in parallel, a key's next message waits until the previous one is
// acked, including when it is nacked and redelivered.
func TestPerKeyOrderUnderConcurrencyWithNacks(t *testing.T) {
	for _, conc := range []int{8, 1} {
		t.Run("concurrency-"+strconv.Itoa(conc), func(t *testing.T) { perKeyOrder(t, conc) })
	}
}

func perKeyOrder(t *testing.T, conc int) {
	tr := newTransport(t, testOptions(t))
	ctx := context.Background()
	topic, group := name(t, "t"), name(t, "g")
	const keys, perKey = 12, 25
	c := newKeyChecker()
	var nacks atomic.Int64
	subscribe(t, tr, topic, message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		seq, _ := strconv.Atoi(string(m.Payload))
		c.enter(m.Key)
		time.Sleep(time.Millisecond)
		if seq%7 == 3 && m.Attempt == 1 {
			nacks.Add(1)
			c.leave(m.Key, seq, false)
			return fmt.Errorf("fail the first attempt of %s/%d", m.Key, seq)
		}
		c.leave(m.Key, seq, true)
		return nil
	}), transport.SubscribeOptions{Group: group, Concurrency: conc, OrderedByKey: true, MaxInFlight: 64})
	waitAssigned(t, tr, topic, group)
	msgs := keyed(keys, perKey)
	for i := 0; i < len(msgs); i += 50 {
		if err := tr.Publish(ctx, topic, msgs[i:min(i+50, len(msgs))]...); err != nil {
			t.Fatal(err)
		}
	}
	waitFor(t, 60*time.Second, "every message handled", func() bool { return c.unique() == keys*perKey })
	c.check(t, keys, perKey)
	if nacks.Load() == 0 {
		t.Error("no nack happened")
	}
	if conc > 1 && c.maxRunning < 2 {
		t.Errorf("at most %d handlers ran at once, want concurrency across keys", c.maxRunning)
	}
}

// A rebalance mid-stream with two group members: the second member joins
// while messages flow, then the first leaves. Nothing is lost, and no key
// is ever handled by two handlers at once (the revoked member finishes its
// in-flight messages and commits before the partition moves).
func TestRebalanceTwoMembers(t *testing.T) {
	o := testOptions(t)
	o.Partitions = 4
	a := newTransport(t, o)
	b := newTransport(t, o)
	pub := newTransport(t, o)
	ctx := context.Background()
	topic, group := name(t, "t"), name(t, "g")
	const keys = 8
	perKey := 60
	if testing.Short() {
		perKey = 25
	}
	c := newKeyChecker()
	h := message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		seq, _ := strconv.Atoi(string(m.Payload))
		c.enter(m.Key)
		time.Sleep(2 * time.Millisecond)
		c.leave(m.Key, seq, true)
		return nil
	})
	so := transport.SubscribeOptions{Group: group, Concurrency: 4, OrderedByKey: true}
	stopA := subscribe(t, a, topic, h, so)
	waitAssigned(t, a, topic, group)

	msgs := keyed(keys, perKey)
	third := len(msgs) / 3
	publish := func(ms []*message.Message) {
		for i := 0; i < len(ms); i += 8 {
			if err := pub.Publish(ctx, topic, ms[i:min(i+8, len(ms))]...); err != nil {
				t.Error(err)
				return
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	publish(msgs[:third])
	subscribe(t, b, topic, h, so) // B joins: rebalance while A works
	publish(msgs[third : 2*third])
	waitFor(t, 20*time.Second, "two members in the group", func() bool {
		var admin sarama.ClusterAdmin
		pub.As(&admin)
		ds, err := admin.DescribeConsumerGroups([]string{group})
		return err == nil && len(ds) == 1 && ds[0].State == "Stable" && len(ds[0].Members) == 2
	})
	if err := stopA(); err != context.Canceled { // A leaves: B takes everything
		t.Errorf("Subscribe of A returned %v, want context.Canceled", err)
	}
	publish(msgs[2*third:])
	waitFor(t, 60*time.Second, "every message handled", func() bool { return c.unique() == len(msgs) })
	c.check(t, keys, perKey)
}

// Without a group, a subscription reads every partition from its start
// position and commits nothing.
func TestNoGroupStartPositions(t *testing.T) {
	tr := newTransport(t, testOptions(t))
	ctx := context.Background()
	topic := name(t, "t")
	if err := tr.Publish(ctx, topic, message.New([]byte("old-1")), message.New([]byte("old-2"))); err != nil {
		t.Fatal(err)
	}
	oldest := make(chan string, 10)
	newest := make(chan string, 10)
	subscribe(t, tr, topic, message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		oldest <- string(m.Payload)
		return nil
	}), transport.SubscribeOptions{Start: transport.StartOldest})
	subscribe(t, tr, topic, message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		newest <- string(m.Payload)
		return nil
	}), transport.SubscribeOptions{})
	// A group-less subscription fixes its start offsets before it starts
	// fetching; give it a moment to get there.
	time.Sleep(300 * time.Millisecond)
	if err := tr.Publish(ctx, topic, message.New([]byte("new-1"))); err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for len(seen) < 3 {
		select {
		case p := <-oldest:
			seen[p] = true
		case <-time.After(20 * time.Second):
			t.Fatalf("StartOldest saw %v, want old-1, old-2, new-1", seen)
		}
	}
	select {
	case p := <-newest:
		if p != "new-1" {
			t.Fatalf("StartNew got %q first, want new-1", p)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("StartNew got nothing")
	}
}

// Lag is the high watermark minus the committed offset, per partition.
func TestConsumerLag(t *testing.T) {
	o := testOptions(t)
	o.Partitions = 2
	tr := newTransport(t, o)
	ctx := context.Background()
	topic, group := name(t, "t"), name(t, "g")
	if err := tr.Declare(ctx, topic, transport.SubscribeOptions{Group: group}); err != nil {
		t.Fatal(err)
	}
	var msgs []*message.Message
	for i := range 6 {
		msgs = append(msgs, &message.Message{Key: strconv.Itoa(i), Payload: []byte("x")})
	}
	if err := tr.Publish(ctx, topic, msgs...); err != nil {
		t.Fatal(err)
	}
	total := func() (n int64) {
		lag, err := tr.Lag(ctx, topic, group)
		if err != nil {
			t.Fatal(err)
		}
		if len(lag.Partitions) != 2 {
			t.Fatalf("lag for %d partitions, want 2", len(lag.Partitions))
		}
		for _, l := range lag.Partitions {
			if l.Lag != l.HighWater-l.Committed {
				t.Fatalf("lag %+v is not high watermark - committed", l)
			}
			n += l.Lag
		}
		if n != lag.Pending {
			t.Fatalf("Pending %d, partitions sum to %d", lag.Pending, n)
		}
		return n
	}
	if n := total(); n != 6 {
		t.Fatalf("lag before consuming: %d, want 6", n)
	}
	if _, err := tr.Lag(ctx, topic, name(t, "nogroup")); !errors.Is(err, kafkatransport.ErrUnknownGroup) {
		t.Fatalf("Lag of an unknown group: %v, want ErrUnknownGroup", err)
	}
	subscribe(t, tr, topic, message.HandlerFunc(func(context.Context, *message.Message) error { return nil }), transport.SubscribeOptions{Group: group})
	waitFor(t, 20*time.Second, "lag 0", func() bool { return total() == 0 })
}

// Shutdown lets a running handler finish (its context is not cancelled),
// commits its offset and makes Subscribe return ErrClosed.
func TestShutdownDrainsAndCommits(t *testing.T) {
	o := testOptions(t)
	o.Partitions = 1
	tr := newTransport(t, o)
	ctx := context.Background()
	topic, group := name(t, "t"), name(t, "g")
	started := make(chan struct{}, 1)
	var finished atomic.Bool
	done := make(chan error, 1)
	go func() {
		done <- tr.Subscribe(ctx, topic, message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
			started <- struct{}{}
			select {
			case <-time.After(500 * time.Millisecond):
				finished.Store(true)
				return nil
			case <-ctx.Done():
				return ctx.Err()
			}
		}), transport.SubscribeOptions{Group: group})
	}()
	waitAssigned(t, tr, topic, group)
	if err := tr.Publish(ctx, topic, message.New([]byte("slow"))); err != nil {
		t.Fatal(err)
	}
	<-started
	sctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := tr.Shutdown(sctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	if !finished.Load() {
		t.Fatal("Shutdown returned before the handler finished")
	}
	if err := <-done; err != transport.ErrClosed {
		t.Fatalf("Subscribe returned %v, want ErrClosed", err)
	}
	tr2 := newTransport(t, o)
	if c := committed(t, tr2, topic, group)[0]; c != 1 {
		t.Fatalf("committed %d after Shutdown, want 1", c)
	}
	if err := tr.Publish(ctx, topic, message.New(nil)); err != transport.ErrClosed {
		t.Fatalf("Publish after Shutdown: %v, want ErrClosed", err)
	}
}

// Dead letters are published before the original's offset is committed:
// while the dead-letter topic refuses the copy, the original stays
// uncommitted and comes back; once the copy lands, the offset moves on.
func TestDeadLetterBeforeCommit(t *testing.T) {
	if testenv.KafkaExternal() {
		t.Skip("changes topic configuration")
	}
	o := testOptions(t)
	o.Partitions = 1
	tr := newTransport(t, o)
	ctx := context.Background()
	topic, group, dlq := name(t, "t"), name(t, "g"), name(t, "dlq")
	var admin sarama.ClusterAdmin
	tr.As(&admin)
	if err := admin.CreateTopic(dlq, &sarama.TopicDetail{NumPartitions: 1, ReplicationFactor: -1,
		ConfigEntries: map[string]*string{"max.message.bytes": ptr("200")}}, false); err != nil {
		t.Fatal(err)
	}
	so := transport.SubscribeOptions{Group: group, DeadLetterTopic: dlq}
	if err := tr.Declare(ctx, topic, so); err != nil {
		t.Fatal(err)
	}
	var attempts atomic.Int32
	subscribe(t, tr, topic, message.HandlerFunc(func(context.Context, *message.Message) error {
		attempts.Add(1)
		return message.Permanent(errors.New("poison"))
	}), so)
	if err := tr.Publish(ctx, topic, &message.Message{ID: "poison-1", Payload: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 20*time.Second, "two attempts while the dead-letter topic refuses", func() bool { return attempts.Load() >= 2 })
	if c := committed(t, tr, topic, group)[0]; c != 0 {
		t.Fatalf("committed %d while the dead-letter publish fails, want 0", c)
	}
	if err := admin.AlterConfig(sarama.TopicResource, dlq, map[string]*string{"max.message.bytes": ptr("1000000")}, false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "offset committed after the dead letter landed", func() bool { return committed(t, tr, topic, group)[0] == 1 })
	got := make(chan *message.Message, 1)
	subscribe(t, tr, dlq, message.HandlerFunc(func(_ context.Context, m *message.Message) error {
		select {
		case got <- m:
		default:
		}
		return nil
	}), transport.SubscribeOptions{Start: transport.StartOldest})
	select {
	case m := <-got:
		if m.ID != "poison-1" || m.Header(message.HeaderDeadLetterReason) == "" || m.Header(message.HeaderDeadLetterTopic) != topic {
			t.Fatalf("dead letter %+v", m)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("nothing on the dead-letter topic")
	}
}

// At Concurrency 1, when a rebalance ends a member's group session, the
// member starts no more handlers for the session's records: the partition
// is revoked, and its next owner reads them again. The records of a run
// (up to 128) kept being handed to the handler after the session ended,
// stretching the rebalance. The test counts handler starts whose session
// had already ended, until a handler of a later session runs (the
// rebalance is over, so the count is final). A handler may start in the
// moment between the Dispatcher's context check and the handler's own, so
// one such start is tolerated.
func TestRevokedPartitionStartsNoMoreHandlers(t *testing.T) {
	o := testOptions(t)
	o.Partitions = 1
	a := newTransport(t, o)
	b := newTransport(t, o)
	ctx := context.Background()
	topic, group := name(t, "t"), name(t, "g")
	var ms []*message.Message
	for i := range 300 {
		ms = append(ms, &message.Message{ID: "m" + strconv.Itoa(i), Payload: []byte("x")})
	}
	if err := a.Publish(ctx, topic, ms...); err != nil {
		t.Fatal(err)
	}
	var (
		mu      sync.Mutex
		first   sarama.ConsumerGroupSession // A's first session
		handled int
		late    int // starts for a session that had ended
		later   bool
	)
	h := message.HandlerFunc(func(ctx context.Context, m *message.Message) error {
		var sess sarama.ConsumerGroupSession
		if !m.As(&sess) {
			t.Error("message without its group session")
			return nil
		}
		mu.Lock()
		switch {
		case first == nil:
			first = sess
		case sess != first:
			later = true
		}
		if sess.Context().Err() != nil {
			late++
		}
		handled++
		mu.Unlock()
		time.Sleep(10 * time.Millisecond) // work: the rebalance comes mid-run
		return nil
	})
	so := transport.SubscribeOptions{Group: group, Start: transport.StartOldest, Concurrency: 1}
	subscribe(t, a, topic, h, so)
	waitFor(t, 20*time.Second, "A handling", func() bool { mu.Lock(); defer mu.Unlock(); return handled > 5 })
	subscribe(t, b, topic, h, so) // the rebalance ends A's session
	waitFor(t, 30*time.Second, "a handler of a later session", func() bool { mu.Lock(); defer mu.Unlock(); return later })
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d handler starts, %d for an ended session", handled, late)
	if late > 1 {
		t.Errorf("%d handlers started for records of an ended session, want at most 1", late)
	}
}
