package testenv

import "testing"

// PubSub returns the host:port of a Google Cloud Pub/Sub emulator by the
// package rule: $PUBSUB_EMULATOR_HOST when set (the gcloud emulator, for
// example), else what start returns. This package imports only the
// standard library, so the caller supplies start; courier's tests pass one
// that runs cloud.google.com/go/pubsub/v2/pstest in-process on 127.0.0.1.
// No standard loopback port is probed: the gcloud emulator has no fixed
// one (8085 is only its habit), and guessing could hit another service.
func PubSub(t testing.TB, start func(testing.TB) (addr string, stop func(), err error)) string {
	t.Helper()
	return Find(t, Spec{
		Name:   "Pub/Sub emulator",
		EnvVar: "PUBSUB_EMULATOR_HOST",
		Start:  start,
	})
}
