package outbox

import (
	"strings"
	"testing"
)

// The relay turns off each session timeout the server version has, and
// names none it lacks (an unknown setting would fail the connection).
func TestSessionSettings(t *testing.T) {
	for _, c := range []struct {
		version string
		want    []string
		not     []string
	}{
		{"13.4", []string{"idle_in_transaction_session_timeout"}, []string{"idle_session_timeout", "transaction_timeout"}},
		{"15.20 (Debian 15.20-0+deb12u1)", []string{"idle_in_transaction_session_timeout", "idle_session_timeout"}, []string{"transaction_timeout"}},
		{"17.2", []string{"idle_in_transaction_session_timeout", "idle_session_timeout", "transaction_timeout"}, nil},
		{"18devel", []string{"transaction_timeout"}, nil},
	} {
		q := sessionSettings(c.version)
		for _, w := range c.want {
			if !strings.Contains(q, "SET "+w+" = 0") {
				t.Errorf("%s: %q lacks %s", c.version, q, w)
			}
		}
		for _, w := range c.not {
			if strings.Contains(q, "SET "+w+" ") {
				t.Errorf("%s: %q sets %s", c.version, q, w)
			}
		}
	}
}
