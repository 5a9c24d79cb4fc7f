// Package redisstore is a middleware.IdempotencyStore on Redis
// (redis/go-redis/v9), for de-duplicating messages across every process
// of a consumer group.
//
// # Data model
//
// One Redis string per key, named Options.Prefix + key: "c:<token>" while
// claimed, "d" once processed, each with a millisecond expiry (PX) — the
// claim TTL, then the retention. Expiry is Redis's own (server clock), so
// processes with skewed clocks agree, and expired keys cost nothing to
// clean up. Claim and Release are Lua scripts (EVALSHA, loaded on first
// use), so each is atomic; Done is one SET. Every operation touches one
// key, so the store works on Redis Cluster (any redis.UniversalClient or
// other redis.Scripter with the string commands).
//
// # Durability
//
// The store is as durable as the Redis deployment: without persistence, a
// Redis restart forgets processed keys (duplicates arriving later run
// again) and claims (a concurrent duplicate may run). A failover to a
// replica that missed the last writes has the same effect for those keys.
// Size the memory for (messages per retention period) × (prefix + key +
// ~60 bytes).
//
// # Errors
//
// Redis errors are wrapped ("redisstore: claim <key>: ...") and stay
// reachable with errors.As / errors.Is (redis.Error, redis.Nil never
// escapes). A cancelled context returns ctx.Err().
//
// # Tests and performance
//
// The store passes middleware/storetest on miniredis (with its clock
// fast-forwarded) and on a real Redis found by internal/testenv
// ($COURIER_REDIS_URL, else 127.0.0.1:6379, else a private
// redis-server); two stores on separate connections racing on the same
// messages run each handler once. BenchmarkClaimDone measures one Claim
// plus one Done (two round trips) on real Redis: 73 µs per message,
// 22 allocations (go-redis), measured on the shared 2-core CI machine
// under a load average of about 12 — the round trips dominate; pipelining
// is not possible because Done depends on the handler's outcome.
//
// # Concurrency
//
// A Store is safe for concurrent use; it holds no state besides the
// client, which it does not close.
package redisstore
