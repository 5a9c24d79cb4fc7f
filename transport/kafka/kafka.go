package kafkatransport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/IBM/sarama"
	metrics "github.com/rcrowley/go-metrics"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// HeaderID is the record header that carries Message.ID. It is reserved:
// a message may not set a header of this name itself.
const HeaderID = "courier-id"

var (
	// ErrNoBrokers is returned by New when Options.Brokers is empty.
	ErrNoBrokers = errors.New("kafkatransport: no brokers")
	// ErrTopicMissing is returned when a topic does not exist and
	// Options.NoCreateTopics forbids creating it.
	ErrTopicMissing = errors.New("kafkatransport: topic does not exist")
	// ErrMessageTooLarge wraps the broker's MESSAGE_TOO_LARGE answer
	// (sarama.ErrMessageSizeTooLarge stays reachable with errors.Is): the
	// broker's message.max.bytes or the topic's max.message.bytes is
	// below Options.MaxMessageBytes. It also matches transport.ErrLimit.
	ErrMessageTooLarge = errors.New("kafkatransport: the broker rejected a message as too large (lower max_message_bytes to the broker's message.max.bytes)")
)

const (
	// recordOverhead is what sarama counts per record on top of key and
	// value (sarama's maximumRecordOverhead), headerOverhead per header.
	recordOverhead = 36
	headerOverhead = 10
	// batchOverhead is the header of a record batch (v2), log overhead
	// included: every record travels in a batch, and the broker checks
	// the batch's size against message.max.bytes.
	batchOverhead = 61
)

// Transport is a courier transport on Apache Kafka, through IBM/sarama.
// It implements transport.Conn. Create it with New or transport.Open.
type Transport struct {
	o       Options
	cfg     *sarama.Config
	log     *slog.Logger
	secrets []string
	limits  transport.Limits

	client   sarama.Client       // produce and admin requests
	producer sarama.SyncProducer // for As only: Publish does not use it
	// prod sends Publish calls: one round of produce requests per call
	// (see produce.go).
	prod *producer

	// batchProducer sends calls of several messages when Options.Linger
	// is set: sarama's producer, lingering so that concurrent calls share
	// requests. Its client is made on the first such call.
	batchMu       sync.Mutex
	batchClient   sarama.Client
	batchProducer sarama.SyncProducer
	admin         sarama.ClusterAdmin

	topicsMu sync.Mutex
	topics   map[string]bool // known to exist

	mu     sync.Mutex
	closed bool
	done   chan struct{} // closed by Close/Shutdown
	subs   map[*subscription]struct{}
	subsWG sync.WaitGroup
}

var _ transport.Conn = (*Transport)(nil)

// New connects to the brokers in opts and returns a Transport. It fails
// when no broker answers before ctx ends.
func New(ctx context.Context, opts Options) (*Transport, error) {
	if len(opts.Brokers) == 0 {
		return nil, ErrNoBrokers
	}
	o := opts.withDefaults()
	cfg, err := o.config()
	if err != nil {
		return nil, err
	}
	t := &Transport{
		o: o, cfg: cfg, log: o.Logger, secrets: o.secrets(),
		topics: map[string]bool{}, done: make(chan struct{}),
		subs: map[*subscription]struct{}{},
	}
	t.limits = transport.Limits{
		MaxMessage: o.MaxMessageBytes - batchOverhead - recordOverhead - headerOverhead - len(HeaderID),
		MaxNameLen: 249, // Kafka's topic name limit
	}
	t.limits.MaxPayload = t.limits.MaxMessage - 64
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	type result struct {
		c   sarama.Client
		err error
	}
	single := *cfg
	single.Producer.Flush.Frequency = 0 // one-message calls go at once
	ch := make(chan result, 1)
	go func() {
		c, err := sarama.NewClient(o.Brokers, &single)
		ch <- result{c, err}
	}()
	var r result
	select {
	case r = <-ch:
	case <-ctx.Done():
		go func() {
			if r := <-ch; r.c != nil {
				r.c.Close()
			}
		}()
		return nil, ctx.Err()
	}
	if r.err != nil {
		return nil, t.wrap("connect", r.err)
	}
	t.client = r.c
	t.producer, err = sarama.NewSyncProducerFromClient(t.client)
	if err != nil {
		t.client.Close()
		return nil, t.wrap("producer", err)
	}
	t.prod = newProducer(t.client, cfg, t.done)
	t.admin, err = sarama.NewClusterAdminFromClient(t.client)
	if err != nil {
		t.producer.Close()
		t.client.Close()
		return nil, t.wrap("admin", err)
	}
	return t, nil
}

// redactedErr keeps the chain of an SDK error while hiding credentials in
// its text.
type redactedErr struct {
	msg string
	err error
}

func (e *redactedErr) Error() string { return e.msg }
func (e *redactedErr) Unwrap() error { return e.err }

// wrap prefixes err with the package and the operation, and scrubs
// credentials from its text; the SDK error stays reachable.
func (t *Transport) wrap(op string, err error) error {
	if err == nil {
		return nil
	}
	return &redactedErr{msg: "kafkatransport: " + op + ": " + transport.RedactSecrets(err.Error(), t.secrets...), err: err}
}

func (t *Transport) isClosed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.closed
}

// Capabilities reports what Kafka through this adapter does; see the
// package doc for the reasoning behind each field.
func (t *Transport) Capabilities() transport.Capabilities {
	return transport.Capabilities{
		Persistent:     true,
		Redelivery:     true,
		DelayedNack:    true,
		AttemptCount:   true,
		OrderedByKey:   true,
		DeadLetter:     true,
		Replay:         true,
		BrokerTime:     true,
		LeaseExtension: true,
		Limits:         t.limits,
	}
}

// As sets target to one of the native clients: *sarama.Client (the client
// Publish and the admin use), *sarama.SyncProducer (an idempotent sarama
// producer on that client, for sending records the adapter does not
// model; Publish itself writes its own produce requests, see produce.go),
// *sarama.ClusterAdmin or *sarama.Config (a copy of the configuration the
// transport's clients use).
func (t *Transport) As(target any) bool {
	switch p := target.(type) {
	case *sarama.Client:
		*p = t.client
	case *sarama.SyncProducer:
		*p = t.producer
	case *sarama.ClusterAdmin:
		*p = t.admin
	case *sarama.Config:
		*p = *t.cfg
	default:
		return false
	}
	return true
}

// Publish sends msgs to topic as one round of produce requests (one per
// partition leader, sent together) and returns when the brokers
// acknowledged every record with acks=all. The producer is idempotent
// (producer ID and per-partition sequence numbers), so retries neither
// duplicate nor reorder records. A partition's records beyond
// MaxMessageBytes go in further rounds, in order. Message.Key is the
// record key (the partition is the hash of it; an empty key spreads
// records over partitions); ID travels in the courier-id header, Headers
// as record headers.
func (t *Transport) Publish(ctx context.Context, topic string, msgs ...*message.Message) error {
	if t.isClosed() {
		return transport.ErrClosed
	}
	if err := transport.PreparePublish(topic, msgs, t.limits); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(msgs) == 0 {
		return nil
	}
	recs := make([]outRecord, len(msgs))
	for i, m := range msgs {
		r, err := t.record(i, m)
		if err != nil {
			return err
		}
		recs[i] = r
	}
	if err := t.ensureTopic(ctx, topic); err != nil {
		return err
	}
	return t.send(ctx, topic, recs)
}

func (t *Transport) record(i int, m *message.Message) (outRecord, error) {
	if _, ok := m.Headers[HeaderID]; ok {
		return outRecord{}, fmt.Errorf("%w: message %d (id %q): header %q is reserved for the message ID", transport.ErrInvalidMessage, i, m.ID, HeaderID)
	}
	size := recordOverhead + len(HeaderID) + len(m.ID) + headerOverhead + len(m.Key) + len(m.Payload)
	hs := make([]*sarama.RecordHeader, len(m.Headers)+1)
	// One allocation for the header structs, one for their bytes.
	hv := make([]sarama.RecordHeader, len(hs))
	buf := make([]byte, 0, t.headerBytes(m))
	buf = append(buf, HeaderID...)
	buf = append(buf, m.ID...)
	hv[0] = sarama.RecordHeader{Key: buf[:len(HeaderID):len(HeaderID)], Value: buf[len(HeaderID):len(buf):len(buf)]}
	hs[0] = &hv[0]
	j := 1
	for k, v := range m.Headers {
		start := len(buf)
		buf = append(buf, k...)
		mid := len(buf)
		buf = append(buf, v...)
		hv[j] = sarama.RecordHeader{Key: buf[start:mid:mid], Value: buf[mid:len(buf):len(buf)]}
		hs[j] = &hv[j]
		j++
		size += len(k) + len(v) + headerOverhead
	}
	if batchOverhead+size > t.o.MaxMessageBytes { // a batch of this record alone
		return outRecord{}, &transport.LimitError{Index: i, MessageID: m.ID, What: "message", Size: transport.Size(m),
			Limit: t.limits.MaxMessage - headerOverhead*len(m.Headers)}
	}
	// Key and value share one copy of the message's bytes: the record
	// must not change if the caller reuses its slices after Publish.
	kv := make([]byte, 0, len(m.Key)+len(m.Payload))
	kv = append(kv, m.Key...)
	kv = append(kv, m.Payload...)
	r := &sarama.Record{Headers: hs}
	if m.Key != "" {
		r.Key = kv[:len(m.Key):len(m.Key)]
	}
	if len(m.Payload) > 0 {
		r.Value = kv[len(m.Key):]
	}
	return outRecord{r: r, key: r.Key, size: size}, nil
}

// headerBytes is the length of m's header names and values, ID included.
func (t *Transport) headerBytes(m *message.Message) int {
	n := len(HeaderID) + len(m.ID)
	for k, v := range m.Headers {
		n += len(k) + len(v)
	}
	return n
}

// send writes recs and waits for the acks, ctx, PublishTimeout or Close.
// By default the call is one round of produce requests of this package's
// producer (one request per partition leader); with Linger, calls of
// several messages go through sarama's lingering producer instead.
func (t *Transport) send(ctx context.Context, topic string, recs []outRecord) error {
	// pctx ends with the call (ctx, PublishTimeout, return): the producer
	// sends nothing of the call after its caller has had an error.
	pctx, cancel := context.WithTimeout(ctx, t.o.PublishTimeout)
	defer cancel()
	var run func() error
	if len(recs) > 1 && t.o.Linger > 0 {
		bp, err := t.batcher()
		if err != nil {
			return err
		}
		pms := make([]*sarama.ProducerMessage, len(recs))
		for i, r := range recs {
			pm := &sarama.ProducerMessage{Topic: topic, Headers: make([]sarama.RecordHeader, len(r.r.Headers))}
			for j, h := range r.r.Headers {
				pm.Headers[j] = *h
			}
			if r.r.Key != nil {
				pm.Key = sarama.ByteEncoder(r.r.Key)
			}
			if r.r.Value != nil {
				pm.Value = sarama.ByteEncoder(r.r.Value)
			}
			pms[i] = pm
		}
		run = func() error { return bp.SendMessages(pms) }
	} else {
		run = func() error { return t.prod.produce(pctx, topic, recs) }
	}
	done := make(chan error, 1)
	go func() { done <- run() }()
	var err error
	select {
	case err = <-done:
	case <-pctx.Done():
		// The records may still land (a request in flight): the caller
		// gets the error and should publish again (IDs make duplicates
		// detectable). The producer sends nothing more of the call.
		if err := ctx.Err(); err != nil {
			return err
		}
		return fmt.Errorf("kafkatransport: publish to %q: not acknowledged within publish_timeout %s (the records may still land)", topic, t.o.PublishTimeout)
	case <-t.done:
		return transport.ErrClosed
	}
	if err == nil {
		return nil
	}
	failed := len(recs)
	var perrs sarama.ProducerErrors
	if errors.As(err, &perrs) && len(perrs) > 0 {
		failed = len(perrs)
		err = perrs[0].Err
	}
	if errors.Is(err, sarama.ErrMessageSizeTooLarge) {
		return errors.Join(ErrMessageTooLarge, transport.ErrLimit, t.wrap(fmt.Sprintf("publish to %q", topic), err))
	}
	if errors.Is(err, sarama.ErrClosedClient) || errors.Is(err, sarama.ErrShuttingDown) {
		if t.isClosed() {
			return transport.ErrClosed
		}
	}
	if len(perrs) > 0 {
		return t.wrap(fmt.Sprintf("publish to %q: %d of %d messages failed", topic, failed, len(recs)), err)
	}
	return t.wrap(fmt.Sprintf("publish to %q", topic), err)
}

// batcher returns the lingering producer, creating it on first use.
func (t *Transport) batcher() (sarama.SyncProducer, error) {
	t.batchMu.Lock()
	defer t.batchMu.Unlock()
	if t.batchProducer != nil {
		return t.batchProducer, nil
	}
	if t.isClosed() {
		return nil, transport.ErrClosed
	}
	cfg := *t.cfg
	cfg.MetricRegistry = metrics.NewRegistry()
	c, err := sarama.NewClient(t.o.Brokers, &cfg)
	if err != nil {
		return nil, t.wrap("connect", err)
	}
	p, err := sarama.NewSyncProducerFromClient(c)
	if err != nil {
		c.Close()
		return nil, t.wrap("producer", err)
	}
	t.batchClient, t.batchProducer = c, p
	return p, nil
}

// ensureTopic makes sure topic exists, creating it when allowed.
func (t *Transport) ensureTopic(ctx context.Context, topic string) error {
	t.topicsMu.Lock()
	known := t.topics[topic]
	t.topicsMu.Unlock()
	if known {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if t.o.NoCreateTopics {
		exists, err := t.topicExists(topic)
		if err != nil {
			return err
		}
		if !exists {
			return fmt.Errorf("%w: %q (create_topics=false)", ErrTopicMissing, topic)
		}
	} else {
		// Creating straight away costs one round trip whether or not the
		// topic exists (asking sarama's metadata first would retry an
		// unknown topic for a second).
		rf := int16(t.o.ReplicationFactor)
		if rf <= 0 {
			rf = -1
		}
		err := t.admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: int32(t.o.Partitions), ReplicationFactor: rf}, false)
		if err != nil && !errors.Is(err, sarama.ErrTopicAlreadyExists) {
			if errors.Is(err, sarama.ErrClosedClient) && t.isClosed() {
				return transport.ErrClosed
			}
			// Not allowed to create (ACLs, a managed cluster): fine when
			// the topic is there already.
			if ok, _ := t.topicExists(topic); !ok {
				return t.wrap(fmt.Sprintf("create topic %q", topic), err)
			}
		}
		// Wait until the metadata shows it, so producers and consumers
		// find its partitions.
		deadline := time.Now().Add(10 * time.Second)
		for {
			if ok, _ := t.topicExists(topic); ok {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("kafkatransport: topic %q was created but does not show in metadata after 10s", topic)
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(50 * time.Millisecond):
			}
		}
	}
	t.topicsMu.Lock()
	t.topics[topic] = true
	t.topicsMu.Unlock()
	return nil
}

func (t *Transport) topicExists(topic string) (bool, error) {
	md, err := t.admin.DescribeTopics([]string{topic})
	if err != nil {
		if errors.Is(err, sarama.ErrClosedClient) {
			return false, transport.ErrClosed
		}
		return false, t.wrap(fmt.Sprintf("metadata of %q", topic), err)
	}
	if len(md) != 1 || md[0].Err == sarama.ErrUnknownTopicOrPartition || len(md[0].Partitions) == 0 {
		return false, nil
	}
	if md[0].Err != sarama.ErrNoError {
		return false, t.wrap(fmt.Sprintf("metadata of %q", topic), md[0].Err)
	}
	err = t.client.RefreshMetadata(topic)
	if err == nil {
		ps, err := t.client.Partitions(topic)
		return err == nil && len(ps) > 0, nil
	}
	if errors.Is(err, sarama.ErrUnknownTopicOrPartition) || errors.Is(err, sarama.ErrInvalidTopic) {
		return false, nil
	}
	if errors.Is(err, sarama.ErrClosedClient) {
		return false, transport.ErrClosed
	}
	return false, t.wrap(fmt.Sprintf("metadata of %q", topic), err)
}

// Declare creates topic if needed and, for opts.Group, pins the group's
// starting offsets so messages published from now on are kept for it:
// a group without committed offsets gets the current end of each
// partition (StartNew) or nothing (StartOldest: it will read from the
// oldest retained record).
func (t *Transport) Declare(ctx context.Context, topic string, opts transport.SubscribeOptions) error {
	if opts.Group == "" {
		return fmt.Errorf("kafkatransport: Declare needs SubscribeOptions.Group")
	}
	if err := transport.CheckSubscribe(topic, opts, t.limits); err != nil {
		return err
	}
	if t.isClosed() {
		return transport.ErrClosed
	}
	if err := t.ensureTopic(ctx, topic); err != nil {
		return err
	}
	if opts.DeadLetterTopic != "" {
		if err := t.ensureTopic(ctx, opts.DeadLetterTopic); err != nil {
			return err
		}
	}
	return t.pinGroup(ctx, topic, opts)
}

// pinGroup commits the end offsets for the partitions of topic that
// opts.Group has no committed offset for, when the group is empty (Kafka
// refuses such commits from outside while members are joined, which is
// what keeps this from moving a live group's offsets).
func (t *Transport) pinGroup(ctx context.Context, topic string, opts transport.SubscribeOptions) error {
	if opts.Start == transport.StartOldest {
		return nil // no committed offset + Offsets.Initial=oldest does it
	}
	parts, err := t.client.Partitions(topic)
	if err != nil {
		return t.wrap(fmt.Sprintf("partitions of %q", topic), err)
	}
	resp, _, err := t.groupOffsets(opts.Group, topic, parts)
	if err != nil {
		return t.wrap(fmt.Sprintf("offsets of group %q", opts.Group), err)
	}
	var missing []int32
	for _, p := range parts {
		b := resp.GetBlock(topic, p)
		if b == nil || b.Offset < 0 {
			missing = append(missing, p)
		}
	}
	if len(missing) == 0 {
		return ctx.Err()
	}
	req := sarama.NewOffsetCommitRequest(t.cfg, opts.Group)
	for _, p := range missing {
		end, err := t.client.GetOffset(topic, p, sarama.OffsetNewest)
		if err != nil {
			return t.wrap(fmt.Sprintf("end offset of %s/%d", topic, p), err)
		}
		req.AddBlock(topic, p, end, 0, "")
	}
	coord, err := t.client.Coordinator(opts.Group)
	if err != nil {
		return t.wrap(fmt.Sprintf("coordinator of group %q", opts.Group), err)
	}
	resp2, err := coord.CommitOffset(req)
	if err != nil {
		return t.wrap(fmt.Sprintf("commit start offsets of group %q", opts.Group), err)
	}
	for _, ps := range resp2.Errors {
		for p, kerr := range ps {
			if kerr != sarama.ErrNoError {
				// A member joined meanwhile (Kafka refuses commits
				// from outside a non-empty group): it owns the
				// offsets now.
				return t.wrap(fmt.Sprintf("commit start offset of %s/%d for group %q", topic, p, opts.Group), kerr)
			}
		}
	}
	return ctx.Err()
}

// Close stops every subscription at once (handlers' context cancelled,
// what was not acked is redelivered later) and closes the clients. It is
// idempotent.
func (t *Transport) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_ = t.shutdown(ctx)
	return nil
}

// Shutdown stops fetching, lets in-flight handlers finish, commits their
// offsets, then closes the clients. When ctx ends first, handlers are
// cancelled and ctx.Err() is returned. It is idempotent.
func (t *Transport) Shutdown(ctx context.Context) error {
	return t.shutdown(ctx)
}

func (t *Transport) shutdown(ctx context.Context) error {
	t.mu.Lock()
	first := !t.closed
	t.closed = true
	subs := make([]*subscription, 0, len(t.subs))
	for s := range t.subs {
		subs = append(subs, s)
	}
	t.mu.Unlock()
	var err error
	for _, s := range subs {
		if e := s.stop(ctx); e != nil && err == nil {
			err = e
		}
	}
	t.subsWG.Wait()
	if first {
		close(t.done)
		_ = t.producer.Close()
		t.batchMu.Lock()
		if t.batchProducer != nil {
			_ = t.batchProducer.Close()
			_ = t.batchClient.Close()
		}
		t.batchMu.Unlock()
		_ = t.admin.Close() // closes t.client too
		_ = t.client.Close()
	}
	return err
}
