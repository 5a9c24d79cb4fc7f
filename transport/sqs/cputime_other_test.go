//go:build !unix

package sqstransport_test

import "time"

// processCPU is not measured here: the cpu-ns figures then read 0.
func processCPU() time.Duration { return 0 }
