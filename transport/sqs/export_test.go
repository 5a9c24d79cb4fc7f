package sqstransport

import "time"

// SetSettleTimeout sets settleTimeout for a test and returns what restores
// it.
func SetSettleTimeout(d time.Duration) (restore func()) {
	old := settleNanos.Swap(int64(d))
	return func() { settleNanos.Store(old) }
}
