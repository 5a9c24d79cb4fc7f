package gcppubsubtransport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"cloud.google.com/go/pubsub/v2"
	vkit "cloud.google.com/go/pubsub/v2/apiv1"
	"cloud.google.com/go/pubsub/v2/apiv1/pubsubpb"
	"google.golang.org/api/option"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

var (
	// ErrNotExist is matched by errors for a topic or subscription that
	// does not exist while Options.DisableCreate forbids creating it.
	ErrNotExist = errors.New("gcppubsubtransport: does not exist")
	// ErrConflict is matched by errors for a subscription that exists with
	// settings that contradict the ones asked for (another topic, no
	// message ordering, another dead-letter policy).
	ErrConflict = errors.New("gcppubsubtransport: subscription exists with conflicting settings")
)

// Transport is a connection to Google Cloud Pub/Sub. It implements
// transport.Conn; see the package doc.
type Transport struct {
	opts   Options
	client *pubsub.Client
	log    *slog.Logger
	caps   transport.Capabilities

	hard     context.Context // ends on Close, or when Shutdown runs out of time
	hardStop context.CancelFunc

	mu       sync.Mutex
	closed   bool
	pubs     map[string]*pubsub.Publisher
	topics   map[string]bool // known to exist
	subs     map[*subscription]struct{}
	ops      sync.WaitGroup // running Publish, Declare and Subscribe calls
	finished chan struct{}  // closed once the client is closed
	finishMu sync.Mutex
	finErr   error
	finDone  bool
}

// New connects to Pub/Sub in opts.Project. It does not check that the
// project exists: the first call that touches the broker does.
func New(ctx context.Context, opts Options) (*Transport, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	opts = opts.withDefaults()
	if err := opts.validate(); err != nil {
		return nil, err
	}
	var co []option.ClientOption
	switch {
	case opts.Emulator != "":
		co = append(co,
			option.WithEndpoint(opts.Emulator),
			option.WithoutAuthentication(),
			option.WithGRPCDialOption(grpc.WithTransportCredentials(insecure.NewCredentials())),
			option.WithTelemetryDisabled(),
		)
	case opts.Endpoint != "":
		co = append(co, option.WithEndpoint(opts.Endpoint))
	}
	co = append(co, opts.ClientOptions...)
	client, err := pubsub.NewClient(ctx, opts.Project, co...)
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return nil, cerr
		}
		return nil, fmt.Errorf("gcppubsubtransport: connect to project %q: %w", opts.Project, err)
	}
	t := &Transport{
		opts:     opts,
		client:   client,
		log:      opts.Logger,
		pubs:     map[string]*pubsub.Publisher{},
		topics:   map[string]bool{},
		subs:     map[*subscription]struct{}{},
		finished: make(chan struct{}),
	}
	if t.log == nil {
		t.log = slog.New(slog.DiscardHandler)
	}
	t.hard, t.hardStop = context.WithCancel(context.Background())
	t.caps = transport.Capabilities{
		Persistent:     true,
		Redelivery:     true,
		DelayedNack:    true,
		AttemptCount:   opts.DeadLetterTopic != "",
		OrderedByKey:   true,
		DeadLetter:     true,
		Replay:         false,
		BrokerTime:     true,
		LeaseExtension: true,
		Limits:         limits,
	}
	return t, nil
}

// Capabilities reports what Pub/Sub does through this transport; see the
// package doc for why Replay is false and when AttemptCount is true.
func (t *Transport) Capabilities() transport.Capabilities { return t.caps }

// As sets target to a native client: *(*pubsub.Client),
// *(*apiv1.TopicAdminClient) or *(*apiv1.SubscriptionAdminClient).
func (t *Transport) As(target any) bool {
	switch p := target.(type) {
	case **pubsub.Client:
		*p = t.client
	case **vkit.TopicAdminClient:
		*p = t.client.TopicAdminClient
	case **vkit.SubscriptionAdminClient:
		*p = t.client.SubscriptionAdminClient
	default:
		return false
	}
	return true
}

// enter registers a call; it fails once the transport is closing.
func (t *Transport) enter() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return transport.ErrClosed
	}
	t.ops.Add(1)
	return nil
}

func (t *Transport) topicPath(topic string) string {
	return "projects/" + t.opts.Project + "/topics/" + topic
}

func (t *Transport) subPath(sub string) string {
	return "projects/" + t.opts.Project + "/subscriptions/" + sub
}

// Publisher returns the client library's publisher this transport uses for
// topic (created on first use, with message ordering enabled and the
// Options' batching settings). It stays owned by the transport: do not
// Stop it. Nil after Close.
func (t *Transport) Publisher(topic string) *pubsub.Publisher {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	return t.publisherLocked(topic)
}

func (t *Transport) publisherLocked(topic string) *pubsub.Publisher {
	if p := t.pubs[topic]; p != nil {
		return p
	}
	p := t.client.Publisher(t.topicPath(topic))
	p.EnableMessageOrdering = true
	s := &p.PublishSettings
	if t.opts.PublishDelay > 0 {
		s.DelayThreshold = t.opts.PublishDelay
	}
	if t.opts.PublishCount > 0 {
		s.CountThreshold = t.opts.PublishCount
	}
	if t.opts.PublishBytes > 0 {
		s.ByteThreshold = t.opts.PublishBytes
	}
	if t.opts.PublishTimeout > 0 {
		s.Timeout = t.opts.PublishTimeout
	}
	t.pubs[topic] = p
	return p
}

// ensureTopic makes sure topic exists, creating it unless DisableCreate.
func (t *Transport) ensureTopic(ctx context.Context, topic string) error {
	t.mu.Lock()
	known := t.topics[topic]
	t.mu.Unlock()
	if known {
		return nil
	}
	path := t.topicPath(topic)
	var err error
	if t.opts.DisableCreate {
		_, err = t.client.TopicAdminClient.GetTopic(ctx, &pubsubpb.GetTopicRequest{Topic: path})
		if status.Code(err) == codes.NotFound {
			return fmt.Errorf("%w: topic %s (create=false): %w", ErrNotExist, path, err)
		}
	} else {
		_, err = t.client.TopicAdminClient.CreateTopic(ctx, &pubsubpb.Topic{Name: path})
		if status.Code(err) == codes.AlreadyExists {
			err = nil
		}
	}
	if err != nil {
		return t.wrap(ctx, "topic "+path, err)
	}
	t.mu.Lock()
	t.topics[topic] = true
	t.mu.Unlock()
	return nil
}

// wrap returns ctx's error unwrapped when ctx ended, else err with context.
func (t *Transport) wrap(ctx context.Context, what string, err error) error {
	if cerr := ctx.Err(); cerr != nil {
		return cerr
	}
	if status.Code(err) == codes.Canceled && t.hard.Err() != nil {
		return transport.ErrClosed
	}
	return fmt.Errorf("gcppubsubtransport: %s: %w", what, err)
}

// Publish sends msgs to topic in batches and returns once Pub/Sub has
// stored every one of them (each has a server message ID), or with the
// errors of those that failed. Messages with a Key carry it as their
// ordering key; a failed ordered publish resumes the key before Publish
// returns, so the next call can publish it again.
func (t *Transport) Publish(ctx context.Context, topic string, msgs ...*message.Message) error {
	if err := t.enter(); err != nil {
		return err
	}
	defer t.ops.Done()
	return t.publish(ctx, topic, msgs)
}

func (t *Transport) publish(ctx context.Context, topic string, msgs []*message.Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := transport.PreparePublish(topic, msgs, limits); err != nil {
		return err
	}
	if err := checkResource("topic", topic); err != nil {
		return err
	}
	// The request holds the topic name once; each message must fit beside it.
	room := maxRequestBytes - len(t.topicPath(topic)) - 16
	pms := make([]*pubsub.Message, len(msgs))
	for i, m := range msgs {
		if err := checkAttributes(i, m); err != nil {
			return err
		}
		attrs := make(map[string]string, len(m.Headers)+1)
		for k, v := range m.Headers {
			attrs[k] = v
		}
		attrs[idAttr] = m.ID
		// Copy the payload: when ctx ends, Publish returns while the client
		// may still be sending, and the caller may reuse its buffer.
		pm := &pubsub.Message{Data: append([]byte(nil), m.Payload...), Attributes: attrs, OrderingKey: m.Key}
		// Encoding adds at most 10 bytes per attribute and 16 for data and
		// key; measure exactly only when that bound does not fit.
		if transport.Size(m)+10*len(attrs)+16 > room {
			if n := proto.Size(&pubsubpb.PubsubMessage{Data: pm.Data, Attributes: attrs, OrderingKey: pm.OrderingKey}); n > room {
				return &transport.LimitError{Index: i, MessageID: m.ID, What: "encoded message", Size: n, Limit: room}
			}
		}
		pms[i] = pm
	}
	if len(msgs) == 0 {
		return nil
	}
	if err := t.ensureTopic(ctx, topic); err != nil {
		return err
	}
	t.mu.Lock()
	if t.closed && t.hard.Err() != nil {
		t.mu.Unlock()
		return transport.ErrClosed
	}
	p := t.publisherLocked(topic)
	t.mu.Unlock()

	// Wait on ctx and on Close.
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stop := context.AfterFunc(t.hard, cancel)
	defer stop()

	results := make([]*pubsub.PublishResult, len(pms))
	for i, pm := range pms {
		results[i] = p.Publish(wctx, pm)
	}
	var errs []error
	resumed := map[string]bool{}
	for i, r := range results {
		_, err := r.Get(wctx)
		if err == nil {
			continue
		}
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		if t.hard.Err() != nil {
			return transport.ErrClosed
		}
		if k := pms[i].OrderingKey; k != "" && !resumed[k] {
			// The client pauses a key after a failure so that later
			// messages cannot overtake the failed one; the caller gets
			// the error and decides, so the key is usable again.
			resumed[k] = true
			defer p.ResumePublish(k)
		}
		errs = append(errs, fmt.Errorf("message %d (id %q): %w", i, msgs[i].ID, err))
	}
	if len(errs) > 0 {
		return fmt.Errorf("gcppubsubtransport: publish to %s: %d of %d messages failed: %w", topic, len(errs), len(msgs), errors.Join(errs...))
	}
	return nil
}

// Declare creates the topic and the group's subscription "<topic>.<group>"
// (unless Options.DisableCreate), so that messages published from now on
// are kept for the group. An existing subscription with conflicting
// settings is an error matching ErrConflict.
func (t *Transport) Declare(ctx context.Context, topic string, opts transport.SubscribeOptions) error {
	if err := t.enter(); err != nil {
		return err
	}
	defer t.ops.Done()
	if opts.Group == "" {
		return errors.New("gcppubsubtransport: Declare needs SubscribeOptions.Group")
	}
	if err := t.checkSubscribe(topic, opts); err != nil {
		return err
	}
	so := t.subscribeDefaults(opts)
	_, err := t.ensureSubscription(ctx, topic, subscriptionID(topic, opts.Group), so, false)
	return err
}

func (t *Transport) checkSubscribe(topic string, opts transport.SubscribeOptions) error {
	if err := transport.CheckSubscribe(topic, opts, limits); err != nil {
		return err
	}
	if opts.MaxAttempts > 0 && (!t.caps.AttemptCount || topic == t.opts.DeadLetterTopic) {
		// Without attempt counts MaxAttempts would never trigger and a
		// failing message would be retried for ever: say so now.
		return fmt.Errorf("%w: gcppubsubtransport: SubscribeOptions.MaxAttempts needs delivery attempts, which Pub/Sub counts only on subscriptions with a dead-letter policy: set Options.DeadLetterTopic (dead_letter_topic=...)", transport.ErrUnsupported)
	}
	if err := checkResource("topic", topic); err != nil {
		return err
	}
	if opts.DeadLetterTopic != "" {
		if err := checkResource("topic", opts.DeadLetterTopic); err != nil {
			return err
		}
	}
	return nil
}

// subscribeDefaults fills zero fields from Options, then courier's defaults.
func (t *Transport) subscribeDefaults(o transport.SubscribeOptions) transport.SubscribeOptions {
	if o.AckWait <= 0 {
		o.AckWait = t.opts.AckDeadline
	}
	if o.MaxInFlight <= 0 {
		o.MaxInFlight = t.opts.MaxOutstandingMessages
	}
	return o.Defaults()
}

func clampAck(d time.Duration) time.Duration {
	return min(max(d, minAckDeadline), maxAckDeadline)
}

// ensureSubscription creates or checks the subscription id on topic.
func (t *Transport) ensureSubscription(ctx context.Context, topic, id string, so transport.SubscribeOptions, private bool) (*pubsubpb.Subscription, error) {
	if err := t.ensureTopic(ctx, topic); err != nil {
		return nil, err
	}
	want := &pubsubpb.Subscription{
		Name:                  t.subPath(id),
		Topic:                 t.topicPath(topic),
		AckDeadlineSeconds:    int32(clampAck(so.AckWait) / time.Second),
		EnableMessageOrdering: so.OrderedByKey,
		// Durable groups never expire (Pub/Sub's default deletes a
		// subscription after 31 idle days); private ones expire after a
		// day if their deletion on exit was missed.
		ExpirationPolicy: &pubsubpb.ExpirationPolicy{},
	}
	if private {
		want.ExpirationPolicy.Ttl = durationpb.New(24 * time.Hour)
	}
	if t.opts.Retention > 0 {
		want.MessageRetentionDuration = durationpb.New(t.opts.Retention)
	}
	if t.opts.MinBackoff > 0 || t.opts.MaxBackoff > 0 {
		want.RetryPolicy = &pubsubpb.RetryPolicy{}
		if t.opts.MinBackoff > 0 {
			want.RetryPolicy.MinimumBackoff = durationpb.New(t.opts.MinBackoff)
		}
		if t.opts.MaxBackoff > 0 {
			want.RetryPolicy.MaximumBackoff = durationpb.New(t.opts.MaxBackoff)
		}
	}
	// The dead-letter topic's own subscriptions get no policy: Pub/Sub
	// would forward a failing dead letter to where it already is.
	if t.opts.DeadLetterTopic != "" && t.opts.DeadLetterTopic != topic {
		if err := t.ensureTopic(ctx, t.opts.DeadLetterTopic); err != nil {
			return nil, err
		}
		want.DeadLetterPolicy = &pubsubpb.DeadLetterPolicy{
			DeadLetterTopic:     t.topicPath(t.opts.DeadLetterTopic),
			MaxDeliveryAttempts: int32(t.opts.MaxDeliveryAttempts),
		}
	}
	sa := t.client.SubscriptionAdminClient
	if !t.opts.DisableCreate || private {
		got, err := sa.CreateSubscription(ctx, want)
		if err == nil {
			return got, nil
		}
		if status.Code(err) != codes.AlreadyExists {
			return nil, t.wrap(ctx, "create subscription "+want.Name, err)
		}
	}
	got, err := sa.GetSubscription(ctx, &pubsubpb.GetSubscriptionRequest{Subscription: want.Name})
	if err != nil {
		if status.Code(err) == codes.NotFound {
			return nil, fmt.Errorf("%w: subscription %s (create=false): %w", ErrNotExist, want.Name, err)
		}
		return nil, t.wrap(ctx, "get subscription "+want.Name, err)
	}
	return got, t.compare(want, got)
}

// compare reports settings of an existing subscription that break what
// the caller asked for.
func (t *Transport) compare(want, got *pubsubpb.Subscription) error {
	if got.GetTopic() != want.Topic {
		return fmt.Errorf("%w: %s belongs to topic %s, not %s", ErrConflict, want.Name, got.GetTopic(), want.Topic)
	}
	if want.EnableMessageOrdering && !got.GetEnableMessageOrdering() {
		return fmt.Errorf("%w: %s was created without message ordering; OrderedByKey needs it (Pub/Sub cannot turn it on later: use a new group)", ErrConflict, want.Name)
	}
	if wd := want.GetDeadLetterPolicy(); wd != nil {
		gd := got.GetDeadLetterPolicy()
		if gd.GetDeadLetterTopic() != wd.DeadLetterTopic || gd.GetMaxDeliveryAttempts() != wd.MaxDeliveryAttempts {
			return fmt.Errorf("%w: %s has dead-letter policy {topic %q, max attempts %d}, not {topic %q, max attempts %d}", ErrConflict, want.Name,
				gd.GetDeadLetterTopic(), gd.GetMaxDeliveryAttempts(), wd.DeadLetterTopic, wd.MaxDeliveryAttempts)
		}
	}
	if got.GetAckDeadlineSeconds() != want.AckDeadlineSeconds {
		t.log.Warn("gcppubsubtransport: subscription exists with another ack deadline; keeping it (leases are still extended while handlers run)",
			"subscription", want.Name, "ack_deadline_s", got.GetAckDeadlineSeconds(), "asked_s", want.AckDeadlineSeconds)
	}
	return nil
}

// Shutdown stops every subscription from pulling, lets running handlers
// finish and lands their acks, waits for running Publish calls, flushes
// the publishers and closes the client. When ctx ends first, handlers'
// contexts are cancelled, their messages are nacked, and Shutdown returns
// ctx.Err() once they have returned.
func (t *Transport) Shutdown(ctx context.Context) error {
	t.mu.Lock()
	first := !t.closed
	t.closed = true
	subs := make([]*subscription, 0, len(t.subs))
	for s := range t.subs {
		subs = append(subs, s)
	}
	t.mu.Unlock()
	if !first {
		select {
		case <-t.finished:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	for _, s := range subs {
		s.stopFetching()
	}
	done := make(chan struct{})
	go func() { t.ops.Wait(); close(done) }()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = ctx.Err()
		t.hardStop()
		<-done
	}
	t.finish()
	return err
}

// Close stops now: subscriptions stop pulling, handlers' contexts are
// cancelled and their messages nacked, waiting Publish calls return
// ErrClosed; Close returns when all of that is done and the client is
// closed. It is idempotent and safe for concurrent use.
func (t *Transport) Close() error {
	t.mu.Lock()
	first := !t.closed
	t.closed = true
	t.mu.Unlock()
	t.hardStop()
	if !first {
		<-t.finished
		return nil
	}
	t.ops.Wait()
	return t.finish()
}

func (t *Transport) finish() error {
	t.finishMu.Lock()
	defer t.finishMu.Unlock()
	if t.finDone {
		return t.finErr
	}
	t.finDone = true
	t.mu.Lock()
	pubs := t.pubs
	t.pubs = map[string]*pubsub.Publisher{}
	t.mu.Unlock()
	var wg sync.WaitGroup
	for _, p := range pubs {
		wg.Go(p.Stop)
	}
	wg.Wait()
	t.hardStop()
	if err := t.client.Close(); err != nil {
		t.finErr = fmt.Errorf("gcppubsubtransport: close: %w", err)
	}
	close(t.finished)
	return t.finErr
}
