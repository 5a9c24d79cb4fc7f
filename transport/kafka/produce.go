package kafkatransport

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"time"

	"github.com/IBM/sarama"
)

// producer sends the records of one Publish call as one round of produce
// requests: every record of the call is in hand before anything is sent,
// so each partition leader gets exactly one request holding the call's
// batches for its partitions (sarama's producer takes records one by one
// and, without a linger, sends the first alone and the rest in the
// requests that follow).
//
// It is idempotent the way Kafka's producers are: it holds a producer ID
// and epoch (InitProducerID), numbers the records of each partition
// without gaps, keeps one batch per partition in flight (a partition's
// lock is held from numbering to the broker's answer, retries included),
// and resends a failed batch with the same numbers, so a retry after a
// lost answer is discarded by the broker as a duplicate instead of being
// written twice.
//
// A batch keeps its producer ID and numbers until it is settled, even when
// the producer took a new ID meanwhile (Java's producer does the same):
// only the broker's answer for that partition's batch saying it lost the
// producer's state (UNKNOWN_PRODUCER_ID, OUT_OF_ORDER_SEQUENCE_NUMBER, an
// invalid epoch) renumbers it, under a new producer ID from sequence 0.
// The partition's next batch then starts at sequence 0 under whatever ID
// is current (partSeq.gen tells which ID its sequence counts for).
//
// A batch given up on (retries, PublishTimeout, Close) whose numbers the
// broker may have accepted drops the producer ID: its numbers can be
// neither reused nor skipped. A batch that was only ever refused before
// being written (MESSAGE_TOO_LARGE, INVALID_RECORD, an authorization
// error, or never sent) keeps the ID: the partition's next batch reuses
// its numbers.
type producer struct {
	client   sarama.Client
	version  int16
	timeout  int32         // ms, the request's acks=all wait
	giveUp   time.Duration // a call sends nothing later than this after it began (PublishTimeout)
	maxBatch int           // bytes of one partition's batch (MaxMessageBytes)
	retries  int
	backoff  time.Duration
	codec    sarama.CompressionCodec
	level    int
	done     <-chan struct{} // the transport closed: stop retrying

	idMu  sync.Mutex
	pid   int64
	epoch int16
	gen   uint64 // bumped with every new producer ID

	partsMu sync.Mutex
	parts   map[topicPart]*partSeq
}

type topicPart struct {
	topic string
	p     int32
}

// partSeq is the sequence state of one partition.
type partSeq struct {
	mu  sync.Mutex // held while a batch of the partition is in flight
	seq int32      // next sequence number under gen's producer ID
	gen uint64
}

// outRecord is one record of a call with its partition and size.
type outRecord struct {
	r    *sarama.Record
	key  []byte
	size int
}

func newProducer(client sarama.Client, cfg *sarama.Config, done <-chan struct{}) *producer {
	return &producer{
		client:   client,
		version:  produceVersion(cfg.Version),
		timeout:  int32(cfg.Producer.Timeout / time.Millisecond),
		giveUp:   cfg.Producer.Timeout,
		maxBatch: cfg.Producer.MaxMessageBytes,
		retries:  cfg.Producer.Retry.Max,
		backoff:  cfg.Producer.Retry.Backoff,
		codec:    cfg.Producer.Compression,
		level:    cfg.Producer.CompressionLevel,
		done:     done,
		pid:      -1,
		epoch:    -1,
		parts:    map[topicPart]*partSeq{},
	}
}

// produceVersion is the Produce request version sarama's own producer
// uses for protocol version v (record batches from 0.11.0.0 on).
func produceVersion(v sarama.KafkaVersion) int16 {
	switch {
	case v.IsAtLeast(sarama.V3_7_0_0):
		return 10
	case v.IsAtLeast(sarama.V2_8_0_0):
		return 9
	case v.IsAtLeast(sarama.V2_4_0_0):
		return 8
	case v.IsAtLeast(sarama.V2_1_0_0):
		return 7
	case v.IsAtLeast(sarama.V2_0_0_0):
		return 6
	case v.IsAtLeast(sarama.V1_0_0_0):
		return 5
	default:
		return 3
	}
}

// identity returns the producer ID, epoch and generation, asking the
// cluster for an ID the first time and after reset.
func (p *producer) identity() (int64, int16, uint64, error) {
	p.idMu.Lock()
	defer p.idMu.Unlock()
	if p.pid >= 0 {
		return p.pid, p.epoch, p.gen, nil
	}
	resp, err := p.client.InitProducerID()
	if err != nil {
		return 0, 0, 0, err
	}
	if resp.Err != sarama.ErrNoError {
		return 0, 0, 0, resp.Err
	}
	p.pid, p.epoch = resp.ProducerID, resp.ProducerEpoch
	p.gen++
	return p.pid, p.epoch, p.gen, nil
}

// reset drops the producer ID of generation gen (the broker no longer
// knows it): the next batch asks for a new one and numbers from 0.
func (p *producer) reset(gen uint64) {
	p.idMu.Lock()
	if p.gen == gen {
		p.pid, p.epoch = -1, -1
	}
	p.idMu.Unlock()
}

func (p *producer) part(topic string, partition int32) *partSeq {
	k := topicPart{topic, partition}
	p.partsMu.Lock()
	ps := p.parts[k]
	if ps == nil {
		ps = &partSeq{}
		p.parts[k] = ps
	}
	p.partsMu.Unlock()
	return ps
}

// partition picks the partition of a record the way sarama's hash
// partitioner does (FNV-1a of the key, sign dropped), or at random for an
// empty key.
func partition(key []byte, n int32) int32 {
	if len(key) == 0 {
		return rand.Int32N(n)
	}
	h := uint32(2166136261)
	for _, c := range key {
		h ^= uint32(c)
		h *= 16777619
	}
	p := int32(h) % n
	if p < 0 {
		p = -p
	}
	return p
}

// pending is one partition's share of a call: its records, split into
// batches of at most maxBatch bytes, the next of which is sent per round.
type pending struct {
	p     int32
	ps    *partSeq
	recs  []outRecord
	next  int // first record not yet acknowledged
	batch *sarama.RecordBatch
	n     int    // records in batch
	gen   uint64 // generation batch was numbered under
	maybe bool   // the broker may have accepted batch's numbers (an attempt's outcome is unknown)
	err   error  // final failure
	last  error  // last retriable failure
	tries int
}

// produce writes recs to topic and returns when every record is
// acknowledged (acks=all) or failed for good. Nothing is sent once ctx
// ends or p.giveUp has passed since the call began (the caller has had
// its error): a call that waited that long for a partition behind another
// call returns without sending, and a failed batch is not tried again.
func (p *producer) produce(ctx context.Context, topic string, recs []outRecord) error {
	ctx, cancel := context.WithTimeout(ctx, p.giveUp)
	defer cancel()
	parts, err := p.client.Partitions(topic)
	if err != nil || len(parts) == 0 {
		if err == nil {
			err = sarama.ErrUnknownTopicOrPartition
		}
		return err
	}
	n := int32(len(parts))
	byPart := map[int32]*pending{}
	for _, r := range recs {
		pp := partition(r.key, n)
		pd := byPart[pp]
		if pd == nil {
			pd = &pending{p: pp}
			byPart[pp] = pd
		}
		pd.recs = append(pd.recs, r)
	}
	pds := make([]*pending, 0, len(byPart))
	for _, pd := range byPart {
		pds = append(pds, pd)
	}
	// Lock partitions in one order so concurrent calls cannot deadlock.
	slices.SortFunc(pds, func(a, b *pending) int { return int(a.p - b.p) })
	for _, pd := range pds {
		pd.ps = p.part(topic, pd.p)
		pd.ps.mu.Lock()
	}
	defer func() {
		for _, pd := range pds {
			pd.ps.mu.Unlock()
		}
	}()

	for {
		// This round: every partition with records left sends its next
		// batch (a new one, or the last one again after a retriable error).
		var round []*pending
		for _, pd := range pds {
			if pd.err == nil && pd.next < len(pd.recs) {
				round = append(round, pd)
			}
		}
		if len(round) == 0 {
			break
		}
		if err := ctx.Err(); err != nil {
			// The caller has given up (its ctx, PublishTimeout) while
			// this call waited for its partitions or between rounds:
			// send nothing more.
			for _, pd := range round {
				if pd.batch != nil && pd.last != nil {
					pd.giveUp(p, pd.last) // a retry that will not go
				} else {
					pd.giveUp(p, fmt.Errorf("records not sent: %w", err))
				}
			}
			break
		}
		if err := p.sendRound(ctx, topic, round); err != nil {
			return err
		}
	}
	for _, pd := range pds {
		if pd.err != nil {
			return pd.err
		}
	}
	return nil
}

// sendRound sends the current batch of each of round's partitions, one
// request per leader, all requests at once, and settles the answers.
func (p *producer) sendRound(ctx context.Context, topic string, round []*pending) error {
	if slices.ContainsFunc(round, func(pd *pending) bool { return pd.batch == nil }) {
		if err := p.number(ctx, round); err != nil {
			return err
		}
	}
	byLeader := map[*sarama.Broker][]*pending{}
	var retry []*pending
	for _, pd := range round {
		b, err := p.client.Leader(topic, pd.p)
		if err != nil {
			pd.fail(p, err)
			retry = append(retry, pd)
			continue
		}
		byLeader[b] = append(byLeader[b], pd)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	for b, group := range byLeader {
		wg.Add(1)
		send := func() {
			defer wg.Done()
			req := &sarama.ProduceRequest{RequiredAcks: sarama.WaitForAll, Timeout: p.timeout, Version: p.version}
			for _, pd := range group {
				req.AddBatch(topic, pd.p, pd.batch)
			}
			resp, err := b.Produce(req)
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				// Connection trouble: the outcome is unknown; the
				// retry with the same numbers is deduplicated.
				_ = b.Close()
				for _, pd := range group {
					pd.maybe = true
					pd.fail(p, err)
					retry = append(retry, pd)
				}
				return
			}
			for _, pd := range group {
				blk := resp.GetBlock(topic, pd.p)
				if blk == nil {
					pd.maybe = true
					pd.fail(p, sarama.ErrIncompleteResponse)
					retry = append(retry, pd)
					continue
				}
				kerr := blk.Err
				switch {
				case kerr == sarama.ErrNoError || kerr == sarama.ErrDuplicateSequenceNumber:
					pd.ack()
				case producerStateLost(kerr):
					// The broker lost this partition's state of
					// the batch's producer ID: the only case that
					// renumbers a batch (under a new ID).
					p.reset(pd.gen)
					pd.batch = nil
					pd.fail(p, kerr)
					retry = append(retry, pd)
				case retriable(kerr):
					if !refusedUnwritten(kerr) {
						pd.maybe = true
					}
					pd.fail(p, kerr)
					retry = append(retry, pd)
				default:
					if !refusedUnwritten(kerr) {
						pd.maybe = true
					}
					pd.giveUp(p, kerr)
				}
			}
		}
		if len(byLeader) == 1 {
			send() // one leader: no goroutine needed
		} else {
			go send()
		}
	}
	wg.Wait()
	retry = slices.DeleteFunc(retry, func(pd *pending) bool { return pd.err != nil })
	if len(retry) == 0 {
		return nil
	}
	if ctx.Err() != nil {
		// The caller has given up (its ctx, PublishTimeout): stop
		// holding the partitions.
		for _, pd := range retry {
			pd.giveUp(p, pd.last)
		}
		return nil
	}
	select {
	case <-ctx.Done():
		for _, pd := range retry {
			pd.giveUp(p, pd.last)
		}
		return nil
	case <-p.done:
		for _, pd := range retry {
			if pd.err == nil {
				pd.giveUp(p, sarama.ErrShuttingDown)
			}
		}
		return nil
	case <-time.After(p.backoff):
	}
	if err := p.client.RefreshMetadata(topic); err != nil && errors.Is(err, sarama.ErrClosedClient) {
		return err
	}
	return nil
}

// number builds a batch for each partition of round without one, under
// the current producer ID. A partition with a batch keeps it, numbers
// and producer ID included, even when the producer has taken a new ID
// since: the batch may have been written by an attempt whose answer was
// lost, and only its own numbers let the broker drop the duplicate.
func (p *producer) number(ctx context.Context, round []*pending) error {
	pid, epoch, gen, err := p.identity()
	for try := 0; err != nil; try++ {
		// No producer ID (brokers unreachable): wait like a failed
		// request would, within the retry budget.
		if try >= p.retries || ctx.Err() != nil {
			return fmt.Errorf("producer ID: %w", err)
		}
		select {
		case <-p.done:
			return sarama.ErrShuttingDown
		case <-ctx.Done():
			return fmt.Errorf("producer ID: %w", err)
		case <-time.After(p.backoff):
		}
		pid, epoch, gen, err = p.identity()
	}
	for _, pd := range round {
		if pd.batch != nil {
			continue // a retry: same producer ID, same numbers
		}
		if pd.ps.gen != gen {
			// The partition's first batch under this ID.
			pd.ps.gen, pd.ps.seq = gen, 0
		}
		pd.buildBatch(p, pid, epoch, gen)
	}
	return nil
}

// buildBatch numbers pd's next records (up to maxBatch bytes, at least
// one) under pid and makes their record batch.
func (pd *pending) buildBatch(p *producer, pid int64, epoch int16, gen uint64) {
	size := batchOverhead
	end := pd.next
	for end < len(pd.recs) && (end == pd.next || size+pd.recs[end].size <= p.maxBatch) {
		size += pd.recs[end].size
		end++
	}
	rs := make([]*sarama.Record, 0, end-pd.next)
	for i, r := range pd.recs[pd.next:end] {
		r.r.OffsetDelta = int64(i)
		rs = append(rs, r.r)
	}
	now := time.Now()
	pd.batch = &sarama.RecordBatch{
		Version:          2,
		Codec:            p.codec,
		CompressionLevel: p.level,
		FirstTimestamp:   now,
		MaxTimestamp:     now,
		LastOffsetDelta:  int32(len(rs) - 1),
		ProducerID:       pid,
		ProducerEpoch:    epoch,
		FirstSequence:    pd.ps.seq,
		Records:          rs,
	}
	pd.n, pd.gen, pd.maybe = len(rs), gen, false
}

// ack counts pd's batch as written.
func (pd *pending) ack() {
	if pd.ps.gen == pd.gen {
		pd.ps.seq = nextSeq(pd.ps.seq, pd.n)
	}
	pd.next += pd.n
	pd.batch = nil
	pd.maybe = false
	pd.tries = 0
}

// fail counts a retriable failure of pd's batch; past the retry limit it
// is final (giveUp).
func (pd *pending) fail(p *producer, err error) {
	pd.last = err
	pd.tries++
	if pd.tries > p.retries {
		pd.giveUp(p, err)
	}
}

// giveUp ends pd with err. When the broker may have accepted its batch's
// numbers (an attempt's outcome is unknown), they can be neither reused
// nor skipped safely: the producer ID is dropped and the next batch starts
// a new one at 0. A batch only ever refused before being written (or
// never sent) leaves the ID and the partition's sequence as they were: the
// broker expects the same numbers next.
func (pd *pending) giveUp(p *producer, err error) {
	pd.err = err
	if pd.batch != nil && pd.maybe {
		p.reset(pd.gen)
	}
	pd.batch = nil
	pd.maybe = false
}

// nextSeq is seq advanced by n: Kafka's sequence numbers wrap from
// MaxInt32 to 0.
func nextSeq(seq int32, n int) int32 {
	return int32((int64(seq) + int64(n)) % (math.MaxInt32 + 1))
}

// producerStateLost reports answers after which the producer needs a new
// producer ID.
func producerStateLost(err sarama.KError) bool {
	switch err {
	case sarama.ErrUnknownProducerID, sarama.ErrOutOfOrderSequenceNumber, sarama.ErrInvalidProducerEpoch,
		sarama.ErrInvalidProducerIDMapping, sarama.ErrProducerFenced:
		return true
	}
	return false
}

// refusedUnwritten reports answers a broker gives before it appends
// anything of the batch: the batch's numbers were not accepted. Any other
// failure (REQUEST_TIMED_OUT, NOT_ENOUGH_REPLICAS_AFTER_APPEND, an
// unknown error, a lost connection) may come after the batch was written.
func refusedUnwritten(err sarama.KError) bool {
	switch err {
	case sarama.ErrMessageSizeTooLarge, sarama.ErrMessageSetSizeTooLarge, sarama.ErrInvalidRecord,
		sarama.ErrInvalidMessage, sarama.ErrInvalidTimestamp, sarama.ErrInvalidTopic, sarama.ErrInvalidRequiredAcks,
		sarama.ErrUnsupportedForMessageFormat, sarama.ErrUnsupportedCompressionType,
		sarama.ErrTopicAuthorizationFailed, sarama.ErrClusterAuthorizationFailed,
		sarama.ErrUnknownTopicOrPartition, sarama.ErrLeaderNotAvailable, sarama.ErrNotLeaderForPartition,
		sarama.ErrNotEnoughReplicas, sarama.ErrFencedLeaderEpoch, sarama.ErrUnknownLeaderEpoch:
		return true
	}
	return false
}

// retriable reports answers that may succeed when the batch is sent again
// (to the same or a new leader).
func retriable(err sarama.KError) bool {
	switch err {
	case sarama.ErrUnknownTopicOrPartition, sarama.ErrLeaderNotAvailable, sarama.ErrNotLeaderForPartition,
		sarama.ErrRequestTimedOut, sarama.ErrReplicaNotAvailable, sarama.ErrNetworkException,
		sarama.ErrNotEnoughReplicas, sarama.ErrNotEnoughReplicasAfterAppend, sarama.ErrKafkaStorageError,
		sarama.ErrFencedLeaderEpoch, sarama.ErrUnknownLeaderEpoch,
		sarama.ErrThrottlingQuotaExceeded, sarama.ErrInvalidMessage:
		return true
	}
	return false
}
