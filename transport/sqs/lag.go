package sqstransport

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/aws/smithy-go"

	"github.com/courierkit/courier/transport"
)

// ErrNoQueue is matched (errors.Is) by Lag's error when the queue of the
// topic or group does not exist; the SDK's error stays reachable with
// errors.As (*types.QueueDoesNotExist on AWS).
var ErrNoQueue = errors.New("sqstransport: queue does not exist")

var (
	_ transport.LagReporter = (*Transport)(nil)
	_ transport.Pinger      = (*Transport)(nil)
)

// Lag reports the backlog of a group's queue from its approximate counts
// (GetQueueAttributes): Pending is ApproximateNumberOfMessages plus
// ApproximateNumberOfMessagesDelayed, InFlight is
// ApproximateNumberOfMessagesNotVisible. In ModeSNS the queue is the
// group's ("<topic>-<group>", so group is required); in ModeSQS every
// group shares the topic's queue and group is only echoed back (it may
// be empty). A queue that does not exist is an error matching ErrNoQueue.
// Lag never creates anything. SQS's counts are approximate (eventually
// consistent, typically within a minute); see the package doc for goaws.
func (t *Transport) Lag(ctx context.Context, topic, group string) (transport.Lag, error) {
	if err := ctx.Err(); err != nil {
		return transport.Lag{}, err
	}
	if t.isClosed() {
		return transport.Lag{}, transport.ErrClosed
	}
	if t.o.Mode == ModeSNS && group == "" {
		return transport.Lag{}, errors.New("sqstransport: Lag needs a group in ModeSNS (a subscription without one reads a private queue that is deleted with it)")
	}
	if err := t.checkNames(topic, group, ""); err != nil {
		return transport.Lag{}, err
	}
	qn := t.queueName(topic, group)
	// Not the URL cache: a queue deleted since it was cached must be
	// reported as missing, and goaws answers GetQueueAttributes on a
	// deleted URL with a generic error.
	uo, err := t.sqs.GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: aws.String(qn)})
	if err != nil {
		return transport.Lag{}, t.lagErr(ctx, topic, group, qn, err)
	}
	out, err := t.sqs.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{
		QueueUrl: uo.QueueUrl,
		AttributeNames: []sqstypes.QueueAttributeName{
			sqstypes.QueueAttributeNameApproximateNumberOfMessages,
			sqstypes.QueueAttributeNameApproximateNumberOfMessagesDelayed,
			sqstypes.QueueAttributeNameApproximateNumberOfMessagesNotVisible,
		},
	})
	if err != nil {
		return transport.Lag{}, t.lagErr(ctx, topic, group, qn, err)
	}
	count := func(a sqstypes.QueueAttributeName) (int64, bool, error) {
		v, ok := out.Attributes[string(a)]
		if !ok {
			return 0, false, nil
		}
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, true, fmt.Errorf("sqstransport: queue %s: attribute %s=%q is not a count", qn, a, v)
		}
		return n, true, nil
	}
	visible, ok, err := count(sqstypes.QueueAttributeNameApproximateNumberOfMessages)
	if err != nil {
		return transport.Lag{}, err
	}
	if !ok {
		return transport.Lag{}, fmt.Errorf("sqstransport: queue %s: GetQueueAttributes returned no ApproximateNumberOfMessages", qn)
	}
	delayed, _, err := count(sqstypes.QueueAttributeNameApproximateNumberOfMessagesDelayed)
	if err != nil {
		return transport.Lag{}, err
	}
	inflight, ok, err := count(sqstypes.QueueAttributeNameApproximateNumberOfMessagesNotVisible)
	if err != nil {
		return transport.Lag{}, err
	}
	if !ok {
		inflight = -1
	}
	pending := visible + delayed
	if t.o.Goaws && inflight >= 0 {
		// goaws counts every stored message in ApproximateNumberOfMessages
		// (in-flight and delayed ones too), does not report
		// ApproximateNumberOfMessagesDelayed and counts delayed messages
		// as not visible: take the not-visible ones out of the total.
		pending = max(0, visible-inflight)
	}
	return transport.Lag{Topic: topic, Group: group, Pending: pending, InFlight: inflight}, nil
}

func (t *Transport) lagErr(ctx context.Context, topic, group, queue string, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if isNoQueue(err) {
		return fmt.Errorf("%w: %s (the queue of group %q on topic %q; Declare or Subscribe creates it): %w", ErrNoQueue, queue, group, topic, t.scrub(err))
	}
	return fmt.Errorf("sqstransport: lag of queue %s: %w", queue, t.scrub(err))
}

// isNoQueue tells a missing queue: types.QueueDoesNotExist, or the
// query-protocol code AWS and emulators (goaws) still send.
func isNoQueue(err error) bool {
	var gone *sqstypes.QueueDoesNotExist
	if errors.As(err, &gone) {
		return true
	}
	var ae smithy.APIError
	if errors.As(err, &ae) {
		c := ae.ErrorCode()
		return strings.Contains(c, "NonExistentQueue") || strings.Contains(c, "QueueDoesNotExist") || c == "QueueNotFound"
	}
	return false
}

// Ping checks that the service answers: a ListQueues of at most one queue
// (IAM: sqs:ListQueues) and, in ModeSNS, a ListTopics (sns:ListTopics).
// It returns transport.ErrClosed after Close or Shutdown and ctx.Err()
// when ctx ends first.
func (t *Transport) Ping(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if t.isClosed() {
		return transport.ErrClosed
	}
	if _, err := t.sqs.ListQueues(ctx, &sqs.ListQueuesInput{MaxResults: aws.Int32(1)}); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("sqstransport: ping SQS (ListQueues): %w", t.scrub(err))
	}
	if t.o.Mode == ModeSNS {
		if _, err := t.sns.ListTopics(ctx, &sns.ListTopicsInput{}); err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("sqstransport: ping SNS (ListTopics): %w", t.scrub(err))
		}
	}
	if t.isClosed() {
		return transport.ErrClosed
	}
	return nil
}
