package transport

import (
	"maps"
	"strings"
	"unicode/utf8"

	"github.com/courierkit/courier/message"
)

// FitDeadLetter returns m when fits(m), else a copy made to fit as far as
// it can, for adapters whose dead-letter publish would fail on size (the
// courier-dlq-* headers push a message near its limit over it, and the
// message would loop): the dead-letter reason cut on a character boundary (marked with
// "…"), then the reason, time and attempts headers dropped, as needed. The
// copy's own headers (ID, key, user headers, dead-letter topic and group)
// are kept; a copy that still does not fit is returned as it is then, and
// its publish fails with the size error. The second result reports a
// change.
func FitDeadLetter(m *message.Message, fits func(*message.Message) bool) (*message.Message, bool) {
	if fits(m) {
		return m, false
	}
	c := *m
	c.Headers = maps.Clone(m.Headers)
	if reason, ok := c.Headers[message.HeaderDeadLetterReason]; ok {
		// The longest prefix that fits: binary search on its length.
		best := -1
		for lo, hi := 0, len(reason)-1; lo <= hi; {
			mid := (lo + hi) / 2
			c.Headers[message.HeaderDeadLetterReason] = cutReason(reason, mid)
			if fits(&c) {
				best, lo = mid, mid+1
			} else {
				hi = mid - 1
			}
		}
		if best >= 0 {
			c.Headers[message.HeaderDeadLetterReason] = cutReason(reason, best)
			return &c, true
		}
		delete(c.Headers, message.HeaderDeadLetterReason)
		if fits(&c) {
			return &c, true
		}
	}
	for _, k := range []string{message.HeaderDeadLetterTime, message.HeaderDeadLetterAttempts} {
		delete(c.Headers, k)
		if fits(&c) {
			break
		}
	}
	return &c, true
}

// cutReason is reason's first n bytes or fewer, ending on a character
// boundary, without trailing white space, marked as cut.
func cutReason(reason string, n int) string {
	for n > 0 && !utf8.RuneStart(reason[n]) {
		n--
	}
	return strings.TrimRight(reason[:n], " \t\r\n") + "…"
}
