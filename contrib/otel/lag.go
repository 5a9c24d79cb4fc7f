package courierotel

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.43.0"

	"github.com/courierkit/courier/transport"
)

// LagTarget names a group's backlog to observe.
type LagTarget struct {
	// Topic and Group as given to Subscribe or Declare. Both required.
	Topic, Group string
	// DeadLetter reports the backlog as courier.messaging.dead_letter.depth
	// instead of consumer lag: set it for a group on a dead-letter topic
	// (declare one with transport.Conn.Declare, to count what waits there).
	DeadLetter bool
}

// LagOptions configure ObserveLag.
type LagOptions struct {
	// Timeout bounds one Lag call per target and collection. Default 5s.
	Timeout time.Duration
	// System overrides messaging.system. Default: as for Conn.
	System string
}

// Registration ends a lag observation; Unregister is safe to call more
// than once.
type Registration struct {
	once sync.Once
	reg  metric.Registration
	err  error
}

// Unregister stops observing.
func (r *Registration) Unregister() error {
	r.once.Do(func() {
		if r.reg != nil {
			r.err = r.reg.Unregister()
		}
	})
	return r.err
}

// ObserveLag reports the backlog of each target, asked of c's
// transport.LagReporter whenever the meter collects (each Prometheus
// scrape, each periodic export):
//
//   - courier.messaging.consumer.lag: Lag.Pending, or one point per
//     partition with messaging.destination.partition.id where the broker
//     has partitions (sum them for the group's total);
//   - courier.messaging.consumer.in_flight: Lag.InFlight, where the broker
//     says (not -1);
//   - courier.messaging.dead_letter.depth: Lag.Pending of targets marked
//     DeadLetter, instead of the lag gauge.
//
// Points carry messaging.system, messaging.destination.name and
// messaging.consumer.group.name. c may be a Conn from this package. A
// transport without LagReporter returns an error matching ErrNoLag. A
// target whose Lag call fails is left out of that collection and logged at
// Warn once (and at Info once it recovers), not at every collection.
func (i *Instrumentation) ObserveLag(c any, opts LagOptions, targets ...LagTarget) (*Registration, error) {
	inner := c
	for range 8 {
		u, ok := inner.(interface{ Unwrap() transport.Conn })
		if !ok {
			break
		}
		inner = u.Unwrap()
	}
	lr, ok := inner.(transport.LagReporter)
	if !ok {
		return nil, fmt.Errorf("%w: %T", ErrNoLag, inner)
	}
	for _, t := range targets {
		if t.Topic == "" || t.Group == "" {
			return nil, errors.New("courierotel: a lag target needs a topic and a group")
		}
	}
	timeout := opts.Timeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	system := opts.System
	if system == "" {
		system = i.systemFor(inner)
	}
	type tstate struct {
		LagTarget
		attrs   []attribute.KeyValue
		failing bool
	}
	states := make([]*tstate, len(targets))
	for n, t := range targets {
		states[n] = &tstate{LagTarget: t, attrs: []attribute.KeyValue{
			semconv.MessagingSystemKey.String(system),
			semconv.MessagingDestinationNameKey.String(t.Topic),
			semconv.MessagingConsumerGroupNameKey.String(t.Group),
		}}
	}
	var mu sync.Mutex // collections may overlap; keep failing flags sane
	reg, err := i.meter.RegisterCallback(func(ctx context.Context, o metric.Observer) error {
		for _, t := range states {
			cctx, cancel := context.WithTimeout(ctx, timeout)
			lag, err := lr.Lag(cctx, t.Topic, t.Group)
			cancel()
			mu.Lock()
			switch {
			case err != nil && !t.failing:
				t.failing = true
				i.log.Warn("courier: consumer lag unavailable", "topic", t.Topic, "group", t.Group, "error", err)
			case err == nil && t.failing:
				t.failing = false
				i.log.Info("courier: consumer lag available again", "topic", t.Topic, "group", t.Group)
			}
			mu.Unlock()
			if err != nil {
				continue
			}
			gauge := i.lag
			if t.DeadLetter {
				gauge = i.dlqDepth
			}
			if len(lag.Partitions) > 0 {
				for _, p := range lag.Partitions {
					kv := append(t.attrs[:len(t.attrs):len(t.attrs)], semconv.MessagingDestinationPartitionIDKey.String(strconv.Itoa(int(p.Partition))))
					o.ObserveInt64(gauge, p.Lag, metric.WithAttributes(kv...))
				}
			} else {
				o.ObserveInt64(gauge, lag.Pending, metric.WithAttributes(t.attrs...))
			}
			if lag.InFlight >= 0 && !t.DeadLetter {
				o.ObserveInt64(i.inFlight, lag.InFlight, metric.WithAttributes(t.attrs...))
			}
		}
		return nil
	}, i.lag, i.inFlight, i.dlqDepth)
	if err != nil {
		return nil, fmt.Errorf("courierotel: register lag callback: %w", err)
	}
	return &Registration{reg: reg}, nil
}
