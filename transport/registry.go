package transport

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
)

// Opener opens a Conn for a URL of the scheme it was registered for. u is
// the parsed URL; errors it returns are passed through Redact-style
// scrubbing by Open, but an Opener should still never put credentials in
// them.
type Opener func(ctx context.Context, u *url.URL) (Conn, error)

var registry struct {
	sync.RWMutex
	m map[string]Opener
}

// Register makes a transport available to Open under scheme. Adapters call
// it from init, so a blank import enables a scheme, as database/sql drivers
// do. It panics when scheme is empty, open is nil or the scheme is taken.
func Register(scheme string, open Opener) {
	scheme = strings.ToLower(scheme)
	if scheme == "" || open == nil {
		panic("transport: Register needs a scheme and an opener")
	}
	registry.Lock()
	defer registry.Unlock()
	if registry.m == nil {
		registry.m = map[string]Opener{}
	}
	if _, dup := registry.m[scheme]; dup {
		panic("transport: Register called twice for scheme " + scheme)
	}
	registry.m[scheme] = open
}

// Schemes returns the registered schemes, sorted.
func Schemes() []string {
	registry.RLock()
	defer registry.RUnlock()
	s := make([]string, 0, len(registry.m))
	for k := range registry.m {
		s = append(s, k)
	}
	slices.Sort(s)
	return s
}

// knownPackages maps schemes to the package whose blank import registers
// them, for the hint in an unknown-scheme error.
var knownPackages = map[string]string{
	"mem":       "github.com/courierkit/courier/transport/mem",
	"nats":      "github.com/courierkit/courier/transport/nats",
	"nats+tls":  "github.com/courierkit/courier/transport/nats",
	"amqp":      "github.com/courierkit/courier/transport/amqp",
	"amqps":     "github.com/courierkit/courier/transport/amqp",
	"kafka":     "github.com/courierkit/courier/transport/kafka",
	"kafka+tls": "github.com/courierkit/courier/transport/kafka",
	"sqs":       "github.com/courierkit/courier/transport/sqs",
	"sns":       "github.com/courierkit/courier/transport/sqs",
	"gcppubsub": "github.com/courierkit/courier/transport/gcppubsub",
}

// URLError reports a URL that Open could not use. URL is redacted.
type URLError struct {
	URL string
	Err error
}

func (e *URLError) Error() string { return fmt.Sprintf("transport: open %s: %v", e.URL, e.Err) }
func (e *URLError) Unwrap() error { return e.Err }

// ErrUnknownScheme is matched by the error Open returns for a scheme no
// adapter registered.
var ErrUnknownScheme = errors.New("unknown scheme")

// Open opens a connection by URL, dispatching on its scheme to the adapter
// registered for it (see Register). Query parameters set the adapter's
// Options; an unknown one is an error naming those accepted. Credentials in
// the URL never appear in the errors it returns.
func Open(ctx context.Context, rawURL string) (Conn, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	u, err := url.Parse(rawURL)
	if err != nil {
		// url.Parse errors quote the whole input, password included.
		return nil, &URLError{URL: Redact(rawURL), Err: errors.New("malformed URL")}
	}
	if u.Scheme == "" {
		return nil, &URLError{URL: Redact(rawURL), Err: fmt.Errorf("no scheme; registered schemes: %s", strings.Join(Schemes(), ", "))}
	}
	scheme := strings.ToLower(u.Scheme)
	registry.RLock()
	open := registry.m[scheme]
	registry.RUnlock()
	if open == nil {
		hint := " (an adapter registers its scheme when its package is imported, e.g. _ \"github.com/courierkit/courier/transport/nats\")"
		if pkg, ok := knownPackages[scheme]; ok {
			hint = fmt.Sprintf(` (forgot the blank import _ "%s"?)`, pkg)
		}
		return nil, &URLError{URL: Redact(rawURL), Err: fmt.Errorf("%w %q; registered schemes: %s%s", ErrUnknownScheme, scheme, strings.Join(Schemes(), ", "), hint)}
	}
	c, err := open(ctx, u)
	if err != nil {
		if ctxErr := ctx.Err(); ctxErr != nil && errors.Is(err, ctxErr) {
			return nil, ctxErr
		}
		return nil, &URLError{URL: Redact(rawURL), Err: scrub(err, secretsOf(u))}
	}
	return c, nil
}
