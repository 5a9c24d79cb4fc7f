package sqstransport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"

	"github.com/courierkit/courier/transport"
)

// Mode says what a courier topic is on AWS.
type Mode int

const (
	// ModeSNS (scheme sns://): a topic is an SNS topic; each group is an
	// SQS queue subscribed to it with raw message delivery, so every group
	// gets every message.
	ModeSNS Mode = iota
	// ModeSQS (scheme sqs://): a topic is an SQS queue, point to point;
	// every subscriber of the topic competes for its messages, whatever
	// its group.
	ModeSQS
)

func (m Mode) String() string {
	if m == ModeSQS {
		return "sqs"
	}
	return "sns"
}

// Options configure a Transport. The zero value is the defaults: SNS topics
// fanning out to SQS queues, the region and credentials of the default AWS
// chain, AWS's own endpoints, standard (not FIFO) queues, 20 s long polls.
type Options struct {
	// Mode chooses between SNS topics (ModeSNS, the default) and plain SQS
	// queues (ModeSQS). The URL scheme sets it.
	Mode Mode

	// Region is the AWS region. Default: the default chain's (AWS_REGION,
	// the shared config file), else "us-east-1". URL: region.
	Region string
	// Endpoint replaces AWS's endpoints for both services, for emulators
	// (goaws, LocalStack) and VPC endpoints: the SDK's BaseEndpoint, e.g.
	// "http://127.0.0.1:4100". Default: AWS's endpoints. URL: endpoint, or
	// the URL's host (http://host:port).
	Endpoint string
	// AccessKeyID, SecretAccessKey and SessionToken are static
	// credentials. Default: empty, meaning the default AWS credential
	// chain (environment, shared files, SSO, IMDS/ECS roles). URL: the
	// user-info (access key as user, secret as password) and
	// session_token.
	AccessKeyID     string
	SecretAccessKey string
	SessionToken    string
	// Profile selects a profile of the shared config files for the default
	// chain. Default: AWS_PROFILE or "default". URL: profile.
	Profile string
	// Config, when non-nil, is used as it is instead of loading one; Region,
	// Endpoint, credentials and Profile are then ignored except that a
	// non-empty Endpoint still sets BaseEndpoint. Not reachable by URL.
	Config *aws.Config

	// FIFO makes every topic a FIFO topic/queue (names get the ".fifo"
	// suffix AWS requires): Message.Key becomes the MessageGroupId and
	// Message.ID the MessageDeduplicationId, and OrderedByKey is supported.
	// Default: false. URL: fifo.
	FIFO bool
	// NoCreate stops the transport from creating topics, queues,
	// subscriptions and queue policies; they must exist. Default: false
	// (create what is missing, idempotently). URL: create=false.
	NoCreate bool
	// NoQueuePolicy skips the queue policy that lets the SNS topic send to
	// a group's queue (ModeSNS), for accounts where policies are managed
	// elsewhere and for emulators that reject the attribute (goaws).
	// Default: false (a policy allowing sns.amazonaws.com to SendMessage
	// with aws:SourceArn equal to the topic is set). URL: queue_policy=false.
	NoQueuePolicy bool

	// MaxReceiveCount, when above zero, gives every queue the transport
	// creates a native redrive policy: SQS moves a message that was
	// received that many times without being deleted to the dead-letter
	// queue (SQS's maxReceiveCount). A handler's permanent failure with no
	// SubscribeOptions.DeadLetterTopic is also moved there at once. Default:
	// 0 (no redrive policy). URL: max_receive_count.
	MaxReceiveCount int
	// RedriveQueue names the dead-letter queue of the redrive policy.
	// Default: the queue's own name plus "-dlq" (created when missing).
	// URL: redrive_queue.
	RedriveQueue string

	// WaitTime is the long-poll wait of each ReceiveMessage call, whole
	// seconds from 1 to 20 (SQS's WaitTimeSeconds). Default: 20s. URL:
	// wait_time.
	WaitTime time.Duration
	// Receivers is how many ReceiveMessage loops run in parallel per
	// subscription. Default: MaxInFlight/10 rounded up, at most 8. URL:
	// receivers.
	Receivers int
	// PublishConcurrency bounds the SendMessageBatch/PublishBatch calls
	// one Publish runs at once for a standard (non-FIFO) topic; FIFO
	// topics send batches one after another to keep order. Default: 4.
	// URL: publish_concurrency.
	PublishConcurrency int
	// PublishAttempts is how many times a batch entry that failed on the
	// service's side (SenderFault false: throttling, internal errors) is
	// sent before Publish reports it; entries rejected as the sender's
	// fault are reported at once. Whole-request failures are retried by
	// the SDK's own retryer. Default: 3. URL: publish_attempts.
	PublishAttempts int
	// AckLinger is how long an ack waits for others to fill a
	// DeleteMessageBatch of 10 before it is sent. Default: 10ms. URL:
	// ack_linger.
	AckLinger time.Duration

	// Goaws adapts the transport to the goaws emulator
	// (github.com/Admiral-Piett/goaws), which differs from AWS in ways
	// the transport would otherwise treat as errors: its SendMessageBatch
	// answer lists no entry at all (then counted as all sent, where AWS
	// lists every entry as successful or failed and an unlisted one is
	// reported as not sent); it rejects the queue Policy attribute (not
	// set, as with NoQueuePolicy); its ApproximateReceiveCount is always
	// 1 (Capabilities.AttemptCount is then false); a FIFO message made
	// visible at once stays locked in its group (a nack of 0 waits 1s);
	// its PublishBatch miscounts and refuses 10 entries (SNS batches of 9).
	// Never set it against AWS. Default: false. URL: goaws.
	Goaws bool

	// Logger receives settle failures, dropped and redriven messages.
	// Default: nil, discarding.
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.WaitTime <= 0 {
		o.WaitTime = 20 * time.Second
	}
	if o.WaitTime < time.Second {
		o.WaitTime = time.Second
	}
	if o.WaitTime > 20*time.Second {
		o.WaitTime = 20 * time.Second
	}
	if o.PublishConcurrency <= 0 {
		o.PublishConcurrency = 4
	}
	if o.PublishAttempts <= 0 {
		o.PublishAttempts = 3
	}
	if o.AckLinger <= 0 {
		o.AckLinger = 10 * time.Millisecond
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

func init() {
	transport.Register("sns", openURL)
	transport.Register("sqs", openURL)
}

// ParseURL maps an sns:// or sqs:// URL onto Options:
//
//	sns://[ACCESS_KEY:SECRET@][HOST:PORT]/?region=eu-west-1&fifo=true&...
//
// See the package doc for every parameter.
func ParseURL(u *url.URL) (Options, error) {
	var o Options
	switch strings.ToLower(u.Scheme) {
	case "sns":
		o.Mode = ModeSNS
	case "sqs":
		o.Mode = ModeSQS
	default:
		return o, fmt.Errorf("sqstransport: scheme %q: want sns or sqs", u.Scheme)
	}
	if u.User != nil {
		o.AccessKeyID = u.User.Username()
		o.SecretAccessKey, _ = u.User.Password()
		if o.AccessKeyID == "" || o.SecretAccessKey == "" {
			return o, errors.New("sqstransport: user-info must hold both an access key id and a secret access key")
		}
	}
	if u.Host != "" {
		o.Endpoint = "http://" + u.Host
	}
	if p := strings.Trim(u.Path, "/"); p != "" {
		return o, fmt.Errorf("sqstransport: URL path %q is not used (topics are names given to Publish and Subscribe)", u.Path)
	}
	q := transport.NewQuery(u)
	q.String("region", &o.Region)
	q.String("endpoint", &o.Endpoint)
	q.String("session_token", &o.SessionToken)
	q.String("profile", &o.Profile)
	q.Bool("fifo", &o.FIFO)
	create := true
	q.Bool("create", &create)
	o.NoCreate = !create
	policy := true
	q.Bool("queue_policy", &policy)
	o.NoQueuePolicy = !policy
	q.Int("max_receive_count", &o.MaxReceiveCount)
	q.String("redrive_queue", &o.RedriveQueue)
	q.Duration("wait_time", &o.WaitTime)
	q.Int("receivers", &o.Receivers)
	q.Int("publish_concurrency", &o.PublishConcurrency)
	q.Int("publish_attempts", &o.PublishAttempts)
	q.Duration("ack_linger", &o.AckLinger)
	q.Bool("goaws", &o.Goaws)
	if err := q.Err(); err != nil {
		return o, fmt.Errorf("sqstransport: %w", err)
	}
	if o.Endpoint != "" {
		eu, err := url.Parse(o.Endpoint)
		if err != nil || (eu.Scheme != "http" && eu.Scheme != "https") || eu.Host == "" {
			return o, fmt.Errorf("sqstransport: endpoint %q: want http(s)://host[:port]", o.Endpoint)
		}
	}
	return o, nil
}

func openURL(ctx context.Context, u *url.URL) (transport.Conn, error) {
	o, err := ParseURL(u)
	if err != nil {
		return nil, err
	}
	return New(ctx, o)
}
