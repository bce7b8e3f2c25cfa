package latestcache_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/pkg/testpg"
	"github.com/biobridge/bridge/services/persistence/internal/latestcache"
	"github.com/biobridge/bridge/services/persistence/internal/record"
)

// BenchmarkCacheGet reads warm hashes of 1000 users with 5 metrics each,
// from parallel goroutines, through the near-cache and through Redis.
func BenchmarkCacheGet(b *testing.B) {
	url, prefix := testpg.NewRedis(b)
	opts, err := redis.ParseURL(url)
	require.NoError(b, err)
	rdb := redis.NewClient(opts)
	b.Cleanup(func() { _ = rdb.Close() })
	at := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	users := make([]string, 1000)
	plain := latestcache.New(rdb, prefix, time.Hour)
	for i := range users {
		users[i] = fmt.Sprintf("u%d", i)
		var vals []record.Latest
		for _, m := range []string{"heart_rate_bpm", "hrv_rmssd_ms", "resting_heart_rate_bpm", "spo2_pct", "respiratory_rate_brpm"} {
			vals = append(vals, val(m, 60, at))
		}
		_, err := plain.Fill(context.Background(), users[i], 1, vals)
		require.NoError(b, err)
	}
	r := newReplica(b, url, prefix, true)
	for name, c := range map[string]*latestcache.Cache{"redis": plain, "near": r.cache} {
		b.Run(name, func(b *testing.B) {
			b.RunParallel(func(pb *testing.PB) {
				i := 0
				for pb.Next() {
					_, _, ok, err := c.Get(context.Background(), users[i%len(users)])
					if err != nil || !ok {
						b.Fatal(ok, err)
					}
					i += 7
				}
			})
		})
	}
	b.Logf("near-cache reads: hit %d, miss %d, bypass %d", r.count("hit"), r.count("miss"), r.count("bypass"))
}
