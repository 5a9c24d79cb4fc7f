package transport_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/courierkit/courier/transport"
)

// tlsFiles writes a throwaway CA and a client certificate it signed, as
// PEM files in a temporary directory.
type tlsFiles struct {
	dir                    string
	ca, cert, key, keyOnly string
	caDER                  []byte
}

func writeTLSFiles(t *testing.T) tlsFiles {
	t.Helper()
	dir := t.TempDir()
	write := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "courier test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		t.Fatal(err)
	}
	cliKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cliTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "courier test client"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	cliDER, err := x509.CreateCertificate(rand.Reader, cliTmpl, caCert, &cliKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(cliKey)
	if err != nil {
		t.Fatal(err)
	}
	return tlsFiles{
		dir:   dir,
		ca:    write("ca.pem", "CERTIFICATE", caDER),
		cert:  write("client.pem", "CERTIFICATE", cliDER),
		key:   write("client-key.pem", "PRIVATE KEY", keyDER),
		caDER: caDER,
	}
}

func ca(p string) transport.TLSFile   { return transport.TLSFile{Param: "ca_file", Path: p} }
func cert(p string) transport.TLSFile { return transport.TLSFile{Param: "cert_file", Path: p} }
func key(p string) transport.TLSFile  { return transport.TLSFile{Param: "key_file", Path: p} }

// noSecrets fails the test when err shows PEM contents.
func noSecrets(t *testing.T, err error) {
	t.Helper()
	if s := err.Error(); strings.Contains(s, "BEGIN") || strings.Contains(s, "PRIVATE KEY-") {
		t.Errorf("error shows file contents: %v", err)
	}
}

func TestTLSFromFilesCAOnly(t *testing.T) {
	f := writeTLSFiles(t)
	tc, err := transport.TLSFromFiles(ca(f.ca), transport.TLSFile{}, transport.TLSFile{}, "broker.example", false)
	if err != nil {
		t.Fatal(err)
	}
	if tc.MinVersion < tls.VersionTLS12 || tc.ServerName != "broker.example" || tc.InsecureSkipVerify || len(tc.Certificates) != 0 {
		t.Errorf("config %+v", tc)
	}
	if tc.RootCAs == nil {
		t.Fatal("RootCAs not set")
	}
	// The pool trusts exactly the CA written: a certificate it signed
	// verifies against it.
	caCert, err := x509.ParseCertificate(f.caDER)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := caCert.Verify(x509.VerifyOptions{Roots: tc.RootCAs}); err != nil {
		t.Errorf("CA does not verify against RootCAs: %v", err)
	}
}

func TestTLSFromFilesNothingGiven(t *testing.T) {
	tc, err := transport.TLSFromFiles(transport.TLSFile{}, transport.TLSFile{}, transport.TLSFile{}, "", true)
	if err != nil {
		t.Fatal(err)
	}
	if tc.RootCAs != nil || len(tc.Certificates) != 0 || !tc.InsecureSkipVerify || tc.MinVersion < tls.VersionTLS12 {
		t.Errorf("config %+v", tc)
	}
}

func TestTLSFromFilesClientCert(t *testing.T) {
	f := writeTLSFiles(t)
	tc, err := transport.TLSFromFiles(ca(f.ca), cert(f.cert), key(f.key), "", false)
	if err != nil {
		t.Fatal(err)
	}
	if len(tc.Certificates) != 1 || tc.RootCAs == nil {
		t.Fatalf("config %+v", tc)
	}
	leaf, err := x509.ParseCertificate(tc.Certificates[0].Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	if leaf.Subject.CommonName != "courier test client" {
		t.Errorf("client certificate %q", leaf.Subject.CommonName)
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: tc.RootCAs, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err != nil {
		t.Errorf("client certificate does not verify against the CA: %v", err)
	}
	// Without a CA the system roots stay in use.
	tc, err = transport.TLSFromFiles(transport.TLSFile{}, cert(f.cert), key(f.key), "", false)
	if err != nil {
		t.Fatal(err)
	}
	if tc.RootCAs != nil || len(tc.Certificates) != 1 {
		t.Errorf("config %+v", tc)
	}
}

func TestTLSFromFilesErrors(t *testing.T) {
	f := writeTLSFiles(t)
	missing := filepath.Join(f.dir, "missing.pem")
	garbage := filepath.Join(f.dir, "garbage.pem")
	if err := os.WriteFile(garbage, []byte("not a certificate\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name          string
		ca, cert, key transport.TLSFile
		want          []string // substrings of the error
		notExist      bool
	}{
		{name: "cert without key", cert: cert(f.cert), key: key(""), want: []string{"cert_file given without key_file"}},
		{name: "key without cert", cert: cert(""), key: key(f.key), want: []string{"key_file given without cert_file"}},
		{name: "missing CA", ca: ca(missing), want: []string{"ca_file", missing}, notExist: true},
		{name: "missing cert", cert: cert(missing), key: key(f.key), want: []string{"cert_file", missing}, notExist: true},
		{name: "missing key", cert: cert(f.cert), key: key(missing), want: []string{"key_file", missing}, notExist: true},
		{name: "CA not PEM", ca: ca(garbage), want: []string{"ca_file", garbage, "no PEM certificate"}},
		{name: "cert not PEM", cert: cert(garbage), key: key(f.key), want: []string{"cert_file", "key_file", garbage}},
		{name: "key not PEM", cert: cert(f.cert), key: key(garbage), want: []string{"cert_file", "key_file", garbage}},
		{name: "key is a certificate", cert: cert(f.cert), key: key(f.ca), want: []string{"cert_file", "key_file"}},
		{name: "key and cert swapped", cert: cert(f.key), key: key(f.cert), want: []string{"cert_file", "key_file"}},
		{name: "unnamed partner", cert: cert(f.cert), want: []string{"cert_file given without its private key"}},
		{name: "kafka parameter name", ca: transport.TLSFile{Param: "tls_ca", Path: garbage}, want: []string{"tls_ca " + garbage}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tc, err := transport.TLSFromFiles(tt.ca, tt.cert, tt.key, "", false)
			if err == nil {
				t.Fatalf("no error; config %+v", tc)
			}
			if tc != nil {
				t.Errorf("config %+v returned with the error", tc)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if tt.notExist != errors.Is(err, fs.ErrNotExist) {
				t.Errorf("errors.Is(%v, fs.ErrNotExist) = %v", err, !tt.notExist)
			}
			noSecrets(t, err)
		})
	}
}
