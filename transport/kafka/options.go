package kafkatransport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/IBM/sarama"

	"github.com/courierkit/courier/transport"
)

// Options configure a Transport. The zero value is the default for every
// field; each field's URL parameter is named in its doc.
type Options struct {
	// Brokers are the bootstrap addresses, "host:port". Required (the
	// hosts of a kafka:// URL, comma separated: kafka://h1:9092,h2:9092).
	Brokers []string
	// ClientID is sent to the brokers with every request (Kafka's
	// client.id). Default "courier". URL: client_id.
	ClientID string
	// Version is the Kafka protocol version spoken, at least 0.11.0.0
	// (record headers and the idempotent producer need it). Default
	// "2.8.0". URL: version.
	Version string

	// TLS enables TLS with this configuration. Nil means plain TCP unless
	// the URL scheme is kafka+tls. URL: the kafka+tls scheme, with
	// tls_ca (a PEM file of CAs to trust), tls_server_name and
	// tls_insecure_skip_verify (for tests only).
	TLS *tls.Config
	// SASLMechanism enables SASL: "PLAIN", "SCRAM-SHA-256" or
	// "SCRAM-SHA-512" (Kafka's sasl.mechanism). Default: none. URL:
	// sasl_mechanism, with the user and password in the URL's user
	// info (kafka://user:pass@host:9092?sasl_mechanism=SCRAM-SHA-256).
	SASLMechanism string
	// SASLUser and SASLPassword are the SASL credentials. They never
	// appear in errors or logs.
	SASLUser, SASLPassword string

	// Partitions is the partition count of a topic this transport
	// creates (Kafka's num.partitions). Default 3. URL: partitions.
	Partitions int
	// ReplicationFactor of a topic this transport creates (Kafka's
	// default.replication.factor). Default 0: the broker's default
	// (-1 on the wire, Kafka 2.4+). URL: replication_factor.
	ReplicationFactor int
	// NoCreateTopics makes Publish, Subscribe and Declare require that
	// topics exist instead of creating them on first use. Default false
	// (topics are created with Partitions and ReplicationFactor). URL:
	// create_topics=false.
	NoCreateTopics bool

	// MaxMessageBytes is the largest record batch the producer sends,
	// batch and record overhead included (the producer's
	// max.request.size; keep it at or below the broker's
	// message.max.bytes and the topic's max.message.bytes, which bound
	// the same batch size). A record alone in its batch must fit, which
	// sets Capabilities().Limits. Default 1000000. URL: max_message_bytes.
	MaxMessageBytes int
	// Linger makes calls of several messages go through sarama's
	// producer, which waits this long (Kafka's linger.ms) from the first
	// record of a batch for more, so that concurrent calls share produce
	// requests, at the cost of the linger on every such call. Without it
	// (the default) each call is its own round: every record of the call
	// is in hand before anything is sent, so the call leaves as exactly
	// one produce request per partition leader, at once. One-message
	// calls never linger. Default 0 (no linger). URL: linger.
	Linger time.Duration
	// PublishTimeout bounds one Publish call when its ctx has no earlier
	// deadline (Kafka's delivery.timeout.ms). Default 30s. URL:
	// publish_timeout.
	PublishTimeout time.Duration
	// Compression of produced batches: "none", "gzip", "snappy", "lz4"
	// or "zstd" (Kafka's compression.type). Default "none". URL:
	// compression.
	Compression string

	// FetchBytes is how many bytes one fetch asks of a partition (Kafka's
	// max.partition.fetch.bytes): with MaxInFlight it bounds what a
	// subscription buffers. A larger record is still fetched (the request
	// grows to fit it). Default 0: 4 KiB per SubscribeOptions.MaxInFlight,
	// between 32 KiB and 1 MiB (256 KiB for the default MaxInFlight of
	// 64). URL: fetch_bytes.
	FetchBytes int

	// CommitInterval is how often acknowledged offsets are committed
	// (Kafka's auto.commit.interval.ms; only offsets below every
	// unacknowledged message are ever committed). Offsets are also
	// committed when a partition is revoked and at shutdown. Default 1s.
	// URL: commit_interval.
	CommitInterval time.Duration
	// SessionTimeout is the consumer group session timeout (Kafka's
	// session.timeout.ms). Default 10s. URL: session_timeout.
	SessionTimeout time.Duration
	// HeartbeatInterval is the consumer group heartbeat interval
	// (Kafka's heartbeat.interval.ms). Default 3s. URL:
	// heartbeat_interval.
	HeartbeatInterval time.Duration
	// RebalanceTimeout bounds how long a rebalance waits for members to
	// rejoin, which includes finishing in-flight handlers of revoked
	// partitions (Kafka's max.poll.interval.ms). Default 60s. URL:
	// rebalance_timeout.
	RebalanceTimeout time.Duration
	// Balance is the partition assignment strategy: "range",
	// "roundrobin" or "sticky" (Kafka's partition.assignment.strategy).
	// Default "sticky". URL: balance.
	Balance string

	// RetryBackoff is the first in-process redelivery delay of a nacked
	// message whose nack asked for none (Kafka has no nack: see the
	// package doc); it doubles with each attempt up to
	// RetryBackoffMax. Default 100ms. URL: retry_backoff.
	RetryBackoff time.Duration
	// RetryBackoffMax caps that delay. Default 10s. URL:
	// retry_backoff_max.
	RetryBackoffMax time.Duration
	// ReconnectBackoff is the pause before a consumer group that failed
	// (broker down, coordinator moved) joins again. Default 500ms. URL:
	// reconnect_backoff.
	ReconnectBackoff time.Duration

	// Logger receives the transport's logs. Nil discards them.
	Logger *slog.Logger
}

const (
	defaultClientID        = "courier"
	defaultVersion         = "2.8.0"
	defaultPartitions      = 3
	defaultMaxMessageBytes = 1000000
)

func (o Options) withDefaults() Options {
	if o.ClientID == "" {
		o.ClientID = defaultClientID
	}
	if o.Version == "" {
		o.Version = defaultVersion
	}
	if o.Partitions <= 0 {
		o.Partitions = defaultPartitions
	}
	if o.MaxMessageBytes <= 0 {
		o.MaxMessageBytes = defaultMaxMessageBytes
	}
	if o.PublishTimeout <= 0 {
		o.PublishTimeout = 30 * time.Second
	}
	if o.Compression == "" {
		o.Compression = "none"
	}
	if o.CommitInterval <= 0 {
		o.CommitInterval = time.Second
	}
	if o.SessionTimeout <= 0 {
		o.SessionTimeout = 10 * time.Second
	}
	if o.HeartbeatInterval <= 0 {
		o.HeartbeatInterval = 3 * time.Second
	}
	if o.RebalanceTimeout <= 0 {
		o.RebalanceTimeout = 60 * time.Second
	}
	if o.Balance == "" {
		o.Balance = "sticky"
	}
	if o.RetryBackoff <= 0 {
		o.RetryBackoff = 100 * time.Millisecond
	}
	if o.RetryBackoffMax <= 0 {
		o.RetryBackoffMax = 10 * time.Second
	}
	if o.RetryBackoffMax < o.RetryBackoff {
		o.RetryBackoffMax = o.RetryBackoff
	}
	if o.ReconnectBackoff <= 0 {
		o.ReconnectBackoff = 500 * time.Millisecond
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// secrets lists what must never appear in errors and logs.
func (o Options) secrets() []string {
	var s []string
	if o.SASLUser != "" {
		s = append(s, o.SASLUser)
	}
	if o.SASLPassword != "" {
		s = append(s, o.SASLPassword)
	}
	return s
}

// config builds the sarama configuration shared by every client of the
// transport; callers adjust the producer or consumer parts.
func (o Options) config() (*sarama.Config, error) {
	c := sarama.NewConfig()
	c.ClientID = o.ClientID
	v, err := sarama.ParseKafkaVersion(o.Version)
	if err != nil {
		return nil, fmt.Errorf("kafkatransport: version %q: %w", o.Version, err)
	}
	if !v.IsAtLeast(sarama.V0_11_0_0) {
		return nil, fmt.Errorf("kafkatransport: version %s: at least 0.11.0.0 is needed (record headers, idempotent producer)", o.Version)
	}
	c.Version = v
	if o.TLS != nil {
		c.Net.TLS.Enable = true
		c.Net.TLS.Config = o.TLS
	}
	switch strings.ToUpper(o.SASLMechanism) {
	case "":
	case sarama.SASLTypePlaintext:
		c.Net.SASL.Enable = true
		c.Net.SASL.Mechanism = sarama.SASLTypePlaintext
	case sarama.SASLTypeSCRAMSHA256:
		c.Net.SASL.Enable = true
		c.Net.SASL.Mechanism = sarama.SASLTypeSCRAMSHA256
		c.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return newSCRAM(sha256Hash) }
	case sarama.SASLTypeSCRAMSHA512:
		c.Net.SASL.Enable = true
		c.Net.SASL.Mechanism = sarama.SASLTypeSCRAMSHA512
		c.Net.SASL.SCRAMClientGeneratorFunc = func() sarama.SCRAMClient { return newSCRAM(sha512Hash) }
	default:
		return nil, fmt.Errorf("kafkatransport: sasl mechanism %q: want PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512", o.SASLMechanism)
	}
	if c.Net.SASL.Enable {
		if o.SASLUser == "" {
			return nil, errors.New("kafkatransport: SASL needs a user (the URL's user info)")
		}
		c.Net.SASL.User = o.SASLUser
		c.Net.SASL.Password = o.SASLPassword
		c.Net.SASL.Handshake = true
	}
	switch o.Compression {
	case "none":
		c.Producer.Compression = sarama.CompressionNone
	case "gzip":
		c.Producer.Compression = sarama.CompressionGZIP
	case "snappy":
		c.Producer.Compression = sarama.CompressionSnappy
	case "lz4":
		c.Producer.Compression = sarama.CompressionLZ4
	case "zstd":
		c.Producer.Compression = sarama.CompressionZSTD
	default:
		return nil, fmt.Errorf("kafkatransport: compression %q: want none, gzip, snappy, lz4 or zstd", o.Compression)
	}
	bs, err := o.balance()
	if err != nil {
		return nil, err
	}
	c.Consumer.Group.Rebalance.GroupStrategies = bs
	c.Metadata.AllowAutoTopicCreation = false // topics are created explicitly
	c.Metadata.Retry.Max = 5
	c.Metadata.Retry.Backoff = 200 * time.Millisecond

	// Producer (Publish's own and the one As returns): idempotent,
	// acks=all.
	c.Producer.Idempotent = true
	c.Net.MaxOpenRequests = 1 // the idempotent producer needs it
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Producer.Retry.Max = 10
	c.Producer.Retry.Backoff = 100 * time.Millisecond
	c.Producer.Return.Successes = true
	c.Producer.Return.Errors = true
	c.Producer.MaxMessageBytes = o.MaxMessageBytes
	c.Producer.Timeout = o.PublishTimeout
	c.Producer.Partitioner = sarama.NewHashPartitioner
	c.Producer.Flush.Frequency = o.Linger

	// Consumer.
	c.Consumer.Return.Errors = true
	c.Consumer.Offsets.AutoCommit.Enable = true
	c.Consumer.Offsets.AutoCommit.Interval = o.CommitInterval
	c.Consumer.Offsets.Retry.Max = 5
	c.Consumer.Group.Session.Timeout = o.SessionTimeout
	c.Consumer.Group.Heartbeat.Interval = o.HeartbeatInterval
	c.Consumer.Group.Rebalance.Timeout = o.RebalanceTimeout
	c.Consumer.Group.Rebalance.Retry.Max = 4
	c.Consumer.Group.Rebalance.Retry.Backoff = 500 * time.Millisecond
	c.Consumer.MaxProcessingTime = 500 * time.Millisecond
	if err := c.Validate(); err != nil {
		return nil, fmt.Errorf("kafkatransport: configuration: %w", err)
	}
	return c, nil
}

// balance returns a new assignment strategy: sarama's sticky strategy keeps
// state in the instance, so every consumer group gets its own.
func (o Options) balance() ([]sarama.BalanceStrategy, error) {
	switch o.Balance {
	case "range":
		return []sarama.BalanceStrategy{sarama.NewBalanceStrategyRange()}, nil
	case "roundrobin":
		return []sarama.BalanceStrategy{sarama.NewBalanceStrategyRoundRobin()}, nil
	case "sticky":
		return []sarama.BalanceStrategy{sarama.NewBalanceStrategySticky()}, nil
	}
	return nil, fmt.Errorf("kafkatransport: balance %q: want range, roundrobin or sticky", o.Balance)
}

func init() { transport.Register("kafka", open); transport.Register("kafka+tls", open) }

// ParseURL maps a kafka:// or kafka+tls:// URL onto Options. The hosts
// (comma separated) are the brokers; the user info is the SASL user and
// password; query parameters set the other fields (see Options and the
// package doc). An unknown parameter is an error naming the accepted ones.
func ParseURL(u *url.URL) (Options, error) {
	var o Options
	scheme := strings.ToLower(u.Scheme)
	if scheme != "kafka" && scheme != "kafka+tls" {
		return o, fmt.Errorf("kafkatransport: scheme %q: want kafka or kafka+tls", u.Scheme)
	}
	for _, h := range strings.Split(u.Host, ",") {
		if h = strings.TrimSpace(h); h != "" {
			if !strings.Contains(h, ":") {
				h += ":9092"
			}
			o.Brokers = append(o.Brokers, h)
		}
	}
	if len(o.Brokers) == 0 {
		return o, errors.New("kafkatransport: the URL names no broker (kafka://host:9092)")
	}
	if p := strings.Trim(u.Path, "/"); p != "" {
		return o, fmt.Errorf("kafkatransport: unexpected path %q: a kafka URL names brokers only (topics are given to Publish and Subscribe)", p)
	}
	if u.User != nil {
		o.SASLUser = u.User.Username()
		o.SASLPassword, _ = u.User.Password()
	}
	q := transport.NewQuery(u)
	q.String("client_id", &o.ClientID)
	q.String("version", &o.Version)
	q.Enum("sasl_mechanism", &o.SASLMechanism, "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
	var caFile, serverName string
	var insecure bool
	q.String("tls_ca", &caFile)
	q.String("tls_server_name", &serverName)
	q.Bool("tls_insecure_skip_verify", &insecure)
	q.Int("partitions", &o.Partitions)
	q.Int("replication_factor", &o.ReplicationFactor)
	create := true
	q.Bool("create_topics", &create)
	o.NoCreateTopics = !create
	q.Int("max_message_bytes", &o.MaxMessageBytes)
	q.Duration("linger", &o.Linger)
	q.Duration("publish_timeout", &o.PublishTimeout)
	q.Enum("compression", &o.Compression, "none", "gzip", "snappy", "lz4", "zstd")
	q.Int("fetch_bytes", &o.FetchBytes)
	q.Duration("commit_interval", &o.CommitInterval)
	q.Duration("session_timeout", &o.SessionTimeout)
	q.Duration("heartbeat_interval", &o.HeartbeatInterval)
	q.Duration("rebalance_timeout", &o.RebalanceTimeout)
	q.Enum("balance", &o.Balance, "range", "roundrobin", "sticky")
	q.Duration("retry_backoff", &o.RetryBackoff)
	q.Duration("retry_backoff_max", &o.RetryBackoffMax)
	q.Duration("reconnect_backoff", &o.ReconnectBackoff)
	if err := q.Err(); err != nil {
		return o, fmt.Errorf("kafkatransport: %w", err)
	}
	if scheme == "kafka+tls" {
		tc, err := transport.TLSFromFiles(transport.TLSFile{Param: "tls_ca", Path: caFile}, transport.TLSFile{}, transport.TLSFile{}, serverName, insecure)
		if err != nil {
			return o, fmt.Errorf("kafkatransport: %w", err)
		}
		o.TLS = tc
	} else if caFile != "" || serverName != "" || insecure {
		return o, errors.New("kafkatransport: tls_* parameters need the kafka+tls scheme")
	}
	return o, nil
}

func open(ctx context.Context, u *url.URL) (transport.Conn, error) {
	o, err := ParseURL(u)
	if err != nil {
		return nil, err
	}
	return New(ctx, o)
}
