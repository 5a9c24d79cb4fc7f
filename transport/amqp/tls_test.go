package amqptransport

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/courierkit/courier/internal/testenv"
	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/transport"
)

// writeCerts makes a CA and a server certificate for 127.0.0.1 and
// localhost in dir and returns the file names.
func writeCerts(t *testing.T, dir string) *testenv.RabbitTLS {
	t.Helper()
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caKey, srvKey := key(), key()
	now := time.Now()
	ca := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "courier test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	srv := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "localhost"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srv, ca, &srvKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(srvKey)
	if err != nil {
		t.Fatal(err)
	}
	return &testenv.RabbitTLS{
		CAFile:   write("ca.pem", "CERTIFICATE", caDER),
		CertFile: write("server.pem", "CERTIFICATE", srvDER),
		KeyFile:  write("server-key.pem", "PRIVATE KEY", keyDER),
	}
}

// TestTLS: amqps:// with ca_file verifies the broker's certificate and
// carries messages; an untrusted certificate is an error that does not
// show the password. Needs a private node (it has the TLS listener).
func TestTLS(t *testing.T) {
	dir := t.TempDir()
	certs := writeCerts(t, dir)
	node, err := testenv.StartRabbitMQTLS(t, certs)
	if err != nil {
		testenv.Unavailable(t, "RabbitMQ with TLS: a private node did not start: "+err.Error())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	u := node.TLSURL() + "?ca_file=" + certs.CAFile
	c, err := transport.Open(ctx, u)
	if err != nil {
		t.Fatalf("Open(amqps with ca_file): %v", err)
	}
	defer c.Close()
	topic, group := "tls-topic", "g"
	o := transport.SubscribeOptions{Group: group}
	if err := c.Declare(ctx, topic, o); err != nil {
		t.Fatal(err)
	}
	m := &message.Message{Key: "k", Payload: []byte("over TLS"), Headers: message.Header{"h": "v"}}
	if err := c.Publish(ctx, topic, m); err != nil {
		t.Fatal(err)
	}
	got := make(chan *message.Message, 1)
	sctx, scancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- c.Subscribe(sctx, topic, message.HandlerFunc(func(_ context.Context, g *message.Message) error {
			select {
			case got <- g:
			default:
			}
			return nil
		}), o)
	}()
	select {
	case g := <-got:
		if g.ID != m.ID || string(g.Payload) != "over TLS" || g.Headers["h"] != "v" || g.Key != "k" {
			t.Errorf("got %+v", g)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("not delivered over TLS")
	}
	scancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Errorf("Subscribe = %v", err)
	}
	// Without the CA the system roots do not trust the certificate.
	const secret = "tls-s3cret"
	bad := strings.Replace(node.TLSURL(), "guest:guest@", "guest:"+secret+"@", 1)
	if _, err := transport.Open(ctx, bad); err == nil || strings.Contains(err.Error(), secret) {
		t.Errorf("untrusted certificate: err %v (want an error without the password)", err)
	} else {
		var ue x509.UnknownAuthorityError
		if !errors.As(err, &ue) {
			t.Logf("untrusted certificate error (not an x509.UnknownAuthorityError): %v", err)
		}
	}
	// Credentials from Options over TLS; a wrong password is refused and
	// not echoed.
	if _, err := transport.Open(ctx, strings.Replace(u, "guest:guest@", "guest:"+secret+"@", 1)); err == nil || strings.Contains(err.Error(), secret) {
		t.Errorf("wrong password over TLS: err %v", err)
	}

	// Memory alarm (watermark 0): the broker blocks publishers; Publish
	// returns with its ctx instead of hanging in a write, and goes
	// through once the alarm clears.
	if _, err := node.Ctl(ctx, "set_vm_memory_high_watermark", "0"); err != nil {
		t.Fatal(err)
	}
	blocked := func() bool {
		select {
		case <-c.(*Transport).whenUnblocked():
			return false
		default:
			return true
		}
	}
	// The broker sends connection.blocked on the next publish.
	pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
	perr := c.Publish(pctx, topic, message.New([]byte("during the alarm")))
	pcancel()
	if perr == nil && !eventually(5*time.Second, blocked) {
		t.Fatalf("no connection.blocked after a memory alarm")
	}
	pctx, pcancel = context.WithTimeout(ctx, time.Second)
	start := time.Now()
	perr = c.Publish(pctx, topic, message.New([]byte("blocked")))
	pcancel()
	if !errors.Is(perr, context.DeadlineExceeded) || time.Since(start) > 3*time.Second {
		t.Errorf("Publish while blocked = %v after %v, want context.DeadlineExceeded after ~1s", perr, time.Since(start))
	}
	if _, err := node.Ctl(ctx, "set_vm_memory_high_watermark", "0.4"); err != nil {
		t.Fatal(err)
	}
	if err := c.Publish(ctx, topic, message.New([]byte("after the alarm"))); err != nil {
		t.Errorf("Publish after the alarm cleared: %v", err)
	}

	// Broker down (the node is private, so it can be stopped): Publish
	// waits at most PublishRetry for a connection and then fails with
	// ErrUnconfirmed, never reporting success; a running Subscribe keeps
	// waiting for the reconnect; Close returns promptly.
	tr, err := New(ctx, Options{URL: node.URL(), PublishRetry: time.Second, ReconnectMax: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.Declare(ctx, topic, o); err != nil {
		t.Fatal(err)
	}
	subErr := make(chan error, 1)
	go func() {
		subErr <- tr.Subscribe(context.Background(), topic, message.HandlerFunc(func(context.Context, *message.Message) error { return nil }), o)
	}()
	node.Stop()
	start = time.Now()
	err = tr.Publish(ctx, topic, message.New([]byte("nowhere to go")))
	if !errors.Is(err, ErrUnconfirmed) {
		t.Errorf("Publish with the broker down = %v, want ErrUnconfirmed", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("Publish with the broker down took %v (PublishRetry 1s)", d)
	}
	select {
	case err := <-subErr:
		t.Errorf("Subscribe returned while the broker was down: %v", err)
	default:
	}
	cstart := time.Now()
	tr.Close()
	select {
	case err := <-subErr:
		if !errors.Is(err, transport.ErrClosed) {
			t.Errorf("Subscribe after Close = %v, want ErrClosed", err)
		}
	case <-time.After(10 * time.Second):
		t.Error("Subscribe did not return after Close while the broker was down")
	}
	if d := time.Since(cstart); d > 5*time.Second {
		t.Errorf("Close took %v while the broker was down", d)
	}
}
