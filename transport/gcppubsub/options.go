package gcppubsubtransport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"google.golang.org/api/option"

	"github.com/courierkit/courier/transport"
)

// Options configure a Transport. The zero value (plus Project) is the
// default configuration; every field is also reachable as a URL query
// parameter of gcppubsub://PROJECT (named in brackets) except Logger and
// ClientOptions, which only Go code can pass.
type Options struct {
	// Project is the Google Cloud project ID that owns the topics and
	// subscriptions. Required. [the URL host: gcppubsub://my-project]
	Project string

	// Emulator is the host:port of a Pub/Sub emulator (the gcloud
	// emulator or pstest). When set, the client talks plaintext gRPC to
	// it without authentication. Default: empty, which leaves the choice
	// to the client library: $PUBSUB_EMULATOR_HOST when set, else the
	// production endpoint with credentials from the Application Default
	// Credentials chain (GOOGLE_APPLICATION_CREDENTIALS, gcloud's user
	// credentials, the metadata server). [emulator]
	Emulator string
	// Endpoint overrides the production API endpoint (for example a
	// regional endpoint such as "us-east1-pubsub.googleapis.com:443",
	// which keeps ordered messages in one region). Ignored when Emulator
	// is set. Default: the client library's global endpoint. [endpoint]
	Endpoint string

	// DisableCreate stops the transport from creating missing topics and
	// group subscriptions: they must exist, and using one that does not is
	// an error matching ErrNotExist. Private (group-less) subscriptions are
	// always created, since they exist only while their Subscribe runs.
	// Default: false, create what is missing ("create if missing").
	// [create=false]
	DisableCreate bool

	// AckDeadline is the subscription's ack deadline (Pub/Sub's
	// ackDeadlineSeconds) for subscriptions whose SubscribeOptions.AckWait
	// is zero. Pub/Sub accepts 10s to 600s; values outside are clamped.
	// It is also the longest lease extension the client asks for at a
	// time, so a crashed subscriber's messages come back within about this
	// long. Default: 30s. [ack_deadline]
	AckDeadline time.Duration
	// MaxExtension is how long the client keeps extending the lease of a
	// received, unsettled message (the client library's
	// ReceiveSettings.MaxExtension): a handler running longer than this
	// loses its lease and the message is redelivered. Default: 60m.
	// [max_extension]
	MaxExtension time.Duration
	// ReceiveGoroutines is the number of StreamingPull streams per
	// Subscribe (ReceiveSettings.NumGoroutines). Default: 4. The pstest
	// emulator sends about one message per stream every 10ms, so tests
	// against it use 16 or more. [receive_goroutines]
	ReceiveGoroutines int
	// MaxOutstandingMessages bounds received, unsettled messages
	// (ReceiveSettings.MaxOutstandingMessages) for subscriptions whose
	// SubscribeOptions.MaxInFlight is zero. Default: 64 (courier's
	// MaxInFlight default). [max_outstanding_messages]
	MaxOutstandingMessages int
	// MaxOutstandingBytes bounds the payload bytes of received, unsettled
	// messages per Subscribe (ReceiveSettings.MaxOutstandingBytes).
	// Default: 100 MB (100e6). [max_outstanding_bytes]
	MaxOutstandingBytes int

	// Retention is how long a subscription keeps unacknowledged messages
	// (messageRetentionDuration, 10m to 7d) when the transport creates it.
	// Default: Pub/Sub's own, 7 days. [retention]
	Retention time.Duration
	// MinBackoff and MaxBackoff set the retry policy of subscriptions the
	// transport creates (retryPolicy.minimumBackoff/maximumBackoff,
	// 0s to 600s): Pub/Sub then waits an exponentially growing delay
	// between these bounds before redelivering a nacked message. Default:
	// both zero, no retry policy: redelivery as soon as possible. The
	// pstest emulator ignores retry policies. [min_backoff, max_backoff]
	MinBackoff, MaxBackoff time.Duration
	// DeadLetterTopic turns on Pub/Sub's native dead-letter policy for the
	// subscriptions the transport creates: after MaxDeliveryAttempts
	// deliveries Pub/Sub forwards the message to this topic (created when
	// missing, unless DisableCreate). It also makes Pub/Sub count
	// delivery attempts, so received messages carry Message.Attempt and
	// Capabilities().AttemptCount is true. On Google Cloud the Pub/Sub
	// service account needs publisher rights on this topic and subscriber
	// rights on the subscription. Default: empty, no native dead-letter
	// policy. [dead_letter_topic]
	DeadLetterTopic string
	// MaxDeliveryAttempts is the dead-letter policy's maxDeliveryAttempts
	// (5 to 100). Default: 5, as Pub/Sub's. [max_delivery_attempts]
	MaxDeliveryAttempts int

	// PublishDelay, PublishCount and PublishBytes are the publisher's
	// batching thresholds (PublishSettings.DelayThreshold,
	// CountThreshold, ByteThreshold): a batch is sent when any is reached.
	// Defaults: 10ms, 100 messages, 1e6 bytes, as the client library's.
	// [publish_delay, publish_count, publish_bytes]
	PublishDelay time.Duration
	PublishCount int
	PublishBytes int
	// PublishTimeout bounds the client's retries of one batch
	// (PublishSettings.Timeout). Default: 60s. [publish_timeout]
	PublishTimeout time.Duration

	// Logger receives warnings (failed acks, conflicting settings) and
	// errors (dropped messages). Default: nil, discard.
	Logger *slog.Logger
	// ClientOptions are passed to pubsub.NewClient after the ones the
	// fields above produce: credentials
	// (option.WithAuthCredentialsFile(option.ServiceAccount, path) ...),
	// a gRPC connection, a custom endpoint. Go only. Default: none.
	ClientOptions []option.ClientOption
}

const (
	defaultAckDeadline       = 30 * time.Second
	defaultMaxExtension      = 60 * time.Minute
	defaultReceiveGoroutines = 4
	defaultMaxOutstanding    = 64
	defaultMaxOutstandingB   = 100e6
	defaultMaxDelivery       = 5
	minAckDeadline           = 10 * time.Second
	maxAckDeadline           = 600 * time.Second
)

// withDefaults returns o with zero fields set to their defaults.
func (o Options) withDefaults() Options {
	if o.AckDeadline <= 0 {
		o.AckDeadline = defaultAckDeadline
	}
	if o.MaxExtension <= 0 {
		o.MaxExtension = defaultMaxExtension
	}
	if o.ReceiveGoroutines <= 0 {
		o.ReceiveGoroutines = defaultReceiveGoroutines
	}
	if o.MaxOutstandingMessages <= 0 {
		o.MaxOutstandingMessages = defaultMaxOutstanding
	}
	if o.MaxOutstandingBytes <= 0 {
		o.MaxOutstandingBytes = defaultMaxOutstandingB
	}
	if o.MaxDeliveryAttempts <= 0 {
		o.MaxDeliveryAttempts = defaultMaxDelivery
	}
	return o
}

func (o Options) validate() error {
	var errs []error
	if o.Project == "" {
		errs = append(errs, errors.New("Project is required (gcppubsub://PROJECT)"))
	}
	if o.Retention != 0 && (o.Retention < 10*time.Minute || o.Retention > 7*24*time.Hour) {
		errs = append(errs, fmt.Errorf("Retention %s is outside Pub/Sub's 10m to 7d", o.Retention))
	}
	if o.MinBackoff > maxAckDeadline || o.MaxBackoff > maxAckDeadline {
		errs = append(errs, errors.New("MinBackoff and MaxBackoff must be at most 600s"))
	}
	if o.MaxBackoff != 0 && o.MinBackoff > o.MaxBackoff {
		errs = append(errs, fmt.Errorf("MinBackoff %s is above MaxBackoff %s", o.MinBackoff, o.MaxBackoff))
	}
	if o.MaxDeliveryAttempts < 5 || o.MaxDeliveryAttempts > 100 {
		errs = append(errs, fmt.Errorf("MaxDeliveryAttempts %d is outside Pub/Sub's 5 to 100", o.MaxDeliveryAttempts))
	}
	if o.DeadLetterTopic != "" {
		if err := checkTopic(o.DeadLetterTopic); err != nil {
			errs = append(errs, fmt.Errorf("DeadLetterTopic: %w", err))
		}
	}
	if o.PublishCount > 1000 {
		errs = append(errs, fmt.Errorf("PublishCount %d is above Pub/Sub's 1000 messages per request", o.PublishCount))
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("gcppubsubtransport: %w", errors.Join(errs...))
}

func init() { transport.Register("gcppubsub", open) }

// open maps gcppubsub://PROJECT?param=value... onto Options.
func open(ctx context.Context, u *url.URL) (transport.Conn, error) {
	opts, err := ParseURL(u)
	if err != nil {
		return nil, err
	}
	return New(ctx, opts)
}

// ParseURL returns the Options a gcppubsub:// URL describes, without
// connecting. See the package doc for the parameters.
func ParseURL(u *url.URL) (Options, error) {
	var o Options
	if !strings.EqualFold(u.Scheme, "gcppubsub") {
		return o, fmt.Errorf("gcppubsubtransport: scheme %q is not gcppubsub", u.Scheme)
	}
	if u.User != nil {
		return o, errors.New("gcppubsubtransport: the URL takes no user info; credentials come from the Application Default Credentials chain")
	}
	o.Project = u.Host
	if o.Project == "" {
		o.Project = u.Opaque
	}
	if p := strings.Trim(u.Path, "/"); p != "" {
		return o, fmt.Errorf("gcppubsubtransport: unexpected path %q: the URL names a project (gcppubsub://PROJECT), not a topic", u.Path)
	}
	q := transport.NewQuery(u)
	q.String("emulator", &o.Emulator)
	q.String("endpoint", &o.Endpoint)
	create := true
	q.Bool("create", &create)
	o.DisableCreate = !create
	q.Duration("ack_deadline", &o.AckDeadline)
	q.Duration("max_extension", &o.MaxExtension)
	q.Int("receive_goroutines", &o.ReceiveGoroutines)
	q.Int("max_outstanding_messages", &o.MaxOutstandingMessages)
	q.Int("max_outstanding_bytes", &o.MaxOutstandingBytes)
	q.Duration("retention", &o.Retention)
	q.Duration("min_backoff", &o.MinBackoff)
	q.Duration("max_backoff", &o.MaxBackoff)
	q.String("dead_letter_topic", &o.DeadLetterTopic)
	q.Int("max_delivery_attempts", &o.MaxDeliveryAttempts)
	q.Duration("publish_delay", &o.PublishDelay)
	q.Int("publish_count", &o.PublishCount)
	q.Int("publish_bytes", &o.PublishBytes)
	q.Duration("publish_timeout", &o.PublishTimeout)
	if err := q.Err(); err != nil {
		return o, fmt.Errorf("gcppubsubtransport: %w", err)
	}
	return o, nil
}
