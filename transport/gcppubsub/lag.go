package gcppubsubtransport

import (
	"context"
	"errors"
	"fmt"

	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"github.com/googleapis/gax-go/v2"
	"google.golang.org/api/iterator"

	"github.com/courierkit/courier/transport"
)

var (
	_ transport.LagReporter = (*Transport)(nil)
	_ transport.Pinger      = (*Transport)(nil)
)

// Lag always fails with an error matching transport.ErrUnsupported (after
// Close: transport.ErrClosed; an invalid name: *transport.NameError).
// Pub/Sub's data and admin APIs have no backlog count: a subscription's
// undelivered messages and the age of its oldest one exist only as Cloud
// Monitoring metrics (pubsub.googleapis.com/subscription/
// num_undelivered_messages and oldest_unacked_message_age, sampled every
// minute), which need the Monitoring API and its own credentials and
// quota; this transport does not query them. The error names the
// subscription resource to look up there. Lag makes no round trip.
func (t *Transport) Lag(ctx context.Context, topic, group string) (transport.Lag, error) {
	if err := ctx.Err(); err != nil {
		return transport.Lag{}, err
	}
	if err := t.enter(); err != nil {
		return transport.Lag{}, err
	}
	defer t.ops.Done()
	if group == "" {
		return transport.Lag{}, errors.New("gcppubsubtransport: Lag needs a group (a subscription without one is private and deleted with it)")
	}
	if err := t.checkSubscribe(topic, transport.SubscribeOptions{Group: group}); err != nil {
		return transport.Lag{}, err
	}
	return transport.Lag{}, fmt.Errorf("%w: gcppubsubtransport: Pub/Sub reports a subscription's backlog only as the Cloud Monitoring metric pubsub.googleapis.com/subscription/num_undelivered_messages (subscription %s)",
		transport.ErrUnsupported, t.subPath(subscriptionID(topic, group)))
}

// Ping checks that Pub/Sub answers with one admin round trip: ListTopics
// of the project with a page size of 1 (IAM: pubsub.topics.list, in
// roles/pubsub.viewer and roles/pubsub.editor). It returns nil when the
// project's topics could be listed (none is fine), ctx.Err() when ctx
// ends first, transport.ErrClosed after Close or Shutdown (also when
// Close interrupts it), else the gRPC error wrapped (status.Code works on
// it: PermissionDenied, Unavailable...). It does not retry: an unreachable
// Pub/Sub fails the first attempt (Unavailable) rather than the whole ctx.
func (t *Transport) Ping(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := t.enter(); err != nil {
		return err
	}
	defer t.ops.Done()
	pctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(t.hard, cancel)
	defer stop()
	// No retries: a health check reports an unreachable broker at once
	// (the client library would retry Unavailable until ctx ends).
	noRetry := gax.WithRetry(func() gax.Retryer { return nil })
	it := t.client.TopicAdminClient.ListTopics(pctx, &pubsubpb.ListTopicsRequest{Project: "projects/" + t.opts.Project, PageSize: 1}, noRetry)
	_, err := it.Next()
	if err == nil || errors.Is(err, iterator.Done) {
		return nil
	}
	if ctx.Err() == nil && t.hard.Err() != nil {
		return transport.ErrClosed
	}
	return t.wrap(ctx, "ping (ListTopics of projects/"+t.opts.Project+")", err)
}
