package sqstransport

import (
	"testing"
	"time"
)

// A nack's visibility never reaches past 12 h after the receive, which
// SQS would reject.
func TestNackSecondsClamp(t *testing.T) {
	for _, tc := range []struct {
		delay, elapsed time.Duration
		minOne         bool
		want           int32
	}{
		{0, 0, false, 0},
		{0, 0, true, 1},
		{1500 * time.Millisecond, 0, false, 2},
		{5 * time.Second, time.Hour, false, 5},
		{24 * time.Hour, 0, false, 43200},
		{12 * time.Hour, time.Hour, false, 11 * 3600},
		{12 * time.Hour, time.Hour + 500*time.Millisecond, false, 11*3600 - 1},
		{time.Hour, 11*time.Hour + 59*time.Minute, false, 60},
		{time.Hour, 13 * time.Hour, false, 0},
		{0, 13 * time.Hour, true, 0},
	} {
		if got := nackSeconds(tc.delay, tc.elapsed, tc.minOne); got != tc.want {
			t.Errorf("nackSeconds(%v, %v, %v) = %d, want %d", tc.delay, tc.elapsed, tc.minOne, got, tc.want)
		}
	}
}
