package middleware_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"golang.org/x/time/rate"

	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/middleware"
	"github.com/courierkit/courier/transport"
)

// flakyDLQ fails the first fail publishes to topic dlq and reports every
// publish attempt to that topic on calls.
type flakyDLQ struct {
	transport.Publisher
	dlq   string
	mu    sync.Mutex
	fail  int
	n     int
	calls chan int
}

var errBrokerDown = errors.New("dead-letter broker unavailable")

func (p *flakyDLQ) Publish(ctx context.Context, topic string, msgs ...*message.Message) error {
	if topic != p.dlq {
		return p.Publisher.Publish(ctx, topic, msgs...)
	}
	p.mu.Lock()
	p.n++
	n := p.n
	p.mu.Unlock()
	var err error
	if n <= p.fail {
		err = fmt.Errorf("publish %d: %w", n, errBrokerDown)
	} else {
		err = p.Publisher.Publish(ctx, topic, msgs...)
	}
	p.calls <- n
	return err
}

// DeadLetter never loses a message when the dead-letter publish fails:
// the original goes back to the broker each time, and once the publish
// succeeds exactly one copy with the courier-dlq-* headers arrives and the
// original is acked.
func TestE2EMoreDeadLetterPublishFailureLosesNothing(t *testing.T) {
	for _, tc := range []struct {
		name      string
		permanent bool
		maxAtt    int // DeadLetter.MaxAttempts
	}{
		{"permanent", true, 5},
		{"attempts-exhausted", false, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				const failing = 3
				var mu sync.Mutex
				var attempts []int
				var times []time.Time
				h := message.HandlerFunc(func(_ context.Context, m *message.Message) error {
					mu.Lock()
					attempts = append(attempts, m.Attempt)
					times = append(times, time.Now())
					mu.Unlock()
					err := errors.New("order 17 cannot be priced")
					if tc.permanent {
						return message.Permanent(err)
					}
					return err
				})
				pub := &flakyDLQ{dlq: "jobs.dlq", fail: failing, calls: make(chan int, 100)}
				g := newEnvWith(t, func(p transport.Publisher) transport.Publisher { pub.Publisher = p; return pub },
					middleware.Recommended(middleware.StackOptions{
						Retry:      middleware.RetryOptions{MaxAttempts: 1},
						Redelivery: middleware.RedeliveryOptions{InitialDelay: 10 * time.Second},
						DeadLetter: middleware.DeadLetterOptions{MaxAttempts: tc.maxAtt},
					}), h, transport.SubscribeOptions{})
				m := message.New([]byte("order 17"))
				m.Key = "customer-4"
				m.SetHeader("x-tenant", "acme")
				g.publish(m)

				// Each failed dead-letter publish leaves the message in the
				// broker, waiting for its redelivery, and nothing in the
				// dead-letter topic.
				for i := 1; i <= failing; i++ {
					if n := <-pub.calls; n != i {
						t.Fatalf("dead-letter publish #%d, want #%d", n, i)
					}
					synctest.Wait()
					if l := g.lag("jobs", "workers"); l.Pending != 1 || l.InFlight != 0 {
						t.Fatalf("after failed dead-letter publish %d: jobs lag %+v, want the message pending in the broker", i, l)
					}
					if l := g.lag("jobs.dlq", "ops"); l.Pending != 0 || len(g.dlq) != 0 {
						t.Fatalf("after failed dead-letter publish %d: dead-letter topic lag %+v, %d collected", i, l, len(g.dlq))
					}
				}
				if n := <-pub.calls; n != failing+1 {
					t.Fatalf("dead-letter publish #%d, want #%d", n, failing+1)
				}
				d := <-g.dlq
				g.settled()
				g.stop()

				if len(g.dlq) != 0 {
					t.Fatalf("%d more dead letters, want exactly one", len(g.dlq))
				}
				if len(pub.calls) != 0 {
					t.Fatalf("%d more dead-letter publishes after the successful one", len(pub.calls))
				}
				mu.Lock()
				defer mu.Unlock()
				// Runs before the first dead-letter attempt, then one per
				// dead-letter attempt.
				runs := tc.maxAtt + failing
				if tc.permanent {
					runs = 1 + failing
				}
				want := make([]int, runs)
				for i := range want {
					want[i] = i + 1
				}
				if !slices.Equal(attempts, want) {
					t.Fatalf("handler saw deliveries %v, want %v", attempts, want)
				}
				if d.ID != m.ID || d.Key != "customer-4" || string(d.Payload) != "order 17" || d.Headers["x-tenant"] != "acme" {
					t.Fatalf("dead letter %+v does not carry the original", d)
				}
				hd := d.Headers
				for k, v := range map[string]string{
					message.HeaderDeadLetterTopic:           "jobs",
					message.HeaderDeadLetterGroup:           "workers",
					message.HeaderDeadLetterAttempts:        fmt.Sprint(runs),
					middleware.HeaderDeadLetterFirstFailure: times[0].UTC().Format(time.RFC3339Nano),
					middleware.HeaderDeadLetterLastFailure:  times[runs-1].UTC().Format(time.RFC3339Nano),
				} {
					if hd[k] != v {
						t.Errorf("dead letter header %s = %q, want %q", k, hd[k], v)
					}
				}
				if r := hd[message.HeaderDeadLetterReason]; !strings.Contains(r, "order 17 cannot be priced") || strings.Contains(r, "unavailable") {
					t.Errorf("dead letter reason %q, want the handler's error (not the publish failure)", r)
				}
				if hd[message.HeaderDeadLetterTime] == "" {
					t.Errorf("dead letter has no %s header", message.HeaderDeadLetterTime)
				}
			})
		})
	}
}

// syncBuffer is a bytes.Buffer safe for the concurrent writes of a
// slog handler.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) lines(t *testing.T) []map[string]any {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(s.b.Bytes()))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var l map[string]any
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("log line %q: %v", sc.Text(), err)
		}
		out = append(out, l)
	}
	return out
}

// The recommended stack with Logging and RateLimit configured, end to
// end: a success, a failure that recovers within the in-process retries,
// one that recovers after a redelivery, and a poison message that is
// dead-lettered. Each delivery writes one log line with its outcome, and
// every handler run waits for its rate-limit token.
func TestE2EMoreRecommendedWithLoggingAndRateLimit(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var buf syncBuffer
		logger := slog.New(slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelDebug}))
		type order struct{ Total int }
		var mu sync.Mutex
		runs := map[string]int{}
		var runTimes []time.Time
		h := message.HandlerFunc(func(_ context.Context, m *message.Message) error {
			mu.Lock()
			name := m.Headers["x-case"]
			runs[name]++
			n := runs[name]
			runTimes = append(runTimes, time.Now())
			mu.Unlock()
			switch name {
			case "retry-recovers":
				if n <= 2 {
					return errors.New("inventory timeout")
				}
			case "redelivery-recovers":
				if n <= 3 {
					return errors.New("inventory down")
				}
			case "poison":
				_, err := message.Decode[order](m)
				return err
			}
			return nil
		})
		const perSecond = 2
		g := newEnvWith(t, nil, middleware.Recommended(middleware.StackOptions{
			Logging:    &middleware.LoggingOptions{Logger: logger},
			RateLimit:  &middleware.RateLimitOptions{Limit: rate.Limit(perSecond), Burst: 1},
			Retry:      middleware.RetryOptions{MaxAttempts: 3},
			Redelivery: middleware.RedeliveryOptions{InitialDelay: 10 * time.Second},
			DeadLetter: middleware.DeadLetterOptions{MaxAttempts: 3},
		}), h, transport.SubscribeOptions{})

		ids := map[string]string{}
		for _, name := range []string{"success", "retry-recovers", "redelivery-recovers", "poison"} {
			m := message.New([]byte(`{"Total": 10}`))
			if name == "poison" {
				m.Payload = []byte(`{"Total": "ten"`)
			}
			m.SetHeader(message.HeaderContentType, "application/json")
			m.SetHeader("x-case", name)
			if name == "success" {
				m.SetHeader(message.HeaderCorrelationID, "corr-success")
			}
			ids[name] = m.ID
			g.publish(m)
		}
		d := <-g.dlq
		g.settled()
		g.stop()

		mu.Lock()
		defer mu.Unlock()
		if want := map[string]int{"success": 1, "retry-recovers": 3, "redelivery-recovers": 4, "poison": 1}; !maps.Equal(runs, want) {
			t.Fatalf("handler runs %v, want %v", runs, want)
		}
		if d.ID != ids["poison"] || !strings.Contains(d.Headers[message.HeaderDeadLetterReason], "decode") || d.Headers[message.HeaderDeadLetterAttempts] != "1" {
			t.Fatalf("dead letter %s with headers %v, want the poison message after 1 attempt", d.ID, d.Headers)
		}
		if len(g.dlq) != 0 {
			t.Fatalf("%d more dead letters", len(g.dlq))
		}
		// The rate limit spaced every handler run (each retry attempt
		// included) by at least 1/perSecond (less a microsecond: x/time/rate
		// computes token times in float seconds).
		slices.SortFunc(runTimes, func(a, b time.Time) int { return a.Compare(b) })
		for i := 1; i < len(runTimes); i++ {
			if gap := runTimes[i].Sub(runTimes[i-1]); gap < time.Second/perSecond-time.Microsecond {
				t.Fatalf("handler runs %d and %d %v apart, want ≥ %v (rate limit)", i-1, i, gap, time.Second/perSecond)
			}
		}

		type line struct {
			level, outcome string
			attempt, tries int
			extra          map[string]any
		}
		byName := map[string][]map[string]any{}
		names := map[string]string{}
		for n, id := range ids {
			names[id] = n
		}
		for _, l := range buf.lines(t) {
			id, _ := l["message_id"].(string)
			n, ok := names[id]
			if !ok {
				t.Fatalf("log line for an unknown message: %v", l)
			}
			byName[n] = append(byName[n], l)
		}
		num := func(l map[string]any, k string) int {
			f, _ := l[k].(float64)
			return int(f)
		}
		check := func(name string, want []line) {
			t.Helper()
			got := byName[name]
			if len(got) != len(want) {
				t.Fatalf("%s: %d log lines %v, want %d", name, len(got), got, len(want))
			}
			for i, w := range want {
				l := got[i]
				if l["level"] != w.level || l["outcome"] != w.outcome || l["msg"] != "courier: message "+w.outcome ||
					num(l, "attempt") != w.attempt || num(l, "tries") != w.tries {
					t.Errorf("%s line %d: %v, want level %s outcome %s attempt %d tries %d", name, i, l, w.level, w.outcome, w.attempt, w.tries)
				}
				if l["topic"] != "jobs" || l["group"] != "workers" || l["duration"] == nil {
					t.Errorf("%s line %d: %v, want topic jobs, group workers and a duration", name, i, l)
				}
				wantCorr := ids[name]
				if name == "success" {
					wantCorr = "corr-success"
				}
				if l["correlation_id"] != wantCorr {
					t.Errorf("%s line %d: correlation_id %v, want %s", name, i, l["correlation_id"], wantCorr)
				}
				for k, v := range w.extra {
					if s, ok := v.(string); ok && strings.HasPrefix(s, "~") {
						if got, _ := l[k].(string); !strings.Contains(got, s[1:]) {
							t.Errorf("%s line %d: %s = %q, want it to contain %q", name, i, k, got, s[1:])
						}
						continue
					}
					if l[k] != v {
						t.Errorf("%s line %d: %s = %v, want %v", name, i, k, l[k], v)
					}
				}
			}
		}
		check("success", []line{{"INFO", "acked", 1, 0, nil}})
		check("retry-recovers", []line{{"INFO", "acked", 1, 3, nil}})
		check("redelivery-recovers", []line{
			{"WARN", "nacked", 1, 3, map[string]any{"error": "~inventory down"}},
			{"INFO", "acked", 2, 0, nil},
		})
		check("poison", []line{{"ERROR", "dead-lettered", 1, 0, map[string]any{"dead_letter_topic": "jobs.dlq"}}})
		// The nack line carries the delay Redelivery asked for (equal
		// jitter: between InitialDelay/2 and InitialDelay).
		nack := byName["redelivery-recovers"][0]
		if d, ok := nack["redelivery_delay"].(float64); !ok || time.Duration(d) < 5*time.Second || time.Duration(d) > 10*time.Second {
			t.Errorf("nack line redelivery_delay %v, want 5s..10s in nanoseconds", nack["redelivery_delay"])
		}
	})
}
