package kafkatransport_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/courierkit/courier/internal/testenv"
	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
	kafkatransport "github.com/courierkit/courier/transport/kafka"
)

func TestParseURL(t *testing.T) {
	u, _ := url.Parse("kafka+tls://alice:s3cr%40t@h1:9093,h3,h2:9094?client_id=svc&version=3.6.0&sasl_mechanism=SCRAM-SHA-512" +
		"&tls_server_name=kafka.internal&partitions=6&replication_factor=3&create_topics=false&max_message_bytes=2000000" +
		"&linger=2ms&publish_timeout=5s&compression=zstd&fetch_bytes=65536&commit_interval=2s&session_timeout=20s&heartbeat_interval=2s" +
		"&rebalance_timeout=30s&balance=range&retry_backoff=1s&retry_backoff_max=1m&reconnect_backoff=2s")
	o, err := kafkatransport.ParseURL(u)
	if err != nil {
		t.Fatal(err)
	}
	checks := []struct {
		name     string
		got, not any
	}{
		{"brokers", strings.Join(o.Brokers, ","), "h1:9093,h3:9092,h2:9094"},
		{"user", o.SASLUser, "alice"},
		{"password", o.SASLPassword, "s3cr@t"},
		{"client_id", o.ClientID, "svc"},
		{"version", o.Version, "3.6.0"},
		{"sasl_mechanism", o.SASLMechanism, "SCRAM-SHA-512"},
		{"tls", o.TLS != nil && o.TLS.ServerName == "kafka.internal", true},
		{"partitions", o.Partitions, 6},
		{"replication_factor", o.ReplicationFactor, 3},
		{"create_topics", o.NoCreateTopics, true},
		{"max_message_bytes", o.MaxMessageBytes, 2000000},
		{"linger", o.Linger, 2 * time.Millisecond},
		{"publish_timeout", o.PublishTimeout, 5 * time.Second},
		{"compression", o.Compression, "zstd"},
		{"fetch_bytes", o.FetchBytes, 65536},
		{"commit_interval", o.CommitInterval, 2 * time.Second},
		{"session_timeout", o.SessionTimeout, 20 * time.Second},
		{"heartbeat_interval", o.HeartbeatInterval, 2 * time.Second},
		{"rebalance_timeout", o.RebalanceTimeout, 30 * time.Second},
		{"balance", o.Balance, "range"},
		{"retry_backoff", o.RetryBackoff, time.Second},
		{"retry_backoff_max", o.RetryBackoffMax, time.Minute},
		{"reconnect_backoff", o.ReconnectBackoff, 2 * time.Second},
	}
	for _, c := range checks {
		if c.got != c.not {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.not)
		}
	}

	for _, bad := range []string{
		"kafka://h1:9092?nope=1",
		"kafka://h1:9092?partitions=x",
		"kafka://h1:9092?balance=fair",
		"kafka://h1:9092/topic",
		"kafka://h1:9092?tls_server_name=x",
		"kafka://?partitions=1",
	} {
		u, _ := url.Parse(bad)
		if _, err := kafkatransport.ParseURL(u); err == nil {
			t.Errorf("ParseURL(%s): no error", bad)
		}
	}
	u, _ = url.Parse("kafka://h1:9092?nope=1")
	_, err = kafkatransport.ParseURL(u)
	if err == nil || !strings.Contains(err.Error(), "accepted:") || !strings.Contains(err.Error(), "max_message_bytes") {
		t.Errorf("unknown parameter error does not list the accepted ones: %v", err)
	}
}

func TestOpenRedactsCredentials(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := transport.Open(ctx, "kafka://alice:hunter2-secret@127.0.0.1:1?sasl_mechanism=PLAIN&version=0.10.0")
	if err == nil {
		t.Fatal("Open with version 0.10 succeeded")
	}
	if strings.Contains(err.Error(), "hunter2-secret") || strings.Contains(err.Error(), "alice") {
		t.Fatalf("error shows a credential: %v", err)
	}
}

// Publish checks sizes the way the broker will: over the limit is a
// *LimitError before anything is sent; a topic whose max.message.bytes
// is below the producer's gets the broker's refusal as ErrMessageTooLarge.
func TestLimits(t *testing.T) {
	tr := newTransport(t, testOptions(t))
	ctx := context.Background()
	topic := name(t, "t")
	l := tr.Capabilities().Limits
	big := &message.Message{ID: strings.Repeat("i", 64), Payload: make([]byte, l.MaxPayload)}
	if err := tr.Publish(ctx, topic, big); err != nil {
		t.Fatalf("a message of MaxPayload: %v", err)
	}
	over := &message.Message{Payload: make([]byte, l.MaxMessage+1)}
	var le *transport.LimitError
	if err := tr.Publish(ctx, topic, message.New(nil), over); !errors.As(err, &le) || le.Index != 1 {
		t.Fatalf("over the limit: %v, want a *LimitError for message 1", err)
	}
	// Many headers: each costs record overhead, the check counts it.
	h := message.Header{}
	for i := range 100 {
		h["h"+strings.Repeat("x", i)] = "v"
	}
	m := &message.Message{Headers: h, Payload: make([]byte, l.MaxPayload-200)}
	if err := tr.Publish(ctx, topic, m); !errors.Is(err, transport.ErrLimit) {
		t.Fatalf("headers pushing the record over max_message_bytes: %v, want ErrLimit", err)
	}
	if err := tr.Publish(ctx, topic, &message.Message{Headers: message.Header{kafkatransport.HeaderID: "x"}}); !errors.Is(err, transport.ErrInvalidMessage) {
		t.Fatalf("reserved header: %v, want ErrInvalidMessage", err)
	}

	if testenv.KafkaExternal() {
		return
	}
	var admin sarama.ClusterAdmin
	tr.As(&admin)
	small := name(t, "small")
	if err := admin.CreateTopic(small, &sarama.TopicDetail{NumPartitions: 1, ReplicationFactor: -1,
		ConfigEntries: map[string]*string{"max.message.bytes": ptr("2000")}}, false); err != nil {
		t.Fatal(err)
	}
	err := tr.Publish(ctx, small, &message.Message{Payload: make([]byte, 10000)})
	if !errors.Is(err, kafkatransport.ErrMessageTooLarge) || !errors.Is(err, transport.ErrLimit) || !errors.Is(err, sarama.ErrMessageSizeTooLarge) {
		t.Fatalf("over the topic's max.message.bytes: %v, want ErrMessageTooLarge, ErrLimit and sarama.ErrMessageSizeTooLarge", err)
	}
}

func ptr[T any](v T) *T { return &v }

// SASL PLAIN and SCRAM against a kfake cluster that requires them; a wrong
// password fails without showing it.
func TestSASL(t *testing.T) {
	if testenv.KafkaExternal() {
		t.Skip("needs a private kfake cluster with SASL")
	}
	brokers(t) // skip or fail like every other test when kfake cannot run
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.EnableSASL(),
		kfake.Superuser("PLAIN", "plainuser", "plain-pass-1"),
		kfake.Superuser("SCRAM-SHA-256", "scram256", "scram-pass-256"),
		kfake.Superuser("SCRAM-SHA-512", "scram512", "scram-pass-512"),
	)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	addr := c.ListenAddrs()[0]
	for _, tc := range []struct{ mech, user, pass string }{
		{"PLAIN", "plainuser", "plain-pass-1"},
		{"SCRAM-SHA-256", "scram256", "scram-pass-256"},
		{"SCRAM-SHA-512", "scram512", "scram-pass-512"},
	} {
		t.Run(tc.mech, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			conn, err := transport.Open(ctx, "kafka://"+tc.user+":"+tc.pass+"@"+addr+"?sasl_mechanism="+tc.mech)
			if err != nil {
				t.Fatalf("Open: %v", err)
			}
			defer conn.Close()
			if err := conn.Publish(ctx, "sasl-"+strings.ToLower(tc.mech), message.New([]byte("x"))); err != nil {
				t.Fatalf("Publish: %v", err)
			}
			_, err = transport.Open(ctx, "kafka://"+tc.user+":wrong-"+tc.pass+"@"+addr+"?sasl_mechanism="+tc.mech)
			if err == nil {
				t.Fatal("Open with a wrong password succeeded")
			}
			if strings.Contains(err.Error(), tc.pass) || strings.Contains(err.Error(), tc.user) {
				t.Fatalf("error shows a credential: %v", err)
			}
		})
	}
}

// kafka+tls:// with tls_ca trusts a private CA; without it the handshake
// fails.
func TestTLS(t *testing.T) {
	if testenv.KafkaExternal() {
		t.Skip("needs a private kfake cluster with TLS")
	}
	brokers(t)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "courier test"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IPAddresses:           []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.TLS(&tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}},
		MinVersion:   tls.VersionTLS12,
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	addr := c.ListenAddrs()[0]
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	conn, err := transport.Open(ctx, "kafka+tls://"+addr+"?tls_ca="+url.QueryEscape(caFile))
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer conn.Close()
	if err := conn.Publish(ctx, "tls-topic", message.New([]byte("x"))); err != nil {
		t.Fatalf("Publish over TLS: %v", err)
	}
	sctx, scancel := context.WithTimeout(ctx, 3*time.Second)
	defer scancel()
	if c2, err := transport.Open(sctx, "kafka+tls://"+addr); err == nil {
		c2.Close()
		t.Fatal("Open without the CA succeeded")
	}
}

// A Publish call is one round of requests: by default (no linger) and
// with Linger alike, the records of one call leave as exactly one produce
// request per partition leader broker.
func TestPublishOneRequestPerCall(t *testing.T) {
	if testenv.KafkaExternal() {
		t.Skip("counts requests on a private kfake cluster")
	}
	brokers(t)
	c, err := kfake.NewCluster(kfake.NumBrokers(3))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const topic = "one-round"
	var produces, records atomic.Int64
	c.ControlKey(int16(kmsg.Produce), func(r kmsg.Request) (kmsg.Response, error, bool) {
		c.KeepControl()
		req := r.(*kmsg.ProduceRequest)
		for _, tp := range req.Topics {
			if tp.Topic == topic {
				produces.Add(1)
				for _, p := range tp.Partitions {
					var b kmsg.RecordBatch
					if err := b.ReadFrom(p.Records); err == nil {
						records.Add(int64(b.NumRecords))
					}
				}
				break
			}
		}
		return nil, nil, false // count only; kfake handles the request
	})
	o := testOptions(t)
	o.Brokers = c.ListenAddrs()
	o.Partitions = 6
	plain := newTransport(t, o)
	o.Linger = 20 * time.Millisecond // generous: the race detector and a loaded CI box
	lingering := newTransport(t, o)
	ctx := context.Background()
	if err := plain.Publish(ctx, topic, message.New(nil)); err != nil { // creates the topic, warms up
		t.Fatal(err)
	}
	// The leaders of the topic's partitions: one request each per call.
	var client sarama.Client
	if !plain.As(&client) {
		t.Fatal("As(*sarama.Client) failed")
	}
	parts, err := client.Partitions(topic)
	if err != nil {
		t.Fatal(err)
	}
	leaders := map[int32]bool{}
	for _, p := range parts {
		b, err := client.Leader(topic, p)
		if err != nil {
			t.Fatal(err)
		}
		leaders[b.ID()] = true
	}
	t.Logf("%d partitions on %d leader brokers", len(parts), len(leaders))
	for round := range 5 {
		var ms []*message.Message
		for i := range 100 {
			ms = append(ms, &message.Message{Key: strconv.Itoa(i), Payload: []byte("x")}) // every partition
		}
		for _, v := range []struct {
			name string
			tr   *kafkatransport.Transport
		}{{"default", plain}, {"linger", lingering}} {
			before, beforeRecs := produces.Load(), records.Load()
			if err := v.tr.Publish(ctx, topic, ms...); err != nil {
				t.Fatal(err)
			}
			if n := produces.Load() - before; n != int64(len(leaders)) {
				t.Errorf("round %d, %s: %d produce requests for one Publish of 100 messages, want %d (one per leader)", round, v.name, n, len(leaders))
			}
			if n := records.Load() - beforeRecs; n != int64(len(ms)) {
				t.Errorf("round %d, %s: %d records in the produce requests, want %d", round, v.name, n, len(ms))
			}
		}
	}
	// Every record arrived once, in the order of its key.
	got := map[string]int{}
	cons, err := sarama.NewConsumerFromClient(client)
	if err != nil {
		t.Fatal(err)
	}
	defer cons.Close()
	total := 0
	for _, p := range parts {
		hwm, err := client.GetOffset(topic, p, sarama.OffsetNewest)
		if err != nil {
			t.Fatal(err)
		}
		if hwm == 0 {
			continue
		}
		pc, err := cons.ConsumePartition(topic, p, sarama.OffsetOldest)
		if err != nil {
			t.Fatal(err)
		}
		for {
			var m *sarama.ConsumerMessage
			select {
			case m = <-pc.Messages():
			case <-time.After(10 * time.Second):
				t.Fatalf("partition %d: nothing read within 10s", p)
			}
			if len(m.Key) > 0 {
				got[string(m.Key)]++
			}
			total++
			if m.Offset == hwm-1 {
				break
			}
		}
		pc.Close()
	}
	if total != 1+5*2*100 {
		t.Errorf("%d records in the topic, want %d", total, 1+5*2*100)
	}
	for k, n := range got {
		if n != 10 {
			t.Errorf("key %s: %d records, want 10", k, n)
		}
	}
}
