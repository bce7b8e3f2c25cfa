package server_test

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/pkg/testpg"
	"github.com/biobridge/bridge/services/persistence/server"
)

// TestRedisOutage: with Redis cut off, writes still succeed and GetLatest
// answers from PostgreSQL; after Redis returns the cache converges to
// PostgreSQL without any further write.
func TestRedisOutage(t *testing.T) {
	t.Parallel()
	redisURL, prefix := testpg.NewRedis(t)
	opts, err := redis.ParseURL(redisURL)
	require.NoError(t, err)
	px := testpg.NewProxy(t, opts.Addr)

	e := start(t, func(c *server.Config) {
		c.RedisURL = "redis://" + px.Addr() + "/0"
		c.RedisKeyPrefix = prefix
	})
	direct := redis.NewClient(opts)
	t.Cleanup(func() { _ = direct.Close() })
	e.rdb = direct
	user := newUser()
	at := time.Date(2026, 11, 1, 7, 0, 0, 0, time.UTC)

	e.write(event(user, "a", reading("heart_rate_bpm", 60, at)))
	require.Equal(t, 60.0, e.latest(user)["heart_rate_bpm"].GetValue())
	e.requireCacheMatchesPostgres(user)

	px.SetCut(true)
	// Writes succeed: a newer value, a new metric, and a deletion that
	// must restore an older value.
	e.write(event(user, "b", reading("heart_rate_bpm", 70, at.Add(time.Hour))))
	e.write(event(user, "c", reading("heart_rate_bpm", 80, at.Add(2*time.Hour)), reading("spo2_pct", 97, at)))
	_, err = e.persistence.DeleteRecords(e.ingestCtx(), delRequest(user, "c"))
	require.NoError(t, err)
	got := e.latest(user)
	require.Equal(t, 70.0, got["heart_rate_bpm"].GetValue(), "answered from PostgreSQL")
	require.NotContains(t, got, "spo2_pct")
	require.Positive(t, counter(t, e.srv.Registry(), "biobridge_persistence_cache_errors_total"))

	// The cache still holds the pre-outage value; it must not be served
	// once Redis is back, and it converges without another write.
	px.SetCut(false)
	require.Eventually(t, func() bool {
		h, err := direct.HGetAll(context.Background(), prefix+"bb:{u:"+user+"}:latest").Result()
		return err == nil && h["_ok"] == "1" && len(h) == 3 && strings.Contains(h["heart_rate_bpm"], `"r":"b"`)
	}, 20*time.Second, 50*time.Millisecond)
	e.requireCacheMatchesPostgres(user)
	require.Equal(t, 70.0, e.latest(user)["heart_rate_bpm"].GetValue())
}

// TestRedisNeverReachable: REDIS_URL points at a closed port from the
// start; the service starts, writes and reads work.
func TestRedisNeverReachable(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	closed := ln.Addr().String()
	require.NoError(t, ln.Close())

	e := start(t, func(c *server.Config) { c.RedisURL = "redis://" + closed + "/0" })
	user := newUser()
	at := time.Date(2026, 11, 1, 7, 0, 0, 0, time.UTC)
	res := e.write(event(user, "a", reading("heart_rate_bpm", 60, at)))
	require.NotEmpty(t, res[0].GetEventId())
	require.Equal(t, 60.0, e.latest(user)["heart_rate_bpm"].GetValue())
	require.Positive(t, counter(t, e.srv.Registry(), "biobridge_persistence_cache_reads_total", "result", "error"))
	require.Len(t, e.drainOutbox(), 1)
}
