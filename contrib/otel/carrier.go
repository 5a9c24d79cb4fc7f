package courierotel

import (
	"go.opentelemetry.io/otel/propagation"

	"github.com/courierkit/courier/message"
)

// HeaderCarrier adapts message.Header to propagation.TextMapCarrier, so any
// propagator reads and writes trace context in message headers. Keys are
// used as given: W3C trace context uses the lower-case "traceparent" and
// "tracestate" (message.HeaderTraceParent, message.HeaderTraceState), which
// every courier transport carries unchanged. Set on a nil HeaderCarrier
// panics, as on a nil map; give it an allocated Header.
type HeaderCarrier message.Header

var _ propagation.TextMapCarrier = HeaderCarrier(nil)

// Get returns the value of key, or "".
func (c HeaderCarrier) Get(key string) string { return c[key] }

// Set sets key to value.
func (c HeaderCarrier) Set(key, value string) { c[key] = value }

// Keys lists the header names.
func (c HeaderCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}
