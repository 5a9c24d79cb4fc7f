package amqptransport

import (
	"context"
	"crypto/tls"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/courierkit/courier/transport"
)

// Exchange types (Options.ExchangeType).
const (
	ExchangeTopic   = "topic"
	ExchangeFanout  = "fanout"
	ExchangeDirect  = "direct"
	ExchangeHeaders = "headers"
)

// Queue types (Options.QueueType).
const (
	QueueClassic = "classic"
	QueueQuorum  = "quorum"
)

// DefaultURL is the broker Options.URL defaults to.
const DefaultURL = "amqp://guest:guest@127.0.0.1:5672/"

// Options configure a Transport. The zero value connects to DefaultURL with
// the defaults below. Every field except Logger can be set by a URL query
// parameter (named after URL:; TLSConfig through the TLS file parameters).
type Options struct {
	// URL is the broker: amqp://user:pass@host:port/vhost or amqps://...
	// Query parameters are not read here (transport.Open reads them into
	// Options). Default: DefaultURL.
	URL string
	// Username and Password, when set, replace the URL's user name and
	// password each (a Username alone keeps the URL's password). URL:
	// username, password. Default: the URL's (guest/guest).
	Username, Password string
	// TLSConfig is used for amqps:// URLs. Default: system roots, the
	// URL's host as server name. URL: ca_file, cert_file, key_file,
	// server_name, insecure_skip_verify build one.
	TLSConfig *tls.Config
	// ConnectionName is the connection_name client property, shown by
	// rabbitmqctl list_connections and the management UI. URL:
	// connection_name. Default: "courier".
	ConnectionName string
	// Heartbeat is the AMQP heartbeat interval the client asks for. URL:
	// heartbeat. Default: 10s.
	Heartbeat time.Duration
	// DialTimeout bounds one TCP connect plus AMQP handshake. URL:
	// dial_timeout. Default: 30s.
	DialTimeout time.Duration

	// ExchangeType is the type of the exchange each topic maps to: topic,
	// fanout, direct or headers. URL: exchange_type. Default: topic.
	ExchangeType string
	// QueueType is the x-queue-type of group queues: classic or quorum
	// (no-group subscriptions always use an exclusive classic queue).
	// URL: queue_type. Default: classic.
	QueueType string
	// BindingKeys bind each group queue to its topic's exchange (topic
	// and direct exchanges; fanout and headers exchanges ignore them).
	// URL: binding_keys (comma-separated). Default: "#" (every message)
	// for topic exchanges, "" (messages with an empty routing key) for
	// direct ones.
	BindingKeys []string
	// GroupBindingKeys overrides BindingKeys per group name (no-group
	// subscriptions use the key ""). URL: group_binding_keys, as
	// group:key|key,group:key (e.g. eu:eu.*|eu.#,audit:#). Default: none.
	GroupBindingKeys map[string][]string
	// BindingHeaders are the binding arguments of a headers exchange:
	// header name to value, matched per BindingMatch. URL: binding_headers
	// (name:value,name:value). Default: none, which matches every message.
	BindingHeaders map[string]string
	// BindingMatch is x-match for a headers exchange: all or any. URL:
	// binding_match. Default: all.
	BindingMatch string
	// RoutingKeyHeader names the message header whose value is the routing
	// key. URL: routing_key_header. Default: "" (the routing key is
	// Message.Key).
	RoutingKeyHeader string
	// DeadLetterExchange is set as x-dead-letter-exchange on group queues:
	// a message that fails permanently while the subscription has no
	// DeadLetterTopic is rejected into it by the broker (native
	// dead-lettering). The exchange must exist (the transport does not
	// declare it). URL: dead_letter_exchange. Default: none.
	DeadLetterExchange string
	// AllowUnroutable accepts publishes that match no queue. By default
	// Publish sets the mandatory flag and an unroutable message is an
	// error (ErrUnroutable). URL: allow_unroutable. Default: false.
	AllowUnroutable bool
	// PublishChannels is how many confirm-mode channels publish at once
	// (concurrent Publish calls beyond it wait). URL: publish_channels.
	// Default: 4.
	PublishChannels int
	// PublishRetry bounds how long one Publish call waits for a
	// connection (and a free channel) and keeps resending messages the
	// broker did not confirm because the connection was lost, within its
	// ctx; then it fails with ErrUnconfirmed. URL: publish_retry.
	// Default: 30s. NoPublishRetry turns the resending off: messages left
	// unconfirmed by a connection loss fail at once (URL:
	// no_publish_retry).
	PublishRetry   time.Duration
	NoPublishRetry bool
	// ReconnectMin and ReconnectMax bound the exponential backoff between
	// reconnect attempts. URL: reconnect_min, reconnect_max. Default:
	// 100ms and 5s.
	ReconnectMin, ReconnectMax time.Duration
	// MaxPayload is the largest message body Publish accepts, as the
	// broker's max_message_size. URL: max_payload. Default: 128 MiB
	// (RabbitMQ's default max_message_size).
	MaxPayload int

	// Logger receives reconnects, settle failures and dropped messages;
	// nil discards.
	Logger *slog.Logger
}

func (o Options) withDefaults() Options {
	if o.URL == "" {
		o.URL = DefaultURL
	}
	if o.ConnectionName == "" {
		o.ConnectionName = "courier"
	}
	if o.Heartbeat <= 0 {
		o.Heartbeat = 10 * time.Second
	}
	if o.DialTimeout <= 0 {
		o.DialTimeout = 30 * time.Second
	}
	if o.ExchangeType == "" {
		o.ExchangeType = ExchangeTopic
	}
	if o.QueueType == "" {
		o.QueueType = QueueClassic
	}
	if o.BindingKeys == nil {
		if o.ExchangeType == ExchangeTopic {
			o.BindingKeys = []string{"#"}
		} else {
			o.BindingKeys = []string{""}
		}
	}
	if o.BindingMatch == "" {
		o.BindingMatch = "all"
	}
	if o.PublishChannels <= 0 {
		o.PublishChannels = 4
	}
	if o.PublishRetry <= 0 {
		o.PublishRetry = 30 * time.Second
	}
	if o.ReconnectMin <= 0 {
		o.ReconnectMin = 100 * time.Millisecond
	}
	if o.ReconnectMax <= 0 {
		o.ReconnectMax = 5 * time.Second
	}
	if o.ReconnectMax < o.ReconnectMin {
		o.ReconnectMax = o.ReconnectMin
	}
	if o.MaxPayload <= 0 {
		o.MaxPayload = 128 << 20
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

func (o Options) validate() error {
	switch o.ExchangeType {
	case ExchangeTopic, ExchangeFanout, ExchangeDirect, ExchangeHeaders:
	default:
		return fmt.Errorf("amqptransport: exchange type %q: want topic, fanout, direct or headers", o.ExchangeType)
	}
	switch o.QueueType {
	case QueueClassic, QueueQuorum:
	default:
		return fmt.Errorf("amqptransport: queue type %q: want classic or quorum", o.QueueType)
	}
	switch o.BindingMatch {
	case "all", "any":
	default:
		return fmt.Errorf("amqptransport: binding match %q: want all or any", o.BindingMatch)
	}
	return nil
}

func init() {
	transport.Register("amqp", open)
	transport.Register("amqps", open)
}

// open maps a URL onto Options (see the package doc for the parameters).
func open(ctx context.Context, u *url.URL) (transport.Conn, error) {
	var o Options
	q := transport.NewQuery(u)
	q.String("username", &o.Username)
	q.String("password", &o.Password)
	q.String("connection_name", &o.ConnectionName)
	q.Duration("heartbeat", &o.Heartbeat)
	q.Duration("dial_timeout", &o.DialTimeout)
	q.Enum("exchange_type", &o.ExchangeType, ExchangeTopic, ExchangeFanout, ExchangeDirect, ExchangeHeaders)
	q.Enum("queue_type", &o.QueueType, QueueClassic, QueueQuorum)
	q.List("binding_keys", &o.BindingKeys)
	var bh, gbk []string
	q.List("binding_headers", &bh)
	q.List("group_binding_keys", &gbk)
	q.Enum("binding_match", &o.BindingMatch, "all", "any")
	q.String("routing_key_header", &o.RoutingKeyHeader)
	q.String("dead_letter_exchange", &o.DeadLetterExchange)
	q.Bool("allow_unroutable", &o.AllowUnroutable)
	q.Int("publish_channels", &o.PublishChannels)
	q.Duration("publish_retry", &o.PublishRetry)
	q.Bool("no_publish_retry", &o.NoPublishRetry)
	q.Duration("reconnect_min", &o.ReconnectMin)
	q.Duration("reconnect_max", &o.ReconnectMax)
	q.Int("max_payload", &o.MaxPayload)
	var caFile, certFile, keyFile, serverName string
	var insecure bool
	q.String("ca_file", &caFile)
	q.String("cert_file", &certFile)
	q.String("key_file", &keyFile)
	q.String("server_name", &serverName)
	q.Bool("insecure_skip_verify", &insecure)
	if err := q.Err(); err != nil {
		return nil, fmt.Errorf("amqptransport: %w", err)
	}
	if len(bh) > 0 {
		o.BindingHeaders = map[string]string{}
		for _, kv := range bh {
			k, v, ok := cutColon(kv)
			if !ok {
				return nil, fmt.Errorf("amqptransport: parameter binding_headers: %q is not name:value", kv)
			}
			o.BindingHeaders[k] = v
		}
	}
	if len(gbk) > 0 {
		o.GroupBindingKeys = map[string][]string{}
		for _, gk := range gbk {
			g, keys, ok := cutColon(gk)
			if !ok {
				return nil, fmt.Errorf("amqptransport: parameter group_binding_keys: %q is not group:key|key", gk)
			}
			o.GroupBindingKeys[g] = append(o.GroupBindingKeys[g], strings.Split(keys, "|")...)
		}
	}
	if caFile != "" || certFile != "" || keyFile != "" || serverName != "" || insecure {
		if u.Scheme != "amqps" {
			return nil, fmt.Errorf("amqptransport: TLS parameters need an amqps:// URL")
		}
		tc, err := transport.TLSFromFiles(
			transport.TLSFile{Param: "ca_file", Path: caFile},
			transport.TLSFile{Param: "cert_file", Path: certFile},
			transport.TLSFile{Param: "key_file", Path: keyFile},
			serverName, insecure)
		if err != nil {
			return nil, fmt.Errorf("amqptransport: %w", err)
		}
		o.TLSConfig = tc
	}
	c := *u
	c.RawQuery = ""
	c.Fragment = ""
	o.URL = c.String()
	return New(ctx, o)
}

func cutColon(s string) (string, string, bool) {
	for i := 0; i < len(s); i++ {
		if s[i] == ':' {
			return s[:i], s[i+1:], i > 0
		}
	}
	return "", "", false
}
