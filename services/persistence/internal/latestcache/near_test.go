package latestcache_test

import (
	"context"
	"io"
	"net"
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
	return newReplicaWith(t, url, url, prefix, run, time.Hour)
}

// newReplicaWith is newReplica with the near-cache connecting to nearURL
// and serving under maxStale (0: strict).
func newReplicaWith(t testing.TB, url, nearURL, prefix string, run bool, maxStale time.Duration) *replica {
	t.Helper()
	opts, err := redis.ParseURL(url)
	require.NoError(t, err)
	r := &replica{rdb: redis.NewClient(opts), results: map[string]int{}}
	t.Cleanup(func() { _ = r.rdb.Close() })
	r.near, err = latestcache.NewNear(latestcache.NearConfig{
		RedisURL: nearURL, MaxBytes: 32 << 20, TTL: time.Hour, MaxStale: maxStale,
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

// TestStrictNearCacheSeesEveryAcknowledgedWrite: with MaxStale 0 a read on
// one replica sees a write acknowledged through another before the read
// started, even when the invalidations reach the reader late (its
// connection delays every reply by 40ms here), and the reads still hit.
func TestStrictNearCacheSeesEveryAcknowledgedWrite(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, prefix := testpg.NewRedis(t)
	a := newReplica(t, url, prefix, true)
	b := newReplicaWith(t, url, slowRepliesURL(t, url, 40*time.Millisecond), prefix, true, 0)
	at := time.Date(2026, 11, 2, 0, 0, 0, 0, time.UTC)

	fill(t, a.cache, "u1", 1, 60)
	for i := int64(1); i <= 10; i++ {
		// Twice: the second read is served by b's near-cache.
		for range 2 {
			v, seq := b.get(t, "u1")
			require.Equal(t, i, seq, "b missed a write acknowledged before its read")
			require.InDelta(t, float64(60+i-1), v["heart_rate_bpm"].Value, 0)
		}
		_, err := a.cache.Apply(ctx, []record.UserChange{{UserID: "u1", Seq: i + 1, Prev: i, Set: []record.Latest{val("heart_rate_bpm", float64(60+i), at.Add(time.Duration(i)*time.Minute))}}})
		require.NoError(t, err)
	}
	require.GreaterOrEqual(t, b.count("hit"), 10, "the near-cache served the repeated reads")
}

// TestStrictNearCacheSharesBarriers: concurrent strict reads share PINGs
// rather than sending one each.
func TestStrictNearCacheSharesBarriers(t *testing.T) {
	t.Parallel()
	url, prefix := testpg.NewRedis(t)
	r := newReplicaWith(t, url, slowRepliesURL(t, url, 20*time.Millisecond), prefix, false, 0)
	fill(t, r.cache, "u1", 1, 60)
	_, _ = r.get(t, "u1")
	before := r.near.Barriers()
	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() { _, _ = r.get(t, "u1") })
	}
	wg.Wait()
	require.Equal(t, 50+1, r.count("hit")+r.count("miss"))
	// 50 reads within a few 40ms round trips: a handful of barriers.
	require.LessOrEqual(t, r.near.Barriers()-before, int64(10))
}

// slowRepliesURL returns a redis URL for a proxy to url that holds every
// reply 'delay' before passing it on (requests go through at once; order
// is kept).
func slowRepliesURL(t testing.TB, url string, delay time.Duration) string {
	t.Helper()
	return newReplyProxy(t, url, delay).url
}

// replyProxy is a TCP proxy to Redis that delays replies, or holds them
// all while stalled (a Redis that stopped answering).
type replyProxy struct {
	url   string
	stall atomic.Bool
}

func newReplyProxy(t testing.TB, url string, delay time.Duration) *replyProxy {
	t.Helper()
	opts, err := redis.ParseURL(url)
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &replyProxy{url: "redis://" + ln.Addr().String() + "/" + strconv.Itoa(opts.DB)}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", opts.Addr)
			if err != nil {
				_ = c.Close()
				continue
			}
			t.Cleanup(func() { _ = c.Close(); _ = s.Close() })
			go func() { _, _ = io.Copy(s, c) }()
			go func() {
				type chunk struct {
					b  []byte
					at time.Time
				}
				q := make(chan chunk, 1024)
				go func() {
					for ch := range q {
						time.Sleep(time.Until(ch.at))
						for p.stall.Load() {
							time.Sleep(time.Millisecond)
						}
						if _, err := c.Write(ch.b); err != nil {
							return
						}
					}
				}()
				defer close(q)
				for {
					buf := make([]byte, 64<<10)
					n, err := s.Read(buf)
					if n > 0 {
						q <- chunk{buf[:n], time.Now().Add(delay)}
					}
					if err != nil {
						return
					}
				}
			}()
		}
	}()
	return p
}

// TestStrictNearCacheGoesAroundAStalledRedis: once a shared barrier timed
// out, strict reads go to Redis without the near-cache at once, rather
// than each waiting for a barrier of its own; a barrier that succeeds
// brings the near-cache back.
func TestStrictNearCacheGoesAroundAStalledRedis(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	url, prefix := testpg.NewRedis(t)
	p := newReplyProxy(t, url, 0)
	r := newReplicaWith(t, url, p.url, prefix, false, 0)
	fill(t, r.cache, "u1", 1, 60)
	_, _ = r.get(t, "u1")
	_, _ = r.get(t, "u1")
	require.Positive(t, r.count("hit"))

	// The near-cache's connection stops answering (the cache's own
	// client, which reads around it, still reaches Redis).
	p.stall.Store(true)
	before, bypass := r.near.Barriers(), r.count("bypass")
	for range 10 {
		_, seq := r.get(t, "u1")
		require.EqualValues(t, 1, seq)
	}
	require.Equal(t, bypass+10, r.count("bypass"), "every read went around the stalled near-cache")
	require.LessOrEqual(t, r.near.Barriers()-before, int64(1), "one barrier timed out; the later reads did not wait for their own")

	p.stall.Store(false)
	require.Eventually(t, func() bool { return r.near.Barrier(ctx) == nil }, 10*time.Second, 10*time.Millisecond)
	hits := r.count("hit")
	_, _ = r.get(t, "u1")
	_, _ = r.get(t, "u1")
	require.Greater(t, r.count("hit"), hits, "served by the near-cache again")
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
