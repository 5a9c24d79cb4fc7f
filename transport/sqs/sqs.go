package sqstransport

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sns"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	sqstypes "github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/aws/smithy-go/logging"

	"github.com/courierkit/courier/transport"
)

// Transport is a courier transport over SQS, or SNS fanning out to SQS. It
// implements transport.Conn. Create it with New or transport.Open.
type Transport struct {
	o       Options
	sqs     *sqs.Client
	sns     *sns.Client
	cfg     aws.Config
	secrets []string
	httpTr  atomic.Pointer[http.Transport] // nil when Options.Config brought its own client

	mu       sync.Mutex
	closed   bool
	closing  chan struct{} // closed by Close and Shutdown
	hard     chan struct{} // closed by Close, or when Shutdown's ctx ends
	subs     sync.WaitGroup
	hardOnce sync.Once
	queues   map[string]string // queue name → URL
	topics   map[string]string // topic name → ARN
	declared map[string]bool   // "topic\x00group" declared on SNS
	nameMu   sync.Mutex
}

// New connects to SQS (and SNS in ModeSNS). It does not call AWS: the first
// Publish, Subscribe or Declare does.
func New(ctx context.Context, opts Options) (*Transport, error) {
	o := opts.withDefaults()
	t := &Transport{
		o: o, closing: make(chan struct{}), hard: make(chan struct{}),
		queues: map[string]string{}, topics: map[string]string{}, declared: map[string]bool{},
	}
	for _, s := range []string{o.SecretAccessKey, o.SessionToken} {
		if s != "" {
			t.secrets = append(t.secrets, s)
		}
	}
	if o.Config != nil {
		t.cfg = o.Config.Copy()
	} else {
		var lo []func(*config.LoadOptions) error
		if o.Region != "" {
			lo = append(lo, config.WithRegion(o.Region))
		}
		if o.Profile != "" {
			lo = append(lo, config.WithSharedConfigProfile(o.Profile))
		}
		if o.AccessKeyID != "" || o.SecretAccessKey != "" {
			lo = append(lo, config.WithCredentialsProvider(credentials.NewStaticCredentialsProvider(o.AccessKeyID, o.SecretAccessKey, o.SessionToken)))
		}
		cfg, err := config.LoadDefaultConfig(ctx, lo...)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			return nil, fmt.Errorf("sqstransport: load AWS config: %w", t.scrub(err))
		}
		if cfg.Region == "" {
			cfg.Region = "us-east-1"
		}
		cfg.Logger = sdkLogger{o.Logger, t}
		// Enough idle connections for parallel receivers and batches, on
		// an HTTP transport of the Transport's own, closed with it.
		if bc, ok := cfg.HTTPClient.(*awshttp.BuildableClient); ok {
			tr := bc.GetTransport() // a copy, with the chain's TLS settings
			tr.MaxIdleConns = 256
			tr.MaxIdleConnsPerHost = 64
			t.httpTr.Store(tr)
			cfg.HTTPClient = &http.Client{
				Transport:     tr,
				Timeout:       bc.GetTimeout(),
				CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
			}
		}
		t.cfg = cfg
	}
	ep := o.Endpoint
	t.sqs = sqs.NewFromConfig(t.cfg, func(so *sqs.Options) {
		if ep != "" {
			so.BaseEndpoint = aws.String(ep)
		}
	})
	t.sns = sns.NewFromConfig(t.cfg, func(so *sns.Options) {
		if ep != "" {
			so.BaseEndpoint = aws.String(ep)
		}
	})
	return t, nil
}

// scrub hides credentials from an SDK error's text, keeping its chain.
func (t *Transport) scrub(err error) error {
	if err == nil || len(t.secrets) == 0 {
		return err
	}
	return &scrubbed{err: err, secrets: t.secrets}
}

type scrubbed struct {
	err     error
	secrets []string
}

func (e *scrubbed) Error() string { return transport.RedactSecrets(e.err.Error(), e.secrets...) }
func (e *scrubbed) Unwrap() error { return e.err }

// Capabilities reports what SQS/SNS do; see the package doc.
func (t *Transport) Capabilities() transport.Capabilities {
	nameLen := 80
	if t.o.FIFO {
		nameLen -= len(".fifo")
	}
	return transport.Capabilities{
		Persistent:     true,
		Redelivery:     true,
		DelayedNack:    true,
		AttemptCount:   !t.o.Goaws,
		OrderedByKey:   t.o.FIFO,
		DeadLetter:     true,
		Replay:         false,
		BrokerTime:     true,
		LeaseExtension: true,
		PointToPoint:   t.o.Mode == ModeSQS,
		Limits: transport.Limits{
			MaxPayload: maxPayloadAnyBytes,
			MaxMessage: maxWireBytes,
			MaxNameLen: nameLen,
		},
	}
}

// As sets target to one of: **sqs.Client, **sns.Client, *aws.Config.
func (t *Transport) As(target any) bool {
	switch p := target.(type) {
	case **sqs.Client:
		*p = t.sqs
	case **sns.Client:
		*p = t.sns
	case *aws.Config:
		*p = t.cfg.Copy()
	default:
		return false
	}
	return true
}

func (t *Transport) isClosed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.closed
}

// Close stops every subscription at once: handlers' contexts are cancelled
// and messages not yet acked return to their queues after their visibility
// timeout. It is idempotent and safe to call concurrently.
func (t *Transport) Close() error {
	t.mu.Lock()
	if !t.closed {
		t.closed = true
		close(t.closing)
	}
	t.mu.Unlock()
	t.hardOnce.Do(func() { close(t.hard) })
	t.closeIdle()
	return nil
}

// closeIdle drops idle HTTP connections once the transport is closed.
func (t *Transport) closeIdle() {
	if tr := t.httpTr.Load(); tr != nil {
		tr.CloseIdleConnections()
	}
}

// Shutdown stops receiving, lets running handlers finish, lands their
// deletes and visibility changes, then closes. When ctx ends first the
// handlers are cancelled and Shutdown returns ctx.Err().
func (t *Transport) Shutdown(ctx context.Context) error {
	t.mu.Lock()
	if !t.closed {
		t.closed = true
		close(t.closing)
	}
	t.mu.Unlock()
	done := make(chan struct{})
	go func() { t.subs.Wait(); close(done) }()
	select {
	case <-done:
		t.hardOnce.Do(func() { close(t.hard) })
		t.closeIdle()
		return nil
	case <-ctx.Done():
		t.hardOnce.Do(func() { close(t.hard) })
		<-done
		t.closeIdle()
		return ctx.Err()
	}
}

// checkName applies the SQS/SNS naming rule on top of transport.CheckName:
// no dots (SQS queue and SNS topic names allow only A-Za-z0-9 _ -).
func (t *Transport) checkNames(topic string, group string, dlt string) error {
	l := t.Capabilities().Limits
	for i, n := range []struct{ kind, name string }{{"topic", topic}, {"group", group}, {"topic", dlt}} {
		if i > 0 && n.name == "" {
			continue
		}
		if err := transport.CheckName(n.kind, n.name, l.MaxNameLen); err != nil {
			return err
		}
		if strings.Contains(n.name, ".") {
			return &transport.NameError{Kind: n.kind, Name: n.name, Reason: "SQS queue and SNS topic names cannot contain '.' (use A-Z a-z 0-9 _ -)"}
		}
	}
	return nil
}

// queueName is the SQS queue of a topic (ModeSQS) or of a topic's group
// (ModeSNS): "topic-group", shortened with a hash when over 80 characters.
func (t *Transport) queueName(topic, group string) string {
	n := topic
	if t.o.Mode == ModeSNS {
		n = topic + "-" + group
	}
	return t.fifoName(shorten(n, t.Capabilities().Limits.MaxNameLen))
}

func (t *Transport) fifoName(n string) string {
	if t.o.FIFO {
		return n + ".fifo"
	}
	return n
}

func shorten(n string, max int) string {
	if len(n) <= max {
		return n
	}
	sum := sha256.Sum256([]byte(n))
	h := hex.EncodeToString(sum[:])[:12]
	return n[:max-len(h)-1] + "-" + h
}

// queueURL returns the URL of queue name, creating it (with attrs) when
// missing and creation is allowed.
func (t *Transport) queueURL(ctx context.Context, name string, create bool, attrs map[string]string) (string, error) {
	t.nameMu.Lock()
	u, ok := t.queues[name]
	t.nameMu.Unlock()
	if ok {
		return u, nil
	}
	if create && !t.o.NoCreate {
		if t.o.FIFO && strings.HasSuffix(name, ".fifo") {
			if attrs == nil {
				attrs = map[string]string{}
			}
			attrs[string(sqstypes.QueueAttributeNameFifoQueue)] = "true"
		}
		out, err := t.sqs.CreateQueue(ctx, &sqs.CreateQueueInput{QueueName: aws.String(name), Attributes: attrs})
		if err != nil {
			if ctx.Err() != nil {
				return "", ctx.Err()
			}
			var exists *sqstypes.QueueNameExists
			if errors.As(err, &exists) {
				return "", fmt.Errorf("sqstransport: queue %s exists with other attributes (visibility, redrive policy...) than this transport's options: %w", name, t.scrub(err))
			}
			return "", fmt.Errorf("sqstransport: create queue %s: %w", name, t.scrub(err))
		}
		u = deref(out.QueueUrl)
	} else {
		out, err := t.sqs.GetQueueUrl(ctx, &sqs.GetQueueUrlInput{QueueName: aws.String(name)})
		if err != nil {
			if ctx.Err() != nil {
				return "", ctx.Err()
			}
			return "", fmt.Errorf("sqstransport: queue %s: %w", name, t.scrub(err))
		}
		u = deref(out.QueueUrl)
	}
	t.nameMu.Lock()
	t.queues[name] = u
	t.nameMu.Unlock()
	return u, nil
}

// topicARN returns the ARN of SNS topic name, creating it when allowed.
func (t *Transport) topicARN(ctx context.Context, topic string) (string, error) {
	name := t.fifoName(topic)
	t.nameMu.Lock()
	a, ok := t.topics[name]
	t.nameMu.Unlock()
	if ok {
		return a, nil
	}
	if t.o.NoCreate {
		// Without create rights, CreateTopic may be denied: list instead.
		arn, err := t.findTopic(ctx, name)
		if err != nil {
			return "", err
		}
		a = arn
	} else {
		in := &sns.CreateTopicInput{Name: aws.String(name)}
		if t.o.FIFO {
			in.Attributes = map[string]string{"FifoTopic": "true"}
		}
		out, err := t.sns.CreateTopic(ctx, in)
		if err != nil {
			if ctx.Err() != nil {
				return "", ctx.Err()
			}
			return "", fmt.Errorf("sqstransport: create topic %s: %w", name, t.scrub(err))
		}
		a = deref(out.TopicArn)
	}
	t.nameMu.Lock()
	t.topics[name] = a
	t.nameMu.Unlock()
	return a, nil
}

// findTopic looks an existing topic's ARN up by name.
func (t *Transport) findTopic(ctx context.Context, name string) (string, error) {
	p := sns.NewListTopicsPaginator(t.sns, &sns.ListTopicsInput{})
	for p.HasMorePages() {
		out, err := p.NextPage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return "", ctx.Err()
			}
			return "", fmt.Errorf("sqstransport: list topics: %w", t.scrub(err))
		}
		for _, tp := range out.Topics {
			if a := deref(tp.TopicArn); strings.HasSuffix(a, ":"+name) {
				return a, nil
			}
		}
	}
	return "", fmt.Errorf("sqstransport: topic %s does not exist (create=false)", name)
}

// queueARN asks SQS for a queue's ARN.
func (t *Transport) queueARN(ctx context.Context, url string) (string, error) {
	out, err := t.sqs.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{QueueUrl: aws.String(url), AttributeNames: []sqstypes.QueueAttributeName{sqstypes.QueueAttributeNameQueueArn}})
	if err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		return "", fmt.Errorf("sqstransport: queue %s attributes: %w", url, t.scrub(err))
	}
	a := out.Attributes[string(sqstypes.QueueAttributeNameQueueArn)]
	if a == "" {
		return "", fmt.Errorf("sqstransport: queue %s has no QueueArn attribute", url)
	}
	return a, nil
}

// queueAttrs are the attributes of a queue the transport creates for a
// group: the redrive policy when configured.
func (t *Transport) queueAttrs(ctx context.Context, queue string) (map[string]string, error) {
	attrs := map[string]string{}
	if t.o.MaxReceiveCount <= 0 {
		return attrs, nil
	}
	du, err := t.queueURL(ctx, t.dlqName(queue), true, nil)
	if err != nil {
		return nil, err
	}
	arn, err := t.queueARN(ctx, du)
	if err != nil {
		return nil, err
	}
	rp, _ := json.Marshal(map[string]string{"deadLetterTargetArn": arn, "maxReceiveCount": strconv.Itoa(t.o.MaxReceiveCount)})
	attrs[string(sqstypes.QueueAttributeNameRedrivePolicy)] = string(rp)
	return attrs, nil
}

// dlqName is the redrive dead-letter queue of queue: Options.RedriveQueue
// or "<queue>-dlq".
func (t *Transport) dlqName(queue string) string {
	if t.o.RedriveQueue != "" {
		return t.o.RedriveQueue
	}
	return t.fifoName(shorten(strings.TrimSuffix(queue, ".fifo")+"-dlq", t.Capabilities().Limits.MaxNameLen))
}

// redriveURL is the URL of the redrive dead-letter queue of queue, or "".
func (t *Transport) redriveURL(ctx context.Context, queue string) string {
	if t.o.MaxReceiveCount <= 0 {
		return ""
	}
	u, err := t.queueURL(ctx, t.dlqName(queue), true, nil)
	if err != nil {
		return ""
	}
	return u
}

// Declare creates what a group needs: in ModeSNS the topic, the group's
// queue (with its redrive policy and the policy letting the topic send to
// it) and a raw-delivery subscription; in ModeSQS the topic's queue (every
// group shares it).
func (t *Transport) Declare(ctx context.Context, topic string, opts transport.SubscribeOptions) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if t.isClosed() {
		return transport.ErrClosed
	}
	if opts.Group == "" {
		return fmt.Errorf("sqstransport: Declare needs SubscribeOptions.Group")
	}
	if err := t.checkNames(topic, opts.Group, opts.DeadLetterTopic); err != nil {
		return err
	}
	_, err := t.declareGroup(ctx, topic, opts.Group)
	return err
}

// declareGroup returns the URL of the queue a group consumes.
func (t *Transport) declareGroup(ctx context.Context, topic, group string) (string, error) {
	qn := t.queueName(topic, group)
	attrs, err := t.queueAttrs(ctx, qn)
	if err != nil {
		return "", err
	}
	qu, err := t.queueURL(ctx, qn, true, attrs)
	if err != nil {
		return "", err
	}
	if t.o.Mode == ModeSQS {
		return qu, nil
	}
	key := topic + "\x00" + group
	t.nameMu.Lock()
	done := t.declared[key]
	t.nameMu.Unlock()
	if done || t.o.NoCreate {
		return qu, nil
	}
	if err := t.subscribeQueue(ctx, topic, qu); err != nil {
		return "", err
	}
	t.nameMu.Lock()
	t.declared[key] = true
	t.nameMu.Unlock()
	return qu, nil
}

// subscribeQueue subscribes queue qu to the SNS topic with raw delivery,
// after giving the queue a policy that lets the topic send to it, and
// returns after SNS accepted the subscription.
func (t *Transport) subscribeQueue(ctx context.Context, topic, qu string) error {
	_, err := t.subscribeQueueARN(ctx, topic, qu)
	return err
}

// subscribeQueueARN is subscribeQueue returning the subscription's ARN.
func (t *Transport) subscribeQueueARN(ctx context.Context, topic, qu string) (string, error) {
	ta, err := t.topicARN(ctx, topic)
	if err != nil {
		return "", err
	}
	qa, err := t.queueARN(ctx, qu)
	if err != nil {
		return "", err
	}
	if !t.o.NoQueuePolicy && !t.o.Goaws {
		pol, _ := json.Marshal(map[string]any{
			"Version": "2012-10-17",
			"Statement": []any{map[string]any{
				"Sid":       "courier-sns-" + topic,
				"Effect":    "Allow",
				"Principal": map[string]string{"Service": "sns.amazonaws.com"},
				"Action":    "sqs:SendMessage",
				"Resource":  qa,
				"Condition": map[string]any{"ArnEquals": map[string]string{"aws:SourceArn": ta}},
			}},
		})
		if _, err := t.sqs.SetQueueAttributes(ctx, &sqs.SetQueueAttributesInput{QueueUrl: aws.String(qu), Attributes: map[string]string{string(sqstypes.QueueAttributeNamePolicy): string(pol)}}); err != nil {
			if ctx.Err() != nil {
				return "", ctx.Err()
			}
			return "", fmt.Errorf("sqstransport: set the policy of queue %s (queue_policy=false skips it): %w", qu, t.scrub(err))
		}
	}
	out, err := t.sns.Subscribe(ctx, &sns.SubscribeInput{
		TopicArn:              aws.String(ta),
		Protocol:              aws.String("sqs"),
		Endpoint:              aws.String(qa),
		Attributes:            map[string]string{"RawMessageDelivery": "true"},
		ReturnSubscriptionArn: true,
	})
	if err != nil {
		if ctx.Err() != nil {
			return "", ctx.Err()
		}
		return "", fmt.Errorf("sqstransport: subscribe queue %s to topic %s: %w", qa, ta, t.scrub(err))
	}
	return deref(out.SubscriptionArn), nil
}

// sdkLogger sends the SDK's own log lines (retries, connection reuse) to
// Options.Logger at Debug (Warn for warnings), credentials redacted.
type sdkLogger struct {
	l *slog.Logger
	t *Transport
}

func (s sdkLogger) Logf(c logging.Classification, format string, v ...any) {
	level := slog.LevelDebug
	if c == logging.Warn {
		level = slog.LevelWarn
	}
	s.l.Log(context.Background(), level, "sqstransport: aws sdk: "+transport.RedactSecrets(fmt.Sprintf(format, v...), s.t.secrets...))
}
