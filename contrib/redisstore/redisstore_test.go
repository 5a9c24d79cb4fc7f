package redisstore_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/courierkit/courier/contrib/redisstore"
	"github.com/courierkit/courier/internal/testenv"
	"github.com/courierkit/courier/message"
	"github.com/courierkit/courier/middleware"
	"github.com/courierkit/courier/middleware/storetest"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var seq atomic.Int64

// prefix makes keys unique per case and run, so cases can share a server.
func prefix() string {
	return fmt.Sprintf("courier-test:%d:%d:", time.Now().UnixNano(), seq.Add(1))
}

func TestMiniredis(t *testing.T) {
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = c.Close() })
	storetest.Run(t, storetest.Harness{
		New: func(t *testing.T) middleware.IdempotencyStore {
			return redisstore.New(c, redisstore.Options{Prefix: prefix()})
		},
		Advance: func(t *testing.T, d time.Duration) { mr.FastForward(d) },
	})
}

func realRedis(t *testing.T) *redis.Client {
	t.Helper()
	opt, err := redis.ParseURL(testenv.Redis(t))
	if err != nil {
		t.Fatal(err)
	}
	c := redis.NewClient(opt)
	t.Cleanup(func() { _ = c.Close() })
	if err := c.Ping(t.Context()).Err(); err != nil {
		testenv.Unavailable(t, "Redis ping: "+err.Error())
	}
	return c
}

func TestRealRedis(t *testing.T) {
	c := realRedis(t)
	storetest.Run(t, storetest.Harness{
		New: func(t *testing.T) middleware.IdempotencyStore {
			p := prefix()
			t.Cleanup(func() { cleanup(c, p) })
			return redisstore.New(c, redisstore.Options{Prefix: p})
		},
		ShortTTL: 150 * time.Millisecond,
	})
}

func cleanup(c *redis.Client, p string) {
	ctx := context.Background()
	keys, _ := c.Keys(ctx, p+"*").Result()
	if len(keys) > 0 {
		c.Del(ctx, keys...)
	}
}

// The store under the Idempotency middleware: two "processes" (stores on
// separate clients) racing on the same message run the handler once.
func TestIdempotencyAcrossProcesses(t *testing.T) {
	c1 := realRedis(t)
	opt, _ := redis.ParseURL(testenv.Redis(t))
	c2 := redis.NewClient(opt)
	t.Cleanup(func() { _ = c2.Close() })
	p := prefix()
	t.Cleanup(func() { cleanup(c1, p) })
	var runs atomic.Int32
	var gate chan struct{}
	h := message.HandlerFunc(func(context.Context, *message.Message) error {
		runs.Add(1)
		<-gate // hold the claim until the other delivery was turned away
		return nil
	})
	a := middleware.Idempotency(redisstore.New(c1, redisstore.Options{Prefix: p}), middleware.IdempotencyOptions{Scope: "g"})(h)
	b := middleware.Idempotency(redisstore.New(c2, redisstore.Options{Prefix: p}), middleware.IdempotencyOptions{Scope: "g"})(h)
	for i := range 20 {
		id := fmt.Sprintf("m-%d", i)
		gate = make(chan struct{})
		var release sync.Once
		errs := make(chan error, 2)
		for _, mw := range []message.Handler{a, b} {
			go func() {
				err := mw.Handle(t.Context(), &message.Message{ID: id})
				if err != nil {
					release.Do(func() { close(gate) }) // the loser returns at once: release the winner
				}
				errs <- err
			}()
		}
		turnedAway := 0
		for range 2 {
			if err := <-errs; err != nil {
				if !errors.Is(err, middleware.ErrInProgress) {
					t.Fatal(err)
				}
				turnedAway++
			}
		}
		if turnedAway != 1 {
			t.Fatalf("message %s: %d deliveries turned away, want exactly 1", id, turnedAway)
		}
		// The redelivery of the loser finds it processed.
		if err := b.Handle(t.Context(), &message.Message{ID: id}); err != nil {
			t.Fatal(err)
		}
	}
	if runs.Load() != 20 {
		t.Fatalf("20 messages delivered twice each ran %d times, want 20", runs.Load())
	}
	if v, _ := c1.Get(t.Context(), p+"g/m-0").Result(); v != "d" {
		t.Fatalf("stored value %q", v)
	}
	if ttl := c1.PTTL(t.Context(), p+"g/m-0").Val(); ttl <= 23*time.Hour {
		t.Fatalf("retention TTL %v, want ~24h", ttl)
	}
}

func TestRedisDown(t *testing.T) {
	mr := miniredis.RunT(t)
	c := redis.NewClient(&redis.Options{Addr: mr.Addr(), MaxRetries: -1})
	t.Cleanup(func() { _ = c.Close() })
	s := redisstore.New(c, redisstore.Options{})
	mr.Close()
	if _, err := s.Claim(t.Context(), "k", "t", time.Minute); err == nil {
		t.Fatal("Claim against a stopped Redis succeeded")
	}
}

// BenchmarkClaimDone is the store's cost per message on the success path
// (one Claim and one Done, two round trips), on real Redis.
func BenchmarkClaimDone(b *testing.B) {
	opt, err := redis.ParseURL(testenv.Redis(b))
	if err != nil {
		b.Fatal(err)
	}
	c := redis.NewClient(opt)
	defer c.Close()
	p := prefix()
	defer func() {
		ctx := context.Background()
		iter := c.Scan(ctx, 0, p+"*", 1000).Iterator()
		var keys []string
		for iter.Next(ctx) {
			keys = append(keys, iter.Val())
		}
		if len(keys) > 0 {
			c.Del(ctx, keys...)
		}
	}()
	s := redisstore.New(c, redisstore.Options{Prefix: p, DefaultRetention: time.Minute})
	ctx := context.Background()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		k := strconv.Itoa(i)
		i++
		if st, err := s.Claim(ctx, k, "tok", time.Minute); err != nil || st != middleware.Claimed {
			b.Fatal(st, err)
		}
		if err := s.Done(ctx, k, "tok", 0); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "msg/s")
}
