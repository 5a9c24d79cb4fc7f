package kafkatransport_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/courierkit/courier/internal/testenv"
	"github.com/courierkit/courier/message"
	kafkatransport "github.com/courierkit/courier/transport/kafka"
)

// A produce request that fails (a NOT_LEADER_OR_FOLLOWER answer, then a
// dropped connection) is sent again with the same batches: Publish
// succeeds, and every record is in the topic once, in key order.
func TestPublishRetriesKeepEveryRecordOnce(t *testing.T) {
	if testenv.KafkaExternal() {
		t.Skip("injects errors on a private kfake cluster")
	}
	brokers(t)
	c, err := kfake.NewCluster(kfake.NumBrokers(1))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const topic = "retries"
	var seen atomic.Int32
	c.ControlKey(int16(kmsg.Produce), func(r kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		req := r.(*kmsg.ProduceRequest)
		if len(req.Topics) == 0 || req.Topics[0].Topic != topic {
			return nil, nil, false
		}
		switch seen.Add(1) {
		case 2: // the first keyed call: refuse as not the leader
			resp := req.ResponseKind().(*kmsg.ProduceResponse)
			for _, rt := range req.Topics {
				st := kmsg.NewProduceResponseTopic()
				st.Topic = rt.Topic
				for _, rp := range rt.Partitions {
					sp := kmsg.NewProduceResponseTopicPartition()
					sp.Partition = rp.Partition
					sp.ErrorCode = 6 // NOT_LEADER_OR_FOLLOWER
					st.Partitions = append(st.Partitions, sp)
				}
				resp.Topics = append(resp.Topics, st)
			}
			return resp, nil, true
		case 3: // its retry: drop the connection
			return nil, errors.New("injected connection loss"), true
		}
		return nil, nil, false
	})
	o := testOptions(t)
	o.Brokers = c.ListenAddrs()
	tr := newTransport(t, o)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := tr.Publish(ctx, topic, message.New(nil)); err != nil { // creates the topic
		t.Fatal(err)
	}
	var ms []*message.Message
	for i := range 60 {
		ms = append(ms, &message.Message{ID: "m" + strconv.Itoa(i), Key: strconv.Itoa(i % 6)})
	}
	if err := tr.Publish(ctx, topic, ms...); err != nil {
		t.Fatalf("Publish through a refused and a dropped request: %v", err)
	}
	if err := tr.Publish(ctx, topic, &message.Message{ID: "after", Key: "0"}); err != nil {
		t.Fatal(err)
	}
	if n := seen.Load(); n < 5 {
		t.Errorf("%d produce requests, want at least 5 (the refused and dropped ones sent again)", n)
	}
	count := map[string]int{}
	last := map[string]int{}
	for _, r := range readRecords(t, tr, topic) {
		count[r.id]++
		if n, err := strconv.Atoi(r.id[1:]); err == nil && r.key != "" {
			if prev, ok := last[r.key]; ok && n < prev {
				t.Errorf("key %s: %s after m%d", r.key, r.id, prev)
			}
			last[r.key] = n
		}
	}
	for _, m := range ms {
		if count[m.ID] != 1 {
			t.Errorf("%s: %d records, want 1", m.ID, count[m.ID])
		}
	}
	if count["after"] != 1 {
		t.Errorf("the message after the retries: %d records, want 1", count["after"])
	}
}

// Concurrent Publish calls that share partitions take turns on them: every
// record lands once, and each caller's records of a key stay in order.
func TestPublishConcurrentCalls(t *testing.T) {
	o := testOptions(t)
	tr := newTransport(t, o)
	topic := name(t, "t")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := tr.Publish(ctx, topic, message.New(nil)); err != nil { // creates the topic
		t.Fatal(err)
	}
	const callers, calls, per = 6, 15, 8
	errs := make(chan error, callers)
	for c := range callers {
		go func() {
			for i := range calls {
				var ms []*message.Message
				for j := range per {
					n := i*per + j
					ms = append(ms, &message.Message{ID: "c" + strconv.Itoa(c) + "-" + strconv.Itoa(n), Key: strconv.Itoa(c*10 + n%4)})
				}
				if err := tr.Publish(ctx, topic, ms...); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range callers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	count := map[string]int{}
	last := map[string]int{}
	for _, r := range readRecords(t, tr, topic) {
		count[r.id]++
		if r.key == "" {
			continue
		}
		var c, n int
		if _, err := fmt.Sscanf(r.id, "c%d-%d", &c, &n); err != nil {
			t.Fatalf("id %q: %v", r.id, err)
		}
		if prev, ok := last[r.key]; ok && n < prev {
			t.Errorf("key %s: %s after %d", r.key, r.id, prev)
		}
		last[r.key] = n
	}
	for c := range callers {
		for n := range calls * per {
			if id := "c" + strconv.Itoa(c) + "-" + strconv.Itoa(n); count[id] != 1 {
				t.Errorf("%s: %d records, want 1", id, count[id])
			}
		}
	}
}

// record is one stored record's courier ID and key.
type record struct{ id, key string }

// readRecords reads every record of topic, partition by partition in
// offset order, with a plain sarama consumer on the transport's client.
func readRecords(t *testing.T, tr *kafkatransport.Transport, topic string) []record {
	t.Helper()
	var client sarama.Client
	if !tr.As(&client) {
		t.Fatal("As(*sarama.Client) = false")
	}
	cons, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	parts, err := client.Partitions(topic)
	if err != nil {
		t.Fatal(err)
	}
	var out []record
	for _, p := range parts {
		hwm, err := client.GetOffset(topic, p, sarama.OffsetNewest)
		if err != nil {
			t.Fatal(err)
		}
		if hwm == 0 {
			continue
		}
		pc, err := cons.ConsumePartition(topic, p, sarama.OffsetOldest)
		if err != nil {
			t.Fatal(err)
		}
		for done := false; !done; {
			select {
			case m := <-pc.Messages():
				r := record{key: string(m.Key)}
				for _, h := range m.Headers {
					if string(h.Key) == "courier-id" {
						r.id = string(h.Value)
					}
				}
				out = append(out, r)
				done = m.Offset == hwm-1
			case <-time.After(10 * time.Second):
				pc.Close()
				t.Fatalf("partition %d: nothing read within 10s", p)
			}
		}
		pc.Close()
	}
	return out
}
