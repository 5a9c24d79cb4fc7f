//go:build unix

package kafkatransport

import "syscall"

// ProcessCPU is the CPU time the test process used so far (user+system,
// every thread: the adapter, sarama and the in-process kfake brokers).
func ProcessCPU() int64 {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return ru.Utime.Nano() + ru.Stime.Nano()
}
