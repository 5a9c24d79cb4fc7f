package sqstransport_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/Admiral-Piett/goaws/app/gosqs"
	"github.com/Admiral-Piett/goaws/app/models"
	"github.com/Admiral-Piett/goaws/app/servertest"
	"github.com/sirupsen/logrus"
	"go.uber.org/goleak"

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
		logrus.SetOutput(io.Discard)
		logrus.SetLevel(logrus.PanicLevel)
		srv, err := servertest.New("127.0.0.1:0")
		if err != nil {
			fmt.Fprintln(os.Stderr, "goaws:", err)
			return 1
		}
		host, port, _ := strings.Cut(strings.TrimPrefix(srv.URL(), "http://"), ":")
		models.CurrentEnvironment.Host = host
		models.CurrentEnvironment.Port = port
		models.CurrentEnvironment.Region = ""
		models.CurrentEnvironment.AccountID = "000000000000"
		models.CurrentEnvironment.EnableDuplicates = true
		quit := make(chan bool)
		done := make(chan struct{})
		go func() { defer close(done); gosqs.PeriodicTasks(100*time.Millisecond, quit) }()
		emulator = srv.URL()
		stop = func() {
			close(quit)
			<-done
			_ = srv.Quit()
		}
	}
	code := m.Run()
	if stop != nil {
		stop()
	}
	if code == 0 {
		if err := goleak.Find(
			// goaws's server: connections it accepted before Quit end when
			// their clients close them; its accept loop ends with Quit.
			goleak.IgnoreTopFunction("net/http.(*conn).serve"),
			goleak.IgnoreAnyFunction("net/http.(*conn).serve"),
		); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			return 1
		}
	}
	return code
}

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
