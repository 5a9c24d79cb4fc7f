package natstransport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/courierkit/courier/transport"
)

// Options configure a Transport. The zero value connects to
// nats://127.0.0.1:4222 in JetStream mode with the defaults below.
type Options struct {
	// URL is the server to connect to, "nats://host:port" (or "tls://"
	// for TLS). Credentials in it are used and never logged. Default
	// "nats://127.0.0.1:4222" (nats.DefaultURL).
	URL string
	// Servers are more servers of the same cluster, tried when URL is
	// unreachable (nats.go's Servers option). URL parameter: servers
	// (comma-separated). Default: none.
	Servers []string
	// Name is the client connection name the server shows (nats.Name).
	// URL parameter: name. Default "courier".
	Name string

	// User and Password authenticate with a user name and password
	// (nats.UserInfo). In a URL they come from its user-info part
	// (nats://user:pass@host). Default: none.
	User, Password string
	// Token authenticates with a token (nats.Token); in a URL either
	// the parameter token or a user-info without password
	// (nats://token@host). Default: none.
	Token string
	// CredsFile is a NATS credentials file holding a user JWT and its
	// NKey seed (nats.UserCredentials). URL parameter: creds. Default: none.
	CredsFile string
	// NKeySeedFile is a file holding an NKey user seed
	// (nats.NkeyOptionFromSeed). URL parameter: nkey_seed. Default: none.
	NKeySeedFile string

	// TLS, when set, is the TLS configuration (nats.Secure); the
	// nats+tls scheme sets it to a default configuration. Default nil:
	// TLS only when the server requires it.
	TLS *tls.Config
	// TLSCAFile is a PEM file of root CAs to verify the server with
	// (nats.RootCAs). URL parameter: tls_ca. Default: the system roots.
	TLSCAFile string
	// TLSCertFile and TLSKeyFile are the client certificate and key for
	// mutual TLS (nats.ClientCert). URL parameters: tls_cert, tls_key.
	// Default: none.
	TLSCertFile, TLSKeyFile string
	// TLSHandshakeFirst does the TLS handshake before the server's INFO,
	// for servers configured with handshake_first (nats.TLSHandshakeFirst).
	// URL parameter: tls_handshake_first. Default false.
	TLSHandshakeFirst bool

	// ConnectTimeout bounds each dial (nats.Timeout); the ctx passed to
	// New bounds the whole connect. URL parameter: connect_timeout.
	// Default 5s.
	ConnectTimeout time.Duration
	// ReconnectWait is the pause between reconnect attempts to one
	// server (nats.ReconnectWait). URL parameter: reconnect_wait.
	// Default 2s (nats.go's default).
	ReconnectWait time.Duration
	// MaxReconnects bounds reconnect attempts after a connection loss
	// (nats.MaxReconnects). URL parameter: max_reconnects. Default 0:
	// reconnect forever.
	MaxReconnects int
	// ReconnectBufSize is how many bytes of publishes are buffered while
	// reconnecting (nats.ReconnectBufSize). URL parameter:
	// reconnect_buf_size. Default 8 MiB (nats.go's default).
	ReconnectBufSize int

	// Core selects core NATS (no JetStream): at-most-once, no
	// persistence, no redelivery, no attempts; groups are queue groups.
	// See Capabilities. URL parameter: core. Default false (JetStream).
	Core bool

	// Stream binds every topic to this existing stream instead of one
	// provisioned stream per topic; the stream's subjects must cover
	// SubjectPrefix+topic. URL parameter: stream. Default "" (provision).
	Stream string
	// SubjectPrefix is put before a topic to make its subject. URL
	// parameter: subject_prefix. Default "courier.".
	SubjectPrefix string
	// NoSubjectPrefix makes the subject the topic itself (ignores
	// SubjectPrefix). URL parameter: no_subject_prefix. Default false.
	NoSubjectPrefix bool
	// StreamPrefix is put before a topic (with "." replaced by "_") to
	// name its provisioned stream. URL parameter: stream_prefix.
	// Default "COURIER_".
	StreamPrefix string
	// NoProvision never creates streams: a topic's stream must exist.
	// URL parameter: no_provision. Default false.
	NoProvision bool
	// Storage of provisioned streams: "file" or "memory" (memory
	// streams do not survive a server restart, and Capabilities says
	// so). URL parameter: storage. Default "file".
	Storage string
	// Retention of provisioned streams: "limits" (messages stay until
	// MaxAge/MaxBytes; StartOldest replays them) or "interest" (a
	// message is removed once every consumer acked it; no replay for
	// groups declared later). URL parameter: retention. Default "limits".
	Retention string
	// Replicas of provisioned streams (num_replicas). URL parameter:
	// replicas. Default 1.
	Replicas int
	// MaxAge of provisioned streams (max_age). URL parameter: max_age.
	// Default 168h (7 days).
	MaxAge time.Duration
	// MaxBytes of provisioned streams (max_bytes); the oldest messages
	// are discarded beyond it. URL parameter: max_bytes. Default 0: no
	// limit.
	MaxBytes int64
	// DuplicateWindow of provisioned streams (duplicate_window): a
	// message whose ID (Nats-Msg-Id) was stored within it is dropped as
	// a duplicate. URL parameter: duplicate_window. Default 2m.
	DuplicateWindow time.Duration

	// APITimeout bounds a JetStream API call or publish acknowledgement
	// when the ctx has no deadline (jetstream.WithDefaultTimeout). URL
	// parameter: api_timeout. Default 5s.
	APITimeout time.Duration
	// AckSync makes every ack wait for the server's confirmation
	// (DoubleAck) instead of being sent and flushed. URL parameter:
	// ack_sync. Default false: acks are flushed when a subscription stops.
	AckSync bool
	// PublishAsyncMaxPending bounds unacknowledged publishes of one
	// multi-message Publish in flight at once
	// (jetstream.WithPublishAsyncMaxPending). URL parameter:
	// publish_async_max_pending. Default 4000.
	PublishAsyncMaxPending int
	// EphemeralInactiveThreshold is how long the server keeps the
	// ephemeral consumer of a subscription without a group after its
	// client vanished (inactive_threshold). URL parameter:
	// ephemeral_inactive. Default 30s.
	EphemeralInactiveThreshold time.Duration

	// Logger receives connection events and settle failures. Default
	// nil: discard.
	Logger *slog.Logger
	// NATSOptions are appended to the options the Transport builds,
	// for what Options does not cover. Not reachable by URL.
	NATSOptions []nats.Option
}

func (o Options) withDefaults() Options {
	if o.URL == "" {
		o.URL = nats.DefaultURL
	}
	if o.Name == "" {
		o.Name = "courier"
	}
	if o.ConnectTimeout <= 0 {
		o.ConnectTimeout = 5 * time.Second
	}
	if o.ReconnectWait <= 0 {
		o.ReconnectWait = nats.DefaultReconnectWait
	}
	if o.ReconnectBufSize <= 0 {
		o.ReconnectBufSize = nats.DefaultReconnectBufSize
	}
	if o.SubjectPrefix == "" && !o.NoSubjectPrefix {
		o.SubjectPrefix = "courier."
	}
	if o.NoSubjectPrefix {
		o.SubjectPrefix = ""
	}
	if o.StreamPrefix == "" {
		o.StreamPrefix = "COURIER_"
	}
	if o.Storage == "" {
		o.Storage = "file"
	}
	if o.Retention == "" {
		o.Retention = "limits"
	}
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.MaxAge <= 0 {
		o.MaxAge = 7 * 24 * time.Hour
	}
	if o.DuplicateWindow <= 0 {
		o.DuplicateWindow = 2 * time.Minute
	}
	if o.APITimeout <= 0 {
		o.APITimeout = 5 * time.Second
	}
	if o.PublishAsyncMaxPending <= 0 {
		o.PublishAsyncMaxPending = 4000
	}
	if o.EphemeralInactiveThreshold <= 0 {
		o.EphemeralInactiveThreshold = 30 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

func (o Options) validate() error {
	switch o.Storage {
	case "file", "memory":
	default:
		return fmt.Errorf("%w: storage %q: want file or memory", ErrInvalidOption, o.Storage)
	}
	switch o.Retention {
	case "limits", "interest":
	default:
		return fmt.Errorf("%w: retention %q: want limits or interest", ErrInvalidOption, o.Retention)
	}
	if (o.TLSCertFile == "") != (o.TLSKeyFile == "") {
		return fmt.Errorf("%w: tls_cert and tls_key go together", ErrInvalidOption)
	}
	if o.Stream != "" && strings.ContainsAny(o.Stream, ".*> \t\r\n/\\") {
		return fmt.Errorf("%w: stream %q is not a valid stream name", ErrInvalidOption, o.Stream)
	}
	if strings.ContainsAny(o.SubjectPrefix, "*> \t\r\n") {
		return fmt.Errorf("%w: subject_prefix %q must not hold wildcards or spaces", ErrInvalidOption, o.SubjectPrefix)
	}
	if strings.ContainsAny(o.StreamPrefix, ".*> \t\r\n/\\") {
		return fmt.Errorf("%w: stream_prefix %q is not valid in a stream name", ErrInvalidOption, o.StreamPrefix)
	}
	return nil
}

// secrets are the credentials in o, for scrubbing error texts.
func (o Options) secrets() []string {
	s := []string{o.Password, o.Token}
	if u, err := url.Parse(o.URL); err == nil && u.User != nil {
		s = append(s, u.User.Username())
		if p, ok := u.User.Password(); ok {
			s = append(s, p)
		}
	}
	if o.User != "" && o.Password != "" {
		// a user name alone is not secret; with a password it is kept
		// out anyway, as nats URLs use it as a token too.
		s = append(s, o.User)
	}
	for _, srv := range o.Servers {
		s = append(s, userInfoSecrets(srv)...)
	}
	return s
}

// userInfoSecrets lists the user name (a token when alone) and password
// of a server URL's user-info, "[scheme://]user[:password]@host...", as
// written and percent-decoded. It does not need the URL to parse: a
// malformed entry is the one an error message echoes.
func userInfoSecrets(raw string) []string {
	if i := strings.Index(raw, "://"); i >= 0 {
		raw = raw[i+3:]
	}
	if i := strings.IndexAny(raw, "/?#"); i >= 0 {
		raw = raw[:i]
	}
	at := strings.LastIndex(raw, "@")
	if at < 0 {
		return nil
	}
	var s []string
	for _, part := range strings.SplitN(raw[:at], ":", 2) {
		if part == "" {
			continue
		}
		s = append(s, part)
		if dec, err := url.PathUnescape(part); err == nil && dec != part {
			s = append(s, dec)
		}
	}
	return s
}

func init() {
	transport.Register("nats", open)
	transport.Register("nats+tls", open)
}

// open is the transport.Opener for nats:// and nats+tls:// URLs.
func open(ctx context.Context, u *url.URL) (transport.Conn, error) {
	o, err := ParseURL(u)
	if err != nil {
		return nil, err
	}
	return New(ctx, o)
}

// ParseURL maps a nats:// or nats+tls:// URL onto Options, as
// transport.Open does: user-info gives User/Password (or Token when there
// is no password), and every Options field has a query parameter (see
// the package doc). An unknown parameter is an error naming the accepted
// ones.
func ParseURL(u *url.URL) (Options, error) {
	var o Options
	scheme := strings.ToLower(u.Scheme)
	switch scheme {
	case "nats":
	case "nats+tls":
		o.TLS = &tls.Config{MinVersion: tls.VersionTLS12}
	default:
		return o, fmt.Errorf("%w: scheme %q: want nats or nats+tls", ErrInvalidOption, u.Scheme)
	}
	if u.Host == "" {
		return o, fmt.Errorf("%w: no host in URL (want nats://host:port)", ErrInvalidOption)
	}
	if u.Path != "" && u.Path != "/" {
		return o, fmt.Errorf("%w: unexpected path %q (topics are not part of the URL)", ErrInvalidOption, u.Path)
	}
	host := u.Host
	if u.Port() == "" {
		host += ":4222"
	}
	if scheme == "nats+tls" {
		o.URL = "tls://" + host
	} else {
		o.URL = "nats://" + host
	}
	if u.User != nil {
		if p, ok := u.User.Password(); ok {
			o.User, o.Password = u.User.Username(), p
		} else {
			o.Token = u.User.Username()
		}
	}
	q := transport.NewQuery(u)
	q.List("servers", &o.Servers)
	q.String("name", &o.Name)
	q.String("token", &o.Token)
	q.String("creds", &o.CredsFile)
	q.String("nkey_seed", &o.NKeySeedFile)
	q.String("tls_ca", &o.TLSCAFile)
	q.String("tls_cert", &o.TLSCertFile)
	q.String("tls_key", &o.TLSKeyFile)
	q.Bool("tls_handshake_first", &o.TLSHandshakeFirst)
	q.Duration("connect_timeout", &o.ConnectTimeout)
	q.Duration("reconnect_wait", &o.ReconnectWait)
	q.Int("max_reconnects", &o.MaxReconnects)
	q.Int("reconnect_buf_size", &o.ReconnectBufSize)
	q.Bool("core", &o.Core)
	q.String("stream", &o.Stream)
	q.String("subject_prefix", &o.SubjectPrefix)
	q.Bool("no_subject_prefix", &o.NoSubjectPrefix)
	q.String("stream_prefix", &o.StreamPrefix)
	q.Bool("no_provision", &o.NoProvision)
	q.Enum("storage", &o.Storage, "file", "memory")
	q.Enum("retention", &o.Retention, "limits", "interest")
	q.Int("replicas", &o.Replicas)
	q.Duration("max_age", &o.MaxAge)
	q.Int64("max_bytes", &o.MaxBytes)
	q.Duration("duplicate_window", &o.DuplicateWindow)
	q.Duration("api_timeout", &o.APITimeout)
	q.Bool("ack_sync", &o.AckSync)
	q.Int("publish_async_max_pending", &o.PublishAsyncMaxPending)
	q.Duration("ephemeral_inactive", &o.EphemeralInactiveThreshold)
	if err := q.Err(); err != nil {
		return o, fmt.Errorf("%w: %w", ErrInvalidOption, err)
	}
	return o, nil
}

// natsOptions builds the nats.go connection options.
func (o Options) natsOptions(t *Transport) ([]nats.Option, error) {
	opts := []nats.Option{
		nats.Name(o.Name),
		nats.Timeout(o.ConnectTimeout),
		nats.ReconnectWait(o.ReconnectWait),
		nats.ReconnectBufSize(o.ReconnectBufSize),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				t.log.Warn("natstransport: disconnected; reconnecting", "error", t.redact(err))
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			t.log.Info("natstransport: reconnected", "server", redactServer(nc.ConnectedUrlRedacted()))
		}),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subj := ""
			if sub != nil {
				subj = sub.Subject
			}
			t.log.Warn("natstransport: async error", "subject", subj, "error", t.redact(err))
		}),
	}
	if o.MaxReconnects > 0 {
		opts = append(opts, nats.MaxReconnects(o.MaxReconnects))
	} else {
		opts = append(opts, nats.MaxReconnects(-1))
	}
	if o.User != "" || o.Password != "" {
		opts = append(opts, nats.UserInfo(o.User, o.Password))
	}
	if o.Token != "" {
		opts = append(opts, nats.Token(o.Token))
	}
	if o.CredsFile != "" {
		opts = append(opts, nats.UserCredentials(o.CredsFile))
	}
	if o.NKeySeedFile != "" {
		nk, err := nats.NkeyOptionFromSeed(o.NKeySeedFile)
		if err != nil {
			return nil, fmt.Errorf("%w: nkey_seed: %w", ErrInvalidOption, err)
		}
		opts = append(opts, nk)
	}
	if o.TLS != nil {
		opts = append(opts, nats.Secure(o.TLS.Clone()))
	}
	if o.TLSCAFile != "" {
		opts = append(opts, nats.RootCAs(o.TLSCAFile))
	}
	if o.TLSCertFile != "" {
		opts = append(opts, nats.ClientCert(o.TLSCertFile, o.TLSKeyFile))
	}
	if o.TLSHandshakeFirst {
		opts = append(opts, nats.TLSHandshakeFirst())
	}
	return append(opts, o.NATSOptions...), nil
}

func redactServer(s string) string { return transport.Redact(s) }

// ErrInvalidOption is matched by errors for bad Options or URL parameters.
var ErrInvalidOption = errors.New("natstransport: invalid option")
