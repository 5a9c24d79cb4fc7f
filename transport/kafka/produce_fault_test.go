package kafkatransport_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/courierkit/courier/internal/testenv"
	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	kafkatransport "github.com/courierkit/courier/transport/kafka"
)

// faultCluster starts a private kfake cluster of n brokers for a test that
// injects broker answers, and a transport on it.
func faultCluster(t *testing.T, n int, tune func(*kafkatransport.Options), opts ...kfake.Opt) (*kfake.Cluster, *kafkatransport.Transport) {
	t.Helper()
	if testenv.KafkaExternal() {
		t.Skip("injects broker answers on a private kfake cluster")
	}
	brokers(t)
	c, err := kfake.NewCluster(append([]kfake.Opt{kfake.NumBrokers(n)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	o := testOptions(t)
	o.Brokers = c.ListenAddrs()
	if tune != nil {
		tune(&o)
	}
	return c, newTransport(t, o)
}

// keyFor returns a key whose partition among n is p (the producer hashes
// keys as sarama's hash partitioner does).
func keyFor(t *testing.T, p, n int32) string {
	t.Helper()
	hp := sarama.NewHashPartitioner("")
	for i := range 10000 {
		k := fmt.Sprintf("k%d", i)
		got, err := hp.Partition(&sarama.ProducerMessage{Key: sarama.StringEncoder(k)}, n)
		if err != nil {
			t.Fatal(err)
		}
		if got == p {
			return k
		}
	}
	t.Fatalf("no key for partition %d of %d", p, n)
	return ""
}

// countIDs counts the records of topic per courier ID.
func countIDs(t *testing.T, tr *kafkatransport.Transport, topic string) map[string]int {
	t.Helper()
	count := map[string]int{}
	for _, r := range readRecords(t, tr, topic) {
		count[r.id]++
	}
	return count
}

// A batch whose first attempt was written but answered with an error that
// leaves the outcome unknown is sent again with its own producer ID and
// sequence numbers, so the broker drops the duplicate, even when the
// producer took a new producer ID meanwhile: here because another
// partition of the same request answered UNKNOWN_PRODUCER_ID (that
// partition alone is renumbered under the new ID). Renumbering the
// ambiguous batch under the new ID wrote its record twice.
func TestPublishAmbiguousRetryKeepsNumbersAfterOtherPartitionLostState(t *testing.T) {
	for _, ambiguous := range []*kerr.Error{kerr.NotEnoughReplicasAfterAppend, kerr.RequestTimedOut} {
		t.Run(ambiguous.Message, func(t *testing.T) {
			c, tr := faultCluster(t, 1, nil)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			const topic = "ambiguous"
			k0, k1 := keyFor(t, 0, 3), keyFor(t, 1, 3)
			// Both partitions get sequence numbers under the first ID.
			if err := tr.Publish(ctx, topic, &message.Message{ID: "w0", Key: k0}, &message.Message{ID: "w1", Key: k1}); err != nil {
				t.Fatal(err)
			}
			h := c.Fault(
				kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: topic, Partitions: []int32{0}, Err: ambiguous},
				kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: topic, Partitions: []int32{1}, Err: kerr.UnknownProducerID},
			)
			if err := tr.Publish(ctx, topic, &message.Message{ID: "a0", Key: k0}, &message.Message{ID: "a1", Key: k1}); err != nil {
				t.Fatal(err)
			}
			if h.Hits() != 2 {
				t.Fatalf("%d injected answers, want 2", h.Hits())
			}
			if err := tr.Publish(ctx, topic, &message.Message{ID: "b0", Key: k0}, &message.Message{ID: "b1", Key: k1}); err != nil {
				t.Fatalf("Publish after the retry: %v", err)
			}
			count := countIDs(t, tr, topic)
			for _, id := range []string{"w0", "w1", "a0", "a1", "b0", "b1"} {
				if count[id] != 1 {
					t.Errorf("%s: %d records, want 1 (all: %v)", id, count[id], count)
				}
			}
		})
	}
}

// The same when the new producer ID comes from another call: call A's
// batch is written but answered NOT_ENOUGH_REPLICAS_AFTER_APPEND, and
// while A's request is at the broker, call B on another partition (led
// by another broker, so on another connection) gives up on an
// UNKNOWN_SERVER_ERROR answer (an unknown outcome) and drops the producer
// ID. A's retry keeps A's ID and numbers.
func TestPublishAmbiguousRetryKeepsNumbersAfterOtherCallGaveUp(t *testing.T) {
	c, tr := faultCluster(t, 2, func(o *kafkatransport.Options) { o.PublishTimeout = 5 * time.Second })
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const topic = "gaveup"
	if err := tr.Publish(ctx, topic, message.New(nil)); err != nil { // creates the topic, takes an ID
		t.Fatal(err)
	}
	var client sarama.Client
	if !tr.As(&client) {
		t.Fatal("As(*sarama.Client) = false")
	}
	// Partitions pa and pb led by different brokers.
	const pa, pb = 0, 1
	for p, node := range map[int32]int32{pa: 0, pb: 1} {
		if err := c.MoveTopicPartition(topic, p, node); err != nil {
			t.Fatal(err)
		}
	}
	if err := client.RefreshMetadata(topic); err != nil {
		t.Fatal(err)
	}
	for p, node := range map[int32]int32{pa: 0, pb: 1} {
		if b, err := client.Leader(topic, p); err != nil || b.ID() != node {
			t.Fatalf("leader of partition %d: %v, %v; want broker %d", p, b, err, node)
		}
	}
	ka, kb := keyFor(t, pa, 3), keyFor(t, pb, 3)
	if err := tr.Publish(ctx, topic, &message.Message{ID: "wa", Key: ka}, &message.Message{ID: "wb", Key: kb}); err != nil {
		t.Fatal(err)
	}

	// A's first attempt waits at the broker until B has given up, then
	// is written and answered NOT_ENOUGH_REPLICAS_AFTER_APPEND.
	bDone := make(chan struct{})
	var held atomic.Bool
	c.ControlKey(int16(kmsg.Produce), func(r kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		req := r.(*kmsg.ProduceRequest)
		for _, rt := range req.Topics {
			for _, rp := range rt.Partitions {
				if rt.Topic == topic && rp.Partition == pa && held.CompareAndSwap(false, true) {
					c.SleepControl(func() {
						select {
						case <-bDone:
						case <-ctx.Done():
						}
					})
				}
			}
		}
		return nil, nil, false
	})
	ha := c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: topic, Partitions: []int32{pa}, Err: kerr.NotEnoughReplicasAfterAppend})
	// B's attempt fails with an error that leaves its outcome unknown
	// and is not retried.
	c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: topic, Partitions: []int32{pb}, Err: kerr.UnknownServerError})

	errA := make(chan error, 1)
	go func() { errA <- tr.Publish(ctx, topic, &message.Message{ID: "a", Key: ka}) }()
	for !held.Load() {
		if ctx.Err() != nil {
			t.Fatal("A's request never reached the broker")
		}
		time.Sleep(time.Millisecond)
	}
	// B gives up its batch of unknown outcome. (B must not need broker
	// pa's connection, which A's request holds: no retry, no metadata.)
	if err := tr.ProduceSync(ctx, topic, &message.Message{ID: "b", Key: kb}); !errors.Is(err, sarama.ErrUnknown) {
		t.Fatalf("B: %v, want UNKNOWN_SERVER_ERROR", err)
	}
	close(bDone)
	if err := <-errA; err != nil {
		t.Fatalf("A: %v", err)
	}
	if ha.Hits() != 1 {
		t.Fatalf("%d injected answers for A, want 1", ha.Hits())
	}
	if err := tr.Publish(ctx, topic, &message.Message{ID: "a2", Key: ka}, &message.Message{ID: "b2", Key: kb}); err != nil {
		t.Fatalf("Publish after the retry: %v", err)
	}
	count := countIDs(t, tr, topic)
	for _, id := range []string{"wa", "wb", "a", "a2", "b2"} {
		if count[id] != 1 {
			t.Errorf("%s: %d records, want 1 (all: %v)", id, count[id], count)
		}
	}
	if count["b"] > 1 {
		t.Errorf("b: %d records, want at most 1", count["b"])
	}
}

// A call that waits for a partition behind another call (here one stuck
// at the broker) and whose caller gives up meanwhile (ctx canceled or past
// its deadline, as with PublishTimeout) sends nothing once it gets the
// partition: its caller already has its error and would publish again.
// It was sent anyway and written.
func TestPublishNotSentAfterCallerGaveUp(t *testing.T) {
	for _, c := range []struct {
		name string
		ctx  func() (context.Context, context.CancelFunc)
	}{
		{"canceled", func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) }},
		{"deadline", func() (context.Context, context.CancelFunc) {
			return context.WithTimeout(context.Background(), 50*time.Millisecond)
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			cl, tr := faultCluster(t, 1, nil)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			const topic = "stale"
			if err := tr.Publish(ctx, topic, &message.Message{ID: "w", Key: "k"}); err != nil {
				t.Fatal(err)
			}
			stuck, release := make(chan struct{}), make(chan struct{})
			var requests atomic.Int32
			cl.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
				cl.KeepControl()
				if requests.Add(1) == 1 {
					close(stuck)
					cl.SleepControl(func() { <-release })
				}
				return nil, nil, false
			})
			errA := make(chan error, 1)
			go func() { errA <- tr.Publish(ctx, topic, &message.Message{ID: "a", Key: "k"}) }()
			<-stuck
			bctx, bcancel := c.ctx()
			defer bcancel()
			errB := make(chan error, 1)
			go func() { errB <- tr.ProduceSync(bctx, topic, &message.Message{ID: "b", Key: "k"}) }()
			if c.name == "canceled" {
				bcancel()
			}
			<-bctx.Done()
			close(release)
			if err := <-errA; err != nil {
				t.Fatalf("A: %v", err)
			}
			err := <-errB
			if !errors.Is(err, bctx.Err()) {
				t.Errorf("B: %v, want %v", err, bctx.Err())
			}
			if n := requests.Load(); n != 1 {
				t.Errorf("%d produce requests, want 1 (A's): B was sent after its caller gave up", n)
			}
			if count := countIDs(t, tr, topic); count["b"] != 0 || count["a"] != 1 {
				t.Errorf("a: %d, b: %d records, want 1 and 0", count["a"], count["b"])
			}
		})
	}
}

// A batch the broker refused before writing it (MESSAGE_TOO_LARGE)
// leaves the producer ID in place: its numbers were not taken, and the
// partition's next batch reuses them. A batch given up on with an unknown
// outcome (NOT_ENOUGH_REPLICAS_AFTER_APPEND until the retries run out)
// still drops the ID, and the next batch goes under a new one. Every
// record the broker took is there once.
func TestPublishRefusedBatchKeepsProducerID(t *testing.T) {
	for _, c := range []struct {
		name    string
		err     *kerr.Error
		count   int
		wantIDs int // InitProducerID requests after the failure
	}{
		{"refused", kerr.MessageTooLarge, 1, 0},
		{"unknown outcome", kerr.NotEnoughReplicasAfterAppend, -1, 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			cl, tr := faultCluster(t, 1, func(o *kafkatransport.Options) { o.PublishTimeout = 2 * time.Second })
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			const topic = "refused"
			if err := tr.Publish(ctx, topic, &message.Message{ID: "w", Key: "k"}); err != nil {
				t.Fatal(err)
			}
			ids := cl.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.InitProducerID}, Observe: true, Count: -1})
			h := cl.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: topic, Err: c.err, Count: c.count})
			if err := tr.ProduceSync(ctx, topic, &message.Message{ID: "x", Key: "k"}); err == nil {
				t.Fatal("Publish succeeded through the injected answers")
			}
			h.Remove()
			if err := tr.Publish(ctx, topic, &message.Message{ID: "y", Key: "k"}); err != nil {
				t.Fatalf("Publish after the failure: %v", err)
			}
			if n := ids.Hits(); n != c.wantIDs {
				t.Errorf("%d InitProducerID requests after the failure, want %d", n, c.wantIDs)
			}
			count := countIDs(t, tr, topic)
			if count["w"] != 1 || count["y"] != 1 {
				t.Errorf("records: %v, want w and y once", count)
			}
			if c.count == 1 && count["x"] != 0 {
				t.Errorf("x: %d records of a refused batch", count["x"])
			}
			if count["x"] > 1 {
				t.Errorf("x: %d records, want at most 1", count["x"])
			}
		})
	}
}

// With MaxMessageBytes equal to the broker's message.max.bytes (which its
// documentation allows), messages at the advertised limits are accepted:
// the limits leave room for the record batch header around every record,
// which the broker counts. They were 61 bytes too large, and a message of
// MaxPayload came back as MESSAGE_TOO_LARGE.
func TestLimitsFitBrokerMessageMaxBytes(t *testing.T) {
	const max = 1 << 20
	_, tr := faultCluster(t, 1, func(o *kafkatransport.Options) { o.MaxMessageBytes = max },
		kfake.BrokerConfigs(map[string]string{"message.max.bytes": strconv.Itoa(max)}))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const topic = "limits"
	l := tr.Capabilities().Limits
	// A 64-byte ID and a payload of MaxPayload: MaxMessage in all.
	at := &message.Message{ID: strings.Repeat("i", 64), Payload: make([]byte, l.MaxPayload)}
	if n := transport.Size(at); n != l.MaxMessage {
		t.Fatalf("test message of %d bytes, want MaxMessage %d", n, l.MaxMessage)
	}
	if err := tr.Publish(ctx, topic, at); err != nil {
		t.Fatalf("a message at MaxPayload and MaxMessage: %v", err)
	}
	over := &message.Message{ID: strings.Repeat("o", 65), Payload: make([]byte, l.MaxPayload)}
	var le *transport.LimitError
	if err := tr.Publish(ctx, topic, over); !errors.As(err, &le) {
		t.Fatalf("a message one byte over MaxMessage: %v, want a *LimitError", err)
	}
	count := countIDs(t, tr, topic)
	if count[at.ID] != 1 || len(count) != 1 {
		t.Errorf("records: %v", count)
	}
}
