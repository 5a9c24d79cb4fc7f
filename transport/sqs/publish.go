package sqstransport

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	snstypes "github.com/aws/aws-sdk-go-v2/service/sns/types"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// maxBatch is the most entries of one SendMessageBatch or PublishBatch.
const maxBatch = 10

// EntryError is one message a Publish call did not send.
type EntryError struct {
	Index       int    // position in the Publish call
	MessageID   string // Message.ID
	Code        string // the service's error code, when it sent one
	Message     string // the service's error message
	SenderFault bool   // the service blamed the request, not itself
	Err         error  // the request's error when the whole call failed
}

// PublishError reports the messages of a Publish call that were not sent
// after PublishAttempts; every message not listed was sent. errors.As
// reaches the SDK's errors of failed calls.
type PublishError struct {
	Topic  string
	Total  int
	Failed []EntryError
}

func (e *PublishError) Error() string {
	f := e.Failed[0]
	why := f.Code + ": " + f.Message
	if f.Err != nil {
		why = f.Err.Error()
	}
	return fmt.Sprintf("sqstransport: publish to %s: %d of %d messages not sent; message %d (id %q): %s", e.Topic, len(e.Failed), e.Total, f.Index, f.MessageID, why)
}

// Unwrap returns the errors of whole failed calls.
func (e *PublishError) Unwrap() []error {
	var errs []error
	for _, f := range e.Failed {
		if f.Err != nil {
			errs = append(errs, f.Err)
		}
	}
	return errs
}

// Publish sends msgs to topic (an SNS topic in ModeSNS, an SQS queue in
// ModeSQS) in batches of up to 10 and returns once AWS accepted every one,
// or with a *PublishError listing those it did not accept. Messages over
// SQS's limits fail the whole call before anything is sent.
func (t *Transport) Publish(ctx context.Context, topic string, msgs ...*message.Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if t.isClosed() {
		return transport.ErrClosed
	}
	return t.publish(ctx, topic, msgs)
}

// publishOne is the dead-letter path's publish; it works during shutdown.
func (t *Transport) publishOne(ctx context.Context, topic string, m *message.Message) error {
	return t.publish(ctx, topic, []*message.Message{m})
}

type entry struct {
	idx int
	m   *message.Message
	w   wire
}

func (t *Transport) publish(ctx context.Context, topic string, msgs []*message.Message) error {
	if err := transport.PreparePublish(topic, msgs, t.Capabilities().Limits); err != nil {
		return err
	}
	if err := t.checkNames(topic, "", ""); err != nil {
		return err
	}
	if len(msgs) == 0 {
		return nil
	}
	// Encoded in place: the requests point into entries.
	entries := make([]entry, len(msgs))
	for i, m := range msgs {
		e := &entries[i]
		e.idx, e.m = i, m
		if err := encode(m, &e.w); err != nil {
			return err
		}
		if err := checkWire(i, m, &e.w); err != nil {
			return err
		}
	}
	var send func(context.Context, []entry) ([]EntryError, error)
	if t.o.Mode == ModeSNS {
		arn, err := t.topicARN(ctx, topic)
		if err != nil {
			return err
		}
		send = func(ctx context.Context, es []entry) ([]EntryError, error) { return t.sendSNS(ctx, arn, es) }
	} else {
		qu, err := t.topicQueueURL(ctx, topic)
		if err != nil {
			return err
		}
		send = func(ctx context.Context, es []entry) ([]EntryError, error) { return t.sendSQS(ctx, qu, es) }
	}
	// Batches of at most 10 entries and 256 KiB: runs of entries, in order.
	per := maxBatch
	if t.o.Goaws && t.o.Mode == ModeSNS {
		per = maxBatch - 1 // see Options.Goaws
	}
	if len(entries) <= per && totalSize(entries) <= maxWireBytes {
		// One request, the common case: no goroutine, no bookkeeping.
		failed, err := t.sendWithRetry(ctx, entries, send)
		if err != nil {
			return err
		}
		if len(failed) > 0 {
			sortEntries(failed)
			return &PublishError{Topic: topic, Total: len(msgs), Failed: failed}
		}
		return nil
	}
	batches := make([][]entry, 0, (len(entries)+per-1)/per)
	start, size := 0, 0
	for i := range entries {
		if n := i - start; n == per || n > 0 && size+entries[i].w.size > maxWireBytes {
			batches = append(batches, entries[start:i:i])
			start, size = i, 0
		}
		size += entries[i].w.size
	}
	batches = append(batches, entries[start:])

	var (
		mu     sync.Mutex
		failed []EntryError
		ctxErr error
	)
	run := func(b []entry) {
		f, err := t.sendWithRetry(ctx, b, send)
		mu.Lock()
		defer mu.Unlock()
		if err != nil && ctxErr == nil {
			ctxErr = err
		}
		failed = append(failed, f...)
	}
	if t.o.FIFO {
		for k, b := range batches {
			run(b)
			if ctxErr != nil || len(failed) > 0 {
				// FIFO: nothing after a failed batch is sent.
				for _, later := range batches[k+1:] {
					for _, e := range later {
						failed = append(failed, EntryError{Index: e.idx, MessageID: e.m.ID, Code: "NotSent", Message: "an earlier message of this FIFO publish failed"})
					}
				}
				break
			}
		}
	} else {
		sem := make(chan struct{}, t.o.PublishConcurrency)
		var wg sync.WaitGroup
		for _, b := range batches {
			sem <- struct{}{}
			wg.Add(1)
			go func() {
				defer func() { <-sem; wg.Done() }()
				run(b)
			}()
		}
		wg.Wait()
	}
	if ctxErr != nil {
		return ctxErr
	}
	if len(failed) > 0 {
		sortEntries(failed)
		return &PublishError{Topic: topic, Total: len(msgs), Failed: failed}
	}
	return nil
}

func totalSize(es []entry) int {
	n := 0
	for i := range es {
		n += es[i].w.size
	}
	return n
}

// topicQueueURL is the URL of a topic's queue in ModeSQS, created (with
// the redrive policy, when configured) the first time; later calls read
// the cache without building the queue's attributes again.
func (t *Transport) topicQueueURL(ctx context.Context, topic string) (string, error) {
	qn := t.queueName(topic, "")
	t.nameMu.Lock()
	u, ok := t.queues[qn]
	t.nameMu.Unlock()
	if ok {
		return u, nil
	}
	attrs, err := t.queueAttrs(ctx, qn)
	if err != nil {
		return "", err
	}
	return t.queueURL(ctx, qn, true, attrs)
}

func sortEntries(f []EntryError) {
	slices.SortFunc(f, func(a, b EntryError) int { return a.Index - b.Index })
}

// sendWithRetry sends one batch, sending again the entries that failed on
// the service's side, up to PublishAttempts times. It returns the entries
// finally not sent, or ctx's error.
func (t *Transport) sendWithRetry(ctx context.Context, b []entry, send func(context.Context, []entry) ([]EntryError, error)) ([]EntryError, error) {
	backoff := 50 * time.Millisecond
	var final []EntryError
	for attempt := 1; ; attempt++ {
		failed, err := send(ctx, b)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			// The SDK already retried the call; report every entry.
			for _, e := range b {
				final = append(final, EntryError{Index: e.idx, MessageID: e.m.ID, Err: err})
			}
			return final, nil
		}
		var retry []entry
		for _, f := range failed {
			if f.SenderFault || attempt >= t.o.PublishAttempts {
				final = append(final, f)
				continue
			}
			for _, e := range b {
				if e.idx == f.Index {
					retry = append(retry, e)
				}
			}
		}
		if len(retry) == 0 {
			return final, nil
		}
		b = retry
		timer := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			timer.Stop()
			return nil, ctx.Err()
		case <-timer.C:
		}
		backoff *= 2
	}
}

func fifoIDs(m *message.Message) (group, dedup *string) {
	g := m.Key
	if g == "" {
		g = m.ID // unordered: every message its own group
	}
	return aws.String(fifoToken(g)), aws.String(fifoToken(m.ID))
}

// entryIDs are the batch entry IDs "0" to "9", shared by every request
// (the SDK only reads them).
var entryIDs = func() (ids [maxBatch]string) {
	for i := range ids {
		ids[i] = strconv.Itoa(i)
	}
	return ids
}()

func (t *Transport) sendSQS(ctx context.Context, qu string, b []entry) ([]EntryError, error) {
	in := &sqs.SendMessageBatchInput{QueueUrl: &qu, Entries: make([]sqstypes.SendMessageBatchRequestEntry, len(b))}
	for i := range b {
		e := &b[i]
		re := &in.Entries[i]
		re.Id, re.MessageBody, re.MessageAttributes = &entryIDs[i], &e.w.body, e.w.sqsAttrs()
		if t.o.FIFO {
			re.MessageGroupId, re.MessageDeduplicationId = fifoIDs(e.m)
		}
	}
	out, err := t.sqs.SendMessageBatch(ctx, in)
	if err != nil {
		return nil, fmt.Errorf("sqstransport: SendMessageBatch: %w", t.scrub(err))
	}
	return t.batchFailures(b, len(out.Successful), func(yield func(id, code, msg string, sender bool)) {
		for _, f := range out.Failed {
			yield(deref(f.Id), deref(f.Code), deref(f.Message), f.SenderFault)
		}
	})
}

func (t *Transport) sendSNS(ctx context.Context, arn string, b []entry) ([]EntryError, error) {
	in := &sns.PublishBatchInput{TopicArn: &arn, PublishBatchRequestEntries: make([]snstypes.PublishBatchRequestEntry, len(b))}
	for i := range b {
		e := &b[i]
		re := &in.PublishBatchRequestEntries[i]
		re.Id, re.Message, re.MessageAttributes = &entryIDs[i], &e.w.body, e.w.snsAttrs()
		if t.o.FIFO {
			re.MessageGroupId, re.MessageDeduplicationId = fifoIDs(e.m)
		}
	}
	out, err := t.sns.PublishBatch(ctx, in)
	if err != nil {
		return nil, fmt.Errorf("sqstransport: PublishBatch: %w", t.scrub(err))
	}
	return t.batchFailures(b, len(out.Successful), func(yield func(id, code, msg string, sender bool)) {
		for _, f := range out.Failed {
			yield(deref(f.Id), deref(f.Code), deref(f.Message), f.SenderFault)
		}
	})
}

// batchFailures maps a batch response's failed entries back to messages.
// An entry the response lists neither as successful nor as failed counts as
// failed: it is never reported as sent.
func (t *Transport) batchFailures(b []entry, nOK int, failed func(func(id, code, msg string, sender bool))) ([]EntryError, error) {
	var out []EntryError
	seen := 0
	failed(func(id, code, msg string, sender bool) {
		seen++
		i, err := strconv.Atoi(id)
		if err != nil || i < 0 || i >= len(b) {
			return
		}
		out = append(out, EntryError{Index: b[i].idx, MessageID: b[i].m.ID, Code: code, Message: msg, SenderFault: sender})
	})
	if nOK+seen == 0 && t.o.Goaws {
		return nil, nil // goaws lists no entries; see Options.Goaws
	}
	if nOK+seen < len(b) {
		return nil, errors.New("sqstransport: batch response accounts for fewer entries than were sent")
	}
	return out, nil
}
