package transport

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
)

// TLSFile is one PEM file of a TLS client configuration: Path, where it
// is, and Param, the adapter's URL parameter that named it (errors name
// the parameter). A zero TLSFile is "not given".
type TLSFile struct {
	Param string
	Path  string
}

// name is f's parameter name for errors, or what when it has none.
func (f TLSFile) name(what string) string {
	if f.Param != "" {
		return f.Param
	}
	return what
}

// TLSFromFiles builds a client *tls.Config (TLS 1.2 at least) from URL
// parameters: ca, when given, holds the PEM certificates trusted instead
// of the system roots; cert and key, given together, are the PEM client
// certificate and its private key. serverName and insecureSkipVerify are
// copied to the config (skipping verification is the caller's opt-in).
//
// Errors name the parameter and the path, never a file's contents; the
// caller adds its package prefix.
func TLSFromFiles(ca, cert, key TLSFile, serverName string, insecureSkipVerify bool) (*tls.Config, error) {
	tc := &tls.Config{ServerName: serverName, InsecureSkipVerify: insecureSkipVerify, MinVersion: tls.VersionTLS12} //nolint:gosec // #nosec G402 -- opt-in by URL parameter
	if ca.Path != "" {
		data, err := os.ReadFile(ca.Path)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", ca.Param, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(data) {
			return nil, fmt.Errorf("%s %s holds no PEM certificate", ca.Param, ca.Path)
		}
		tc.RootCAs = pool
	}
	switch {
	case cert.Path == "" && key.Path == "":
		return tc, nil
	case key.Path == "":
		return nil, fmt.Errorf("%s given without %s", cert.name("client certificate"), key.name("its private key"))
	case cert.Path == "":
		return nil, fmt.Errorf("%s given without %s", key.name("private key"), cert.name("its client certificate"))
	}
	certPEM, err := os.ReadFile(cert.Path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", cert.Param, err)
	}
	keyPEM, err := os.ReadFile(key.Path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", key.Param, err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		// crypto/tls reports which half is wrong without quoting either.
		return nil, fmt.Errorf("%s %s / %s %s: %w", cert.Param, cert.Path, key.Param, key.Path, err)
	}
	tc.Certificates = []tls.Certificate{pair}
	return tc, nil
}
