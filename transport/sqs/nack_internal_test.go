package sqstransport

import (
	"bytes"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/courierkit/courier/message"
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

// A renewal of the visibility never reaches past 12 h after the receive
// either; the one that is cut (or finds nothing left) is the last.
func TestExtendSecondsClamp(t *testing.T) {
	for _, tc := range []struct {
		vis     int32
		elapsed time.Duration
		want    int32
		last    bool
	}{
		{30, 0, 30, false},
		{30, time.Hour, 30, false},
		{43200, 0, 43200, false},
		{43200, 500 * time.Millisecond, 43199, true},
		{30, 12*time.Hour - 30*time.Second, 30, false},
		{30, 12*time.Hour - 30*time.Second + time.Millisecond, 29, true},
		{30, 12*time.Hour - 10500*time.Millisecond, 10, true},
		{30, 12*time.Hour - 999*time.Millisecond, 0, true},
		{30, 12 * time.Hour, 0, true},
		{30, 13 * time.Hour, 0, true},
	} {
		got, last := extendSeconds(tc.vis, tc.elapsed)
		if got != tc.want || last != tc.last {
			t.Errorf("extendSeconds(%d, %v) = %d, %v; want %d, %v", tc.vis, tc.elapsed, got, last, tc.want, tc.last)
		}
	}
}

// With nothing left of the 12 h, extend asks SQS for nothing (the
// Transport has no client here), stops renewing the message and warns
// once.
func TestExtendStopsAtLimit(t *testing.T) {
	var buf bytes.Buffer
	s := &sub{t: &Transport{o: Options{Logger: slog.New(slog.NewTextHandler(&buf, nil))}}, queue: "q", vis: 30}
	inf := &inflight{m: &message.Message{ID: "m1"}, sent: time.Now().Add(-12*time.Hour - time.Second)}
	for range 3 {
		inf.mu.Lock()
		s.extend(inf)
		inf.mu.Unlock()
	}
	if !inf.capped {
		t.Error("message not marked capped")
	}
	if n := strings.Count(buf.String(), "level=WARN"); n != 1 {
		t.Errorf("%d warnings, want 1:\n%s", n, buf.String())
	}
}
