package server_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	"github.com/biobridge/bridge/services/persistence/server"
)

// replicas starts two persistence replicas on one database and one Redis
// key prefix, each with its own near-cache (configured by opts: strict
// without any).
func replicas(t *testing.T, opts ...option) (a, b *env) {
	t.Helper()
	a = start(t, opts...)
	b = startWith(t, a.cfg)
	return a, b
}

// relaxedNear lets the near-cache serve without a barrier per read
// (LATEST_NEAR_CACHE_MAX_STALENESS=100ms).
func relaxedNear(c *server.Config) { c.LatestNearCacheMaxStaleness = 100 * time.Millisecond }

// TestStrictNearCacheReadsEveryAcknowledgedWrite: with the defaults, a
// GetLatest on one replica sees every write acknowledged by another before
// it started, with no barrier of the test's own, and is served by the
// near-cache when nothing changed.
func TestStrictNearCacheReadsEveryAcknowledgedWrite(t *testing.T) {
	t.Parallel()
	a, b := replicas(t)
	user := newUser()
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	for i := range 20 {
		a.write(event(user, fmt.Sprintf("r%d", i), reading("heart_rate_bpm", float64(60+i), base.Add(time.Duration(i)*time.Second))))
		for _, e := range []*env{b, b, a} {
			v, ok := e.heartRate(user)
			require.True(t, ok)
			require.InDelta(t, float64(60+i), v, 0, "write %d acknowledged before the read", i)
		}
	}
	require.Positive(t, counter(t, b.srv.Registry(), "biobridge_persistence_near_cache_reads_total", "result", "hit"), "repeated reads are served by the near-cache")

	// An erasure acknowledged by a: b serves nothing of the user at once.
	_, err := a.persistence.DeleteUserData(a.ingestCtx(), &persistencev1.DeleteUserDataRequest{UserId: user})
	require.NoError(t, err)
	for _, e := range []*env{b, b, a} {
		require.Empty(t, e.latest(user), "erased values served after the erasure was acknowledged")
	}
}

func (e *env) barrier() {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(e.t, e.srv.NearCacheBarrier(ctx))
}

func (e *env) heartRate(user string) (float64, bool) {
	e.t.Helper()
	v, ok := e.latest(user)["heart_rate_bpm"]
	return v.GetValue(), ok
}

func TestNearCacheWritesAndErasureAcrossReplicas(t *testing.T) {
	t.Parallel()
	a, b := replicas(t, relaxedNear)
	user := newUser()
	now := time.Now().Truncate(time.Second)

	a.write(event(user, "r1", reading("heart_rate_bpm", 100, now.Add(-time.Hour))))
	// The first read finds the hash the write left incomplete (a new user)
	// and fills it from PostgreSQL; after the fill's invalidation, b keeps
	// the complete hash and serves it without Redis or PostgreSQL.
	b.barrier()
	v, _ := b.heartRate(user)
	require.InDelta(t, 100, v, 0)
	b.barrier()
	_, _ = b.heartRate(user)
	nearHits := counter(t, b.srv.Registry(), "biobridge_persistence_near_cache_reads_total", "result", "hit")
	cacheHits := counter(t, b.srv.Registry(), "biobridge_persistence_cache_reads_total", "result", "hit")
	for range 3 {
		v, ok := b.heartRate(user)
		require.True(t, ok)
		require.InDelta(t, 100, v, 0)
	}
	require.InDelta(t, nearHits+3, counter(t, b.srv.Registry(), "biobridge_persistence_near_cache_reads_total", "result", "hit"), 0, "b serves from its near-cache")
	require.InDelta(t, cacheHits+3, counter(t, b.srv.Registry(), "biobridge_persistence_cache_reads_total", "result", "hit"), 0, "b's near-cache holds the complete snapshot")

	// A write through a: a's own reads see it as soon as it is acknowledged,
	// b's once its invalidation is applied (the barrier).
	a.write(event(user, "r2", reading("heart_rate_bpm", 120, now.Add(-time.Minute))))
	v, _ = a.heartRate(user)
	require.InDelta(t, 120, v, 0, "the writing replica reads its acknowledged write")
	b.barrier()
	v, _ = b.heartRate(user)
	require.InDelta(t, 120, v, 0, "the other replica's near-cache was invalidated")

	// Erasure through a: neither replica serves the erased values again.
	// (A rewrite of an erased user is refused; the near-cache's own test
	// covers a rewrite at a reused commit counter in Redis.)
	_, err := a.persistence.DeleteUserData(a.ingestCtx(), &persistencev1.DeleteUserDataRequest{UserId: user})
	require.NoError(t, err)
	require.Empty(t, a.latest(user), "the erasing replica serves nothing after the erasure")
	b.barrier()
	require.Empty(t, b.latest(user), "the other replica's near-cache was invalidated by the erasure")
	_, err = a.persistence.WriteEvents(a.ingestCtx(), &persistencev1.WriteEventsRequest{Events: []*persistencev1.EventInput{
		event(user, "r3", reading("heart_rate_bpm", 50, time.Now())),
	}})
	require.NoError(t, err)
	b.barrier()
	for _, e := range []*env{a, b, a, b} {
		require.Empty(t, e.latest(user))
	}
}

func TestNearCacheLatestNeverRegresses(t *testing.T) {
	t.Parallel()
	a, b := replicas(t, relaxedNear)
	user := newUser()
	base := time.Now().Add(-time.Hour).Truncate(time.Second)
	const writes = 40
	a.write(event(user, "r0", reading("heart_rate_bpm", 60, base)))
	// Both near-caches hold the complete snapshot before the writes start
	// (the first read fills the hash; the fill's invalidation follows).
	for _, e := range []*env{a, b} {
		_, _ = e.heartRate(user)
		e.barrier()
	}

	done := make(chan struct{})
	var wg sync.WaitGroup
	// Readers on both replicas: what each sees never goes back.
	for i, e := range []*env{a, b, a, b} {
		wg.Go(func() {
			last := 0.0
			ctx := withToken(context.Background(), agentToken)
			for {
				select {
				case <-done:
					return
				default:
				}
				resp, err := e.biometrics.GetLatest(ctx, &biometricsv1.GetLatestRequest{UserId: user})
				if err != nil {
					t.Errorf("reader %d: %v", i, err)
					return
				}
				for _, lv := range resp.GetValues() {
					if lv.GetValue() < last {
						t.Errorf("reader %d saw %v after %v", i, lv.GetValue(), last)
						return
					}
					last = lv.GetValue()
				}
			}
		})
	}
	for i := 61; i <= 60+writes; i++ {
		a.write(event(user, fmt.Sprintf("r%d", i), reading("heart_rate_bpm", float64(i), base.Add(time.Duration(i)*time.Second))))
		v, _ := a.heartRate(user)
		require.InDelta(t, float64(i), v, 0, "the writing replica reads its acknowledged write")
	}
	close(done)
	wg.Wait()
	b.barrier()
	v, _ := b.heartRate(user)
	require.InDelta(t, 60+writes, v, 0)
}

func TestNearCacheHitsAreAudited(t *testing.T) {
	t.Parallel()
	e := start(t)
	user := newUser()
	e.write(event(user, "a", reading("heart_rate_bpm", 60, time.Now().Add(-time.Minute))))
	e.barrier()
	const n = 20
	for range n {
		_, ok := e.heartRate(user)
		require.True(t, ok)
	}
	require.GreaterOrEqual(t, counter(t, e.srv.Registry(), "biobridge_persistence_near_cache_reads_total", "result", "hit"), float64(n-2))
	e.srv.FlushAudit(context.Background())
	require.Equal(t, n, e.count(`SELECT count(*) FROM audit_log WHERE user_id = $1 AND method = 'GetLatest'`, user), "every read is audited, near-cache hits too")
}

func TestNearCacheCanBeTurnedOff(t *testing.T) {
	t.Parallel()
	e := start(t, func(c *server.Config) { c.LatestNearCacheOff = true })
	user := newUser()
	e.write(event(user, "a", reading("heart_rate_bpm", 60, time.Now().Add(-time.Minute))))
	for range 3 {
		_, ok := e.heartRate(user)
		require.True(t, ok)
	}
	require.Zero(t, counter(t, e.srv.Registry(), "biobridge_persistence_near_cache_reads_total"))
	require.Positive(t, counter(t, e.srv.Registry(), "biobridge_persistence_cache_reads_total", "result", "hit"))
}
