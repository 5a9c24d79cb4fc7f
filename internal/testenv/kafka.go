package testenv

import (
	"os"
	"testing"
)

// KafkaEnvVar names a real Kafka cluster for the tests: a comma-separated
// list of bootstrap addresses ("127.0.0.1:9092,127.0.0.1:9093").
const KafkaEnvVar = "KAFKA_BROKERS"

// Kafka returns the bootstrap addresses (comma separated) of the Kafka
// cluster a test runs against: $KAFKA_BROKERS when set, else what start
// returns. The Kafka adapter's tests pass a start function that runs the
// in-process kfake cluster (testenv itself imports only the standard
// library); start may return a nil stop function when the caller stops
// the cluster itself (one cluster shared by a test binary). When start is
// nil or fails the test is skipped, or failed under CI=true.
//
// Unlike the other brokers there is no "standard loopback port" step: a
// Kafka found on 127.0.0.1:9092 by chance could not be restarted by the
// suite, and kfake starts in milliseconds anywhere.
func Kafka(t testing.TB, start func(testing.TB) (string, func(), error)) string {
	t.Helper()
	return Find(t, Spec{Name: "Kafka", EnvVar: KafkaEnvVar, Start: start})
}

// KafkaExternal reports whether $KAFKA_BROKERS names a real cluster (tests
// that restart the broker or change its configuration skip then).
func KafkaExternal() bool {
	return os.Getenv(KafkaEnvVar) != ""
}
