package testenv

import (
	"testing"
)

// SQSEnvVar names an SQS/SNS endpoint to test against instead of the
// in-process goaws emulator (LocalStack, say: http://127.0.0.1:4566).
const SQSEnvVar = "COURIER_SQS_ENDPOINT"

// SQS returns the SQS/SNS endpoint for a test: $COURIER_SQS_ENDPOINT when
// set, else inProcess, the endpoint of the goaws emulator the test binary
// started in its TestMain (goaws keeps package-global state, so there is
// one per binary and testenv cannot start it per test). With neither, the
// test is skipped, or fails under CI=true.
func SQS(t testing.TB, inProcess string) string {
	t.Helper()
	return Find(t, Spec{
		Name:   "SQS/SNS",
		EnvVar: SQSEnvVar,
		Start: func(testing.TB) (string, func(), error) {
			if inProcess == "" {
				return "", nil, errNoEmulator
			}
			return inProcess, nil, nil
		},
	})
}

type sqsError string

func (e sqsError) Error() string { return string(e) }

const errNoEmulator = sqsError("no in-process goaws emulator was started")
