package main

import (
	"strings"
	"testing"
	"time"

	"cloud.google.com/go/pubsub/v2/pstest"
	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/courierkit/courier/internal/testenv"
)

// The same program, unchanged, on every broker: only the URL differs.

func runDemo(t *testing.T, url string) {
	t.Helper()
	start := time.Now()
	if err := run(url, 60*time.Second); err != nil {
		t.Fatal(err)
	}
	t.Logf("flow completed in %v", time.Since(start))
}

func TestDemoOnNATS(t *testing.T) { runDemo(t, testenv.NATS(t)) }

func TestDemoOnRabbitMQ(t *testing.T) { runDemo(t, testenv.FindRabbitMQ(t)) }

func TestDemoOnKafka(t *testing.T) {
	addrs := testenv.Kafka(t, func(testing.TB) (string, func(), error) {
		c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.GroupMinSessionTimeout(time.Second))
		if err != nil {
			return "", nil, err
		}
		return c.ListenAddrs()[0], c.Close, nil
	})
	runDemo(t, "kafka://"+addrs)
}

func TestDemoOnPubSub(t *testing.T) {
	addr := testenv.PubSub(t, func(testing.TB) (string, func(), error) {
		srv := pstest.NewServerWithAddress("127.0.0.1:0")
		return srv.Addr, func() { _ = srv.Close() }, nil
	})
	runDemo(t, "gcppubsub://demo-project?emulator="+addr+"&receive_goroutines=16")
}

func TestDemoOnSNS(t *testing.T) {
	inProcess := ""
	if goaws != nil {
		inProcess = goaws.Endpoint()
	}
	endpoint := testenv.SQS(t, inProcess)
	host := strings.TrimPrefix(strings.TrimPrefix(endpoint, "http://"), "https://")
	q := "region=us-east-1"
	if goaws != nil {
		q += "&goaws=true"
	}
	runDemo(t, "sns://demo:demo@"+host+"/?"+q)
}
