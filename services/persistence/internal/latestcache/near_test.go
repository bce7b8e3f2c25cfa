package latestcache_test

import (
	"context"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/pkg/testpg"
	"github.com/biobridge/bridge/services/persistence/internal/latestcache"
	"github.com/biobridge/bridge/services/persistence/internal/record"
)

// replica is one process's view of the shared Redis: a cache with its own
// near-cache, as each persistence replica has.
type replica struct {
	cache   *latestcache.Cache
	near    *latestcache.Near
	rdb     *redis.Client
	mu      sync.Mutex
	results map[string]int
	flushes atomic.Int64
}

func (r *replica) count(result string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.results[result]
}

// newReplica starts a near-cache on url under prefix. run=false leaves the
// background barriers off (the test drives them).
func newReplica(t testing.TB, url, prefix string, run bool) *replica {
	t.Helper()
	opts, err := redis.ParseURL(url)
	require.NoError(t, err)
	r := &replica{rdb: redis.NewClient(opts), results: map[string]int{}}
	t.Cleanup(func() { _ = r.rdb.Close() })
	r.near, err = latestcache.NewNear(latestcache.NearConfig{
		RedisURL: url, MaxBytes: 32 << 20, TTL: time.Hour, MaxStale: time.Hour,
		OnFlush: func() { r.flushes.Add(1) },
	})
	require.NoError(t, err)
	r.cache = latestcache.New(r.rdb, prefix, time.Hour).WithNear(r.near, func(result string) {
		r.mu.Lock()
		r.results[result]++
		r.mu.Unlock()
	})
	require.NoError(t, r.near.Connect())
	if run {
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			r.near.Run(ctx)
		}()
		t.Cleanup(func() { cancel(); <-done })
	} else {
		t.Cleanup(r.near.Close)
	}
	require.NoError(t, r.near.Barrier(context.Background()))
	return r
}

func (r *replica) get(t *testing.T, user string) (map[string]record.Latest, int64) {
	t.Helper()
	vals, seq, ok, err := r.cache.Get(context.Background(), user)
	require.NoError(t, err)
	require.True(t, ok, "complete snapshot")
	return vals, seq
}

func fill(t *testing.T, c *latestcache.Cache, user string, seq int64, v float64) {
	t.Helper()
	at := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	_, err := c.Fill(context.Background(), user, seq, []record.Latest{val("heart_rate_bpm", v, at)})
	require.NoError(t, err)
}

func TestNearCacheSeesOtherReplicasWritesAfterABarrier(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, prefix := testpg.NewRedis(t)
	a := newReplica(t, url, prefix, true)
	b := newReplica(t, url, prefix, true)
	at := time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC)

	fill(t, a.cache, "u1", 1, 60)
	v, seq := b.get(t, "u1")
	require.EqualValues(t, 1, seq)
	require.InDelta(t, 60, v["heart_rate_bpm"].Value, 0)
	_, _ = b.get(t, "u1")
	require.Positive(t, b.count("hit"), "the second read is served by b's near-cache")

	// A write through the other replica's writer path (Apply), then a
	// barrier on b's connection: the invalidation is applied.
	_, err := a.cache.Apply(ctx, []record.UserChange{{UserID: "u1", Seq: 2, Prev: 1, Set: []record.Latest{val("heart_rate_bpm", 70, at)}}})
	require.NoError(t, err)
	require.NoError(t, b.near.Barrier(ctx))
	v, seq = b.get(t, "u1")
	require.EqualValues(t, 2, seq, "b serves the write it was told about, not its old entry")
	require.InDelta(t, 70, v["heart_rate_bpm"].Value, 0)

	// A write straight to Redis (no persistence code at all).
	require.NoError(t, b.near.Barrier(ctx))
	_, _ = b.get(t, "u1")
	require.NoError(t, a.rdb.HSet(ctx, a.cache.HashKey("u1"), "_seq", "3").Err())
	require.NoError(t, b.near.Barrier(ctx))
	_, seq = b.get(t, "u1")
	require.EqualValues(t, 3, seq)

	// An erasure (DEL) then a rewrite at a commit counter the user held
	// before the erasure: never the pre-erasure values.
	require.NoError(t, a.cache.Forget(ctx, "u1"))
	fill(t, a.cache, "u1", 2, 55)
	require.NoError(t, b.near.Barrier(ctx))
	v, seq = b.get(t, "u1")
	require.EqualValues(t, 2, seq)
	require.InDelta(t, 55, v["heart_rate_bpm"].Value, 0, "pre-erasure value served")
}

func TestNearCacheWriterMarksAreReadFromRedisUntilABarrier(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, prefix := testpg.NewRedis(t)
	r := newReplica(t, url, prefix, false)
	fill(t, r.cache, "u1", 1, 60)
	_, _ = r.get(t, "u1")
	_, _ = r.get(t, "u1")
	hits := r.count("hit")
	require.Positive(t, hits)

	// A barrier that cannot complete: the written key stays marked and is
	// read without the near-cache.
	dead, cancel := context.WithCancel(ctx)
	cancel()
	require.Error(t, r.near.Sync(dead, []string{r.cache.HashKey("u1")}))
	bypass := r.count("bypass")
	_, _ = r.get(t, "u1")
	require.Equal(t, bypass+1, r.count("bypass"), "a marked key is read from Redis")
	require.Equal(t, hits, r.count("hit"))
	// Other keys are still served.
	fill(t, r.cache, "u2", 1, 60)
	_, _ = r.get(t, "u2")
	_, _ = r.get(t, "u2")
	require.Equal(t, hits+1, r.count("hit"))

	// The next barrier clears the mark (nothing changed the key: its
	// entry is served again).
	require.NoError(t, r.near.Barrier(ctx))
	_, _ = r.get(t, "u1")
	require.Equal(t, hits+2, r.count("hit"))
}

func TestNearCacheIsBypassedWhenBarriersStop(t *testing.T) {
	t.Parallel()
	url, prefix := testpg.NewRedis(t)
	r := newReplica(t, url, prefix, false)
	var now atomic.Int64
	now.Store(int64(time.Hour))
	r.near.SetClock(func() time.Duration { return time.Duration(now.Load()) })
	require.NoError(t, r.near.Barrier(context.Background()))
	fill(t, r.cache, "u1", 1, 60)
	_, _ = r.get(t, "u1")
	_, _ = r.get(t, "u1")
	hits, bypass := r.count("hit"), r.count("bypass")
	require.Positive(t, hits)

	// MaxStale (1h here) after the last barrier started, nothing is served
	// from the near-cache: an invalidation it missed would show.
	now.Add(int64(time.Hour + time.Millisecond))
	_, _ = r.get(t, "u1")
	require.Equal(t, hits, r.count("hit"))
	require.Equal(t, bypass+1, r.count("bypass"))
}

func TestNearCacheFlushedWhenItsConnectionIsKilled(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, prefix := testpg.NewRedis(t)
	r := newReplica(t, url, prefix, false)
	fill(t, r.cache, "u1", 1, 60)
	_, _ = r.get(t, "u1")
	_, _ = r.get(t, "u1")
	hits := r.count("hit")
	require.Positive(t, hits)

	id, err := r.near.ClientID(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 1, r.rdb.ClientKillByFilter(ctx, "ID", strconv.FormatInt(id, 10)).Val(), "kills exactly our own connection")
	require.Eventually(t, func() bool { return r.flushes.Load() > 0 }, 10*time.Second, time.Millisecond, "the closed connection flushes the near-cache")

	// Changed while no connection tracked it: no invalidation will ever
	// come for the old entry.
	fill(t, r.cache, "u1", 2, 65)
	v, seq := r.get(t, "u1")
	require.EqualValues(t, 2, seq)
	require.InDelta(t, 65, v["heart_rate_bpm"].Value, 0)
	require.Equal(t, hits, r.count("hit"), "read from Redis after the flush")
}
