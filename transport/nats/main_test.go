package natstransport_test

import (
	"testing"

	"github.com/nats-io/nats-server/v2/server"
	"go.uber.org/goleak"

	"github.com/courierkit/courier/internal/natstest"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testServer is the embedded nats-server of internal/natstest: JetStream
// on file storage in a temp dir; Restart brings it back on the same port
// and store directory.
type testServer = natstest.Server

func newServer(t testing.TB, mod func(*server.Options)) *testServer {
	t.Helper()
	return natstest.Start(t, mod)
}
