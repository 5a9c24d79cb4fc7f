//go:build !unix

package kafkatransport_test

// processCPU is not measured here: cpu-ns/msg reads 0.
func processCPU() int64 { return 0 }
