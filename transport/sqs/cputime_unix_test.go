//go:build unix

package sqstransport_test

import (
	"syscall"
	"time"
)

// processCPU is the CPU time this process has used so far, user and
// system, every thread: with goaws in process, that is the client, the
// emulator and the garbage collector together.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
