// Package testenv finds or starts the brokers courier's tests run against.
//
// For each broker the rule is the same (see Find): use the address in the
// broker's environment variable; else the standard loopback port if
// something answers there; else start a private instance from installed
// binaries (temp dir, random port, loopback only); else skip the test — and
// under CI=true fail instead, so a broker that cannot be reached never
// passes silently.
package testenv

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"testing"
	"time"
)

// InCI reports whether CI=true (or 1): unreachable brokers fail tests.
func InCI() bool {
	v, _ := strconv.ParseBool(os.Getenv("CI"))
	return v
}

// Unavailable skips t with reason, or fails it under CI.
func Unavailable(t testing.TB, reason string) {
	t.Helper()
	if InCI() {
		t.Fatalf("testenv: %s (CI=true: a broker that cannot be reached fails the run)", reason)
	}
	t.Skipf("testenv: %s", reason)
}

// Reachable reports whether a TCP connection to addr succeeds within d.
func Reachable(addr string, d time.Duration) bool {
	c, err := net.DialTimeout("tcp", addr, d)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// Spec describes how to find one broker.
type Spec struct {
	Name    string // "RabbitMQ"
	EnvVar  string // "COURIER_AMQP_URL": a URL or address to use as it is
	Default string // what to return when the standard port answers
	Addr    string // the standard loopback address, "127.0.0.1:5672"
	// Start starts a private instance and returns what to use, with a
	// stop function; nil when the broker cannot be started here (binaries
	// missing): return an error saying why.
	Start func(t testing.TB) (string, func(), error)
}

// Find applies the package rule to s and returns what to connect to. The
// private instance, if one was started, is stopped when t's cleanup runs.
func Find(t testing.TB, s Spec) string {
	t.Helper()
	if v := os.Getenv(s.EnvVar); v != "" {
		return v
	}
	if s.Addr != "" && Reachable(s.Addr, 500*time.Millisecond) {
		return s.Default
	}
	if s.Start != nil {
		v, stop, err := s.Start(t)
		if err == nil {
			if stop != nil {
				t.Cleanup(stop)
			}
			return v
		}
		Unavailable(t, fmt.Sprintf("%s: nothing at %s, $%s unset, and a private instance did not start: %v", s.Name, s.Addr, s.EnvVar, err))
		return ""
	}
	Unavailable(t, fmt.Sprintf("%s: nothing at %s and $%s unset", s.Name, s.Addr, s.EnvVar))
	return ""
}

// FreePort returns a loopback TCP port that was free a moment ago.
func FreePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("testenv: no free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// WaitReachable polls addr until it accepts TCP connections or d passes.
func WaitReachable(addr string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if Reachable(addr, 200*time.Millisecond) {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return fmt.Errorf("%s did not accept connections within %s", addr, d)
}
