package transport

import (
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Query reads an adapter's options from URL query parameters and reports
// unknown parameters and bad values, naming the accepted parameters. Each
// accessor leaves its destination unchanged when the parameter is absent,
// so Options defaults stay in one place:
//
//	q := transport.NewQuery(u)
//	q.Int("max_payload", &opts.MaxPayload)
//	q.Duration("ack_wait", &opts.AckWait)
//	if err := q.Err(); err != nil { ... }
type Query struct {
	vals     url.Values
	accepted []string
	errs     []error
}

// NewQuery starts reading u's query parameters.
func NewQuery(u *url.URL) *Query { return &Query{vals: u.Query()} }

func (q *Query) take(name string) (string, bool) {
	q.accepted = append(q.accepted, name)
	vs, ok := q.vals[name]
	if !ok {
		return "", false
	}
	delete(q.vals, name)
	if len(vs) > 1 {
		q.errs = append(q.errs, fmt.Errorf("parameter %s given %d times", name, len(vs)))
	}
	return vs[len(vs)-1], true
}

func (q *Query) bad(name, v, want string, err error) {
	shown := strconv.Quote(v)
	if sensitiveParam(name) {
		shown = redacted
	}
	q.errs = append(q.errs, fmt.Errorf("parameter %s=%s: want %s", name, shown, want))
}

// String reads a string parameter.
func (q *Query) String(name string, dst *string) {
	if v, ok := q.take(name); ok {
		*dst = v
	}
}

// Int reads a non-negative integer parameter.
func (q *Query) Int(name string, dst *int) {
	if v, ok := q.take(name); ok {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			q.bad(name, v, "a non-negative integer", err)
			return
		}
		*dst = n
	}
}

// Int64 reads a non-negative 64-bit integer parameter.
func (q *Query) Int64(name string, dst *int64) {
	if v, ok := q.take(name); ok {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 0 {
			q.bad(name, v, "a non-negative integer", err)
			return
		}
		*dst = n
	}
}

// Bool reads a boolean parameter (1, t, true, 0, f, false...).
func (q *Query) Bool(name string, dst *bool) {
	if v, ok := q.take(name); ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			q.bad(name, v, "true or false", err)
			return
		}
		*dst = b
	}
}

// Duration reads a time.ParseDuration parameter ("1.5s", "250ms").
func (q *Query) Duration(name string, dst *time.Duration) {
	if v, ok := q.take(name); ok {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			q.bad(name, v, "a non-negative duration such as 500ms or 2s", err)
			return
		}
		*dst = d
	}
}

// Enum reads a parameter that must be one of allowed.
func (q *Query) Enum(name string, dst *string, allowed ...string) {
	if v, ok := q.take(name); ok {
		if !slices.Contains(allowed, v) {
			q.bad(name, v, "one of "+strings.Join(allowed, ", "), nil)
			return
		}
		*dst = v
	}
}

// List reads a comma-separated parameter.
func (q *Query) List(name string, dst *[]string) {
	if v, ok := q.take(name); ok {
		var out []string
		for _, s := range strings.Split(v, ",") {
			if s = strings.TrimSpace(s); s != "" {
				out = append(out, s)
			}
		}
		*dst = out
	}
}

// Err reports bad values and every parameter no accessor asked for. Call it
// after all accessors.
func (q *Query) Err() error {
	errs := slices.Clone(q.errs)
	if len(q.vals) > 0 {
		unknown := make([]string, 0, len(q.vals))
		for k := range q.vals {
			unknown = append(unknown, k)
		}
		slices.Sort(unknown)
		acc := slices.Clone(q.accepted)
		slices.Sort(acc)
		acc = slices.Compact(acc)
		errs = append(errs, fmt.Errorf("unknown parameter %s; accepted: %s", strings.Join(unknown, ", "), strings.Join(acc, ", ")))
	}
	if len(errs) == 0 {
		return nil
	}
	return errors.Join(errs...)
}
