package gcppubsubtransport

import (
	"testing"
	"time"
)

func TestHoldFor(t *testing.T) {
	for _, tc := range []struct{ delay, elapsed, maxExt, want time.Duration }{
		{5 * time.Second, 0, time.Hour, 5 * time.Second},
		{2 * time.Hour, 0, time.Hour, time.Hour - leaseMargin},
		{2 * time.Hour, 10 * time.Minute, time.Hour, 50*time.Minute - leaseMargin},
		{time.Minute, 59 * time.Minute, time.Hour, time.Minute - leaseMargin},
		{time.Minute, 2 * time.Hour, time.Hour, 0},
	} {
		if got := holdFor(tc.delay, tc.elapsed, tc.maxExt); got != tc.want {
			t.Errorf("holdFor(%v, %v, %v) = %v, want %v", tc.delay, tc.elapsed, tc.maxExt, got, tc.want)
		}
	}
}
