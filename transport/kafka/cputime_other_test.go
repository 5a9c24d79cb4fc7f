//go:build !unix

package kafkatransport

// ProcessCPU is not measured here: cpu-ns/msg reads 0.
func ProcessCPU() int64 { return 0 }
