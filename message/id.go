package message

import (
	"crypto/rand"
	"encoding/binary"
	"sync"
	"time"
)

// NewID returns a new UUIDv7 (RFC 9562) in its canonical 36-character form.
// IDs from one process sort by creation time, also within one millisecond:
// the 12-bit rand_a field holds a counter (method 1 of RFC 9562 §6.2) that is
// reseeded every millisecond. The remaining 62 bits are random.
//
// It is written here, not taken from google/uuid, because message/ imports
// the standard library only; it is safe for concurrent use.
func NewID() string {
	var u [16]byte
	ms, seq := idClock()
	binary.BigEndian.PutUint64(u[0:8], ms<<16|uint64(seq))
	u[6] = 0x70 | (u[6] & 0x0f) // version 7 in the high nibble, counter high bits below
	if _, err := rand.Read(u[8:]); err != nil {
		panic("message: crypto/rand failed: " + err.Error())
	}
	u[8] = 0x80 | (u[8] & 0x3f) // RFC 9562 variant
	return formatUUID(&u)
}

var idState struct {
	sync.Mutex
	ms  uint64
	seq uint16
}

// idClock returns the unix millisecond and a 12-bit counter that keeps IDs
// monotonic within the millisecond. When the counter overflows it borrows
// the next millisecond, as RFC 9562 allows.
func idClock() (uint64, uint16) {
	now := uint64(time.Now().UnixMilli())
	idState.Lock()
	defer idState.Unlock()
	if now > idState.ms {
		idState.ms = now
		var b [2]byte
		_, _ = rand.Read(b[:])
		idState.seq = binary.BigEndian.Uint16(b[:]) & 0x1ff // leave room to count up
	} else {
		idState.seq++
		if idState.seq > 0xfff {
			idState.ms++
			idState.seq = 0
		}
	}
	return idState.ms, idState.seq
}

const hexdigits = "0123456789abcdef"

func formatUUID(u *[16]byte) string {
	var b [36]byte
	j := 0
	for i, c := range u {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			b[j] = '-'
			j++
		}
		b[j] = hexdigits[c>>4]
		b[j+1] = hexdigits[c&0xf]
		j += 2
	}
	return string(b[:])
}
