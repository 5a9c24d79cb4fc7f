package outbox_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"
	amqp "github.com/rabbitmq/amqp091-go"

	"github.com/courierkit/courier/internal/testenv"
	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/outbox"
	"github.com/courierkit/courier/transport"
	_ "github.com/courierkit/courier/transport/amqp"
	memtransport "github.com/courierkit/courier/transport/mem"
	_ "github.com/courierkit/courier/transport/nats"
)

func pct(d []time.Duration, p float64) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[min(len(s)-1, int(float64(len(s))*p))]
}

// BenchmarkWriteLatency measures what the outbox adds to a single-row
// business transaction (BEGIN; INSERT; COMMIT): each op runs one plain
// transaction and one with an outbox message (key lock and NOTIFY on, the
// defaults), interleaved so both see the same machine load, and reports
// their p50/p99 and the p99 difference.
func BenchmarkWriteLatency(b *testing.B) {
	for _, c := range []struct {
		driver string
		opts   outbox.Options
		name   string
	}{
		{"pgx", outbox.Options{}, "pgx"},
		{"database-sql", outbox.Options{}, "database-sql"},
		{"pgx", outbox.Options{NoKeyLock: true, NoNotify: true}, "pgx-nolock-nonotify"},
	} {
		driver := c.driver
		b.Run(c.name, func(b *testing.B) {
			e := newEnv(b, 0)
			ctx := context.Background()
			w := e.outbox(b, c.opts)
			if _, err := e.conn.Exec(ctx, "CREATE TABLE "+e.tables.Schema+".orders (id bigserial PRIMARY KEY, body text NOT NULL)"); err != nil {
				b.Fatal(err)
			}
			ins := "INSERT INTO " + e.tables.Schema + ".orders (body) VALUES ($1)"
			sqlConn, err := e.db.Conn(ctx)
			if err != nil {
				b.Fatal(err)
			}
			defer sqlConn.Close()
			var calls []time.Duration // the Publish call alone
			one := func(withOutbox bool, i int) time.Duration {
				m := &message.Message{Key: fmt.Sprintf("order-%d", i%1000), Payload: []byte(`{"order":"created","amount":42}`),
					Headers: message.Header{message.HeaderType: "order.created"}}
				start := time.Now()
				switch driver {
				case "pgx":
					tx, err := e.conn.Begin(ctx)
					if err != nil {
						b.Fatal(err)
					}
					if _, err := tx.Exec(ctx, ins, "order"); err != nil {
						b.Fatal(err)
					}
					if withOutbox {
						t0 := time.Now()
						if err := w.Publish(ctx, outbox.Pgx(tx), "orders", m); err != nil {
							b.Fatal(err)
						}
						calls = append(calls, time.Since(t0))
					}
					if err := tx.Commit(ctx); err != nil {
						b.Fatal(err)
					}
				default:
					tx, err := sqlConn.BeginTx(ctx, nil)
					if err != nil {
						b.Fatal(err)
					}
					if _, err := tx.ExecContext(ctx, ins, "order"); err != nil {
						b.Fatal(err)
					}
					if withOutbox {
						t0 := time.Now()
						if err := w.Publish(ctx, outbox.SQL(tx), "orders", m); err != nil {
							b.Fatal(err)
						}
						calls = append(calls, time.Since(t0))
					}
					if err := tx.Commit(); err != nil {
						b.Fatal(err)
					}
				}
				return time.Since(start)
			}
			for i := range 200 { // warm up: plans, connection
				one(i%2 == 0, i)
			}
			var plain, with []time.Duration
			calls = calls[:0]
			i := 0
			for b.Loop() {
				plain = append(plain, one(false, i))
				with = append(with, one(true, i))
				i++
			}
			b.ReportMetric(float64(pct(plain, 0.5).Microseconds()), "plain-p50-µs")
			b.ReportMetric(float64(pct(plain, 0.99).Microseconds()), "plain-p99-µs")
			b.ReportMetric(float64(pct(with, 0.5).Microseconds()), "outbox-p50-µs")
			b.ReportMetric(float64(pct(with, 0.99).Microseconds()), "outbox-p99-µs")
			b.ReportMetric(float64((pct(with, 0.99) - pct(plain, 0.99)).Microseconds()), "added-p99-µs")
			b.ReportMetric(float64(pct(calls, 0.5).Microseconds()), "publish-call-p50-µs")
			b.ReportMetric(float64(pct(calls, 0.99).Microseconds()), "publish-call-p99-µs")
		})
	}
}

// preload writes n rows over 100 keys, 1000 per transaction.
func preload(b *testing.B, e *env, topic string, n int) {
	b.Helper()
	w := e.outbox(b, outbox.Options{NoNotify: true})
	ctx := context.Background()
	payload := []byte(strings.Repeat("x", 200))
	for i := 0; i < n; i += 1000 {
		tx, err := e.conn.Begin(ctx)
		if err != nil {
			b.Fatal(err)
		}
		var msgs []*message.Message
		for j := i; j < min(n, i+1000); j++ {
			msgs = append(msgs, &message.Message{Key: fmt.Sprintf("key-%d", j%100), Payload: payload,
				Headers: message.Header{message.HeaderType: "bench"}})
		}
		if err := w.Publish(ctx, outbox.Pgx(tx), topic, msgs...); err != nil {
			b.Fatal(err)
		}
		if err := tx.Commit(ctx); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := e.conn.Exec(ctx, "ANALYZE "+e.tables.Schema+".courier_outbox"); err != nil {
		b.Fatal(err)
	}
}

// relayThroughput preloads b.N rows, then times one relay moving them all
// to pub and reports msg/s.
func relayThroughput(b *testing.B, pub transport.Publisher, topic string, batch int) {
	e := newEnv(b, 0)
	n := b.N
	preload(b, e, topic, n)
	r, err := outbox.NewRelay(e.url, pub, outbox.RelayOptions{Tables: e.tables, BatchSize: batch, MaxPartitions: benchMaxParts, PollInterval: 10 * time.Millisecond})
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	start := time.Now()
	done := make(chan error, 1)
	go func() { done <- r.Run(context.Background()) }()
	deadline := time.Now().Add(5 * time.Minute)
	for r.Counters().Published < int64(n) {
		if time.Now().After(deadline) {
			b.Fatalf("relay moved %d of %d rows in 5m", r.Counters().Published, n)
		}
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	b.StopTimer()
	r.Close()
	<-done
	b.ReportMetric(float64(n)/elapsed.Seconds(), "msg/s")
}

// BenchmarkRelayMem: one relay, PostgreSQL to the mem transport (a group
// declared, so every message is stored for it). Run with a fixed count:
// -benchtime=50000x.
func BenchmarkRelayMem(b *testing.B) {
	for _, c := range []struct{ batch, parts int }{{500, 0}, {500, 64}, {2000, 64}} {
		batch := c.batch
		b.Run(fmt.Sprintf("batch=%d/maxparts=%d", c.batch, c.parts), func(b *testing.B) {
			benchMaxParts = c.parts
			defer func() { benchMaxParts = 0 }()
			ctx := context.Background()
			tr, err := memtransport.New(ctx, memtransport.Options{MaxBacklog: b.N + 1})
			if err != nil {
				b.Fatal(err)
			}
			defer tr.Close()
			if err := tr.Declare(ctx, "bench", transport.SubscribeOptions{Group: "g"}); err != nil {
				b.Fatal(err)
			}
			relayThroughput(b, tr, "bench", batch)
		})
	}
}

// BenchmarkRelayNATS: one relay to JetStream at 127.0.0.1:4222 (or
// $COURIER_NATS_URL), with the natstransport adapter; each Publish waits
// for JetStream's acks. The stream is deleted afterwards.
func BenchmarkRelayNATS(b *testing.B) {
	url := testenv.NATS(b)
	ctx := context.Background()
	conn, err := transport.Open(ctx, url)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	topic := randName("outboxbench")
	var js jetstream.JetStream
	if conn.As(&js) {
		defer func() { // before conn.Close
			var names []string
			for name := range js.StreamNames(ctx).Name() {
				if strings.Contains(strings.ToLower(name), topic) {
					names = append(names, name)
				}
			}
			for _, name := range names {
				if err := js.DeleteStream(ctx, name); err != nil {
					b.Errorf("delete stream %s: %v", name, err)
				}
			}
		}()
	}
	relayThroughput(b, conn, topic, 500)
}

// BenchmarkRelayRabbitMQ: one relay to RabbitMQ at 127.0.0.1:5672 (or
// $COURIER_AMQP_URL) with publisher confirms, publishing to a topic
// exchange with no queue bound (allow_unroutable), so the figure is the
// publish path and the broker keeps nothing. The exchange is deleted
// afterwards.
func BenchmarkRelayRabbitMQ(b *testing.B) {
	url := testenv.FindRabbitMQ(b)
	ctx := context.Background()
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	conn, err := transport.Open(ctx, url+sep+"allow_unroutable=true")
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	topic := randName("outboxbench")
	var ac *amqp.Connection
	if conn.As(&ac) {
		defer func() { // before conn.Close
			if ch, err := ac.Channel(); err == nil {
				if err := ch.ExchangeDelete(topic, false, false); err != nil {
					b.Logf("delete exchange %s: %v", topic, err)
				}
				ch.Close()
			}
		}()
	}
	relayThroughput(b, conn, topic, 500)
}

var _ = pgx.Identifier{}

// benchMaxParts is RelayOptions.MaxPartitions in the relay benchmarks: 0,
// the default, unless a sub-benchmark changes it.
var benchMaxParts = 0
