package sqstransport_test

import (
	"context"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"

	"go.uber.org/goleak"

	"github.com/courierkit/courier/internal/goawstest"
	"github.com/courierkit/courier/internal/testenv"
	sqstransport "github.com/courierkit/courier/transport/sqs"
)

// emulator is the endpoint of the one goaws of this test binary (goaws
// keeps its state in package globals), or of the service named by
// COURIER_SQS_ENDPOINT.
var emulator string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	var stop func()
	if os.Getenv(testenv.SQSEnvVar) == "" {
		g, s, err := goawstest.Start()
		if err != nil {
			fmt.Fprintln(os.Stderr, "goaws:", err)
			return 1
		}
		emu, stop, emulator = g, s, g.Endpoint()
	}
	code := m.Run()
	if stop != nil {
		stop()
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			return 1
		}
	}
	return code
}

// emu is the in-process goaws, nil when COURIER_SQS_ENDPOINT is set.
var emu *goawstest.Server

var seq atomic.Int64

var unsafeName = regexp.MustCompile(`[^A-Za-z0-9_-]+`)

// name returns a topic name unique in this test binary.
func name(t testing.TB) string {
	n := unsafeName.ReplaceAllString(t.Name(), "-")
	if len(n) > 40 {
		n = n[len(n)-40:]
	}
	return strings.Trim(fmt.Sprintf("t%d-%s", seq.Add(1), n), "-")
}

// endpoint returns where SQS/SNS are: $COURIER_SQS_ENDPOINT or the
// in-process goaws.
func endpoint(t testing.TB) string {
	return testenv.SQS(t, emulator)
}

// open returns a Transport on the emulator, closed at cleanup.
func open(t testing.TB, mode sqstransport.Mode, o sqstransport.Options) *sqstransport.Transport {
	t.Helper()
	o.Mode = mode
	o.Endpoint = endpoint(t)
	if o.AccessKeyID == "" {
		o.AccessKeyID, o.SecretAccessKey = "test", "test"
	}
	if o.Region == "" {
		o.Region = "us-east-1"
	}
	o.Goaws = os.Getenv(testenv.SQSEnvVar) == ""
	tr, err := sqstransport.New(context.Background(), o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tr.Close() })
	return tr
}
