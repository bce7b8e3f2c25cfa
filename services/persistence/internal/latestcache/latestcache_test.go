package latestcache_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	"github.com/biobridge/bridge/pkg/testpg"
	"github.com/biobridge/bridge/services/persistence/internal/latestcache"
	"github.com/biobridge/bridge/services/persistence/internal/record"
)

func newCache(t *testing.T) *latestcache.Cache {
	t.Helper()
	url, prefix := testpg.NewRedis(t)
	opts, err := redis.ParseURL(url)
	require.NoError(t, err)
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { _ = rdb.Close() })
	return latestcache.New(rdb, prefix, time.Hour)
}

func val(metric string, v float64, at time.Time) record.Latest {
	return record.Latest{Metric: metric, Value: v, ObservedAt: at.UTC(), Source: biometricsv1.Source_SOURCE_OURA, VendorRecordID: "r", Device: record.Device{Name: "ring"}}
}

func TestUpdatesApplyInCommitOrderOnly(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	at := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name    string
		fill    int64 // snapshot seq installed first (-1: none)
		updates []record.UserChange
		// want is the cache content after the updates (nil: not complete)
		want map[string]float64
	}{
		{
			name: "in order",
			fill: 0,
			updates: []record.UserChange{
				{Seq: 1, Prev: 0, Set: []record.Latest{val("heart_rate_bpm", 60, at)}},
				{Seq: 2, Prev: 1, Set: []record.Latest{val("spo2_pct", 97, at)}},
				{Seq: 3, Prev: 2, Removed: []string{"heart_rate_bpm"}},
			},
			want: map[string]float64{"spo2_pct": 97},
		},
		{
			name: "late update is ignored",
			fill: 5,
			updates: []record.UserChange{
				{Seq: 5, Prev: 4, Set: []record.Latest{val("heart_rate_bpm", 10, at)}},
				{Seq: 6, Prev: 5, Set: []record.Latest{val("heart_rate_bpm", 60, at)}},
			},
			want: map[string]float64{"heart_rate_bpm": 60},
		},
		{
			name: "gap invalidates",
			fill: 0,
			updates: []record.UserChange{
				{Seq: 2, Prev: 1, Set: []record.Latest{val("heart_rate_bpm", 60, at)}},
			},
		},
		{
			name: "no snapshot: updates do not create a partial one",
			fill: -1,
			updates: []record.UserChange{
				{Seq: 1, Prev: 0, Set: []record.Latest{val("heart_rate_bpm", 60, at)}},
				{Seq: 2, Prev: 1, Set: []record.Latest{val("spo2_pct", 97, at)}},
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := newCache(t)
			user := "user-" + tc.name
			if tc.fill >= 0 {
				ok, err := c.Fill(ctx, user, tc.fill, nil)
				require.NoError(t, err)
				require.True(t, ok)
			}
			for _, u := range tc.updates {
				u.UserID = user
				_, err := c.Apply(ctx, []record.UserChange{u})
				require.NoError(t, err)
			}
			vals, _, ok, err := c.Get(ctx, user)
			require.NoError(t, err)
			if tc.want == nil {
				require.False(t, ok)
				return
			}
			require.True(t, ok)
			got := map[string]float64{}
			for m, v := range vals {
				got[m] = v.Value
			}
			require.Equal(t, tc.want, got)
		})
	}
}

func TestFillNeverInstallsAnOlderSnapshot(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := newCache(t)
	at := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	// A write at seq 7 reached Redis before a read's snapshot at seq 6
	// could be installed: the marker it leaves blocks the old snapshot.
	_, err := c.Apply(ctx, []record.UserChange{{UserID: "u", Seq: 7, Prev: 6, Set: []record.Latest{val("heart_rate_bpm", 70, at)}}})
	require.NoError(t, err)
	ok, err := c.Fill(ctx, "u", 6, []record.Latest{val("heart_rate_bpm", 60, at)})
	require.NoError(t, err)
	require.False(t, ok)
	ok, err = c.Fill(ctx, "u", 7, []record.Latest{val("heart_rate_bpm", 70, at)})
	require.NoError(t, err)
	require.True(t, ok)
	vals, seq, ok, err := c.Get(ctx, "u")
	require.NoError(t, err)
	require.True(t, ok)
	require.EqualValues(t, 7, seq)
	require.Equal(t, val("heart_rate_bpm", 70, at), vals["heart_rate_bpm"])
}

func TestChangesArePublished(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := newCache(t)
	ps, err := c.Subscribe(ctx, "u")
	require.NoError(t, err)
	defer func() { _ = ps.Close() }()
	at := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	_, err = c.Apply(ctx, []record.UserChange{{UserID: "u", Seq: 1, Prev: 0, Set: []record.Latest{val("spo2_pct", 98, at)}, Removed: []string{"heart_rate_bpm"}}})
	require.NoError(t, err)
	select {
	case msg := <-ps.Channel():
		seq, changes, err := latestcache.Decode(msg.Payload)
		require.NoError(t, err)
		require.EqualValues(t, 1, seq)
		require.Len(t, changes, 2)
		require.Equal(t, "spo2_pct", changes[0].Metric)
		require.Equal(t, val("spo2_pct", 98, at), *changes[0].Value)
		require.Equal(t, "heart_rate_bpm", changes[1].Metric)
		require.Nil(t, changes[1].Value)
	case <-time.After(10 * time.Second):
		t.Fatal("no message")
	}
}

// TestConcurrentGetsEachGetTheirOwnUser: concurrent reads share pipelines;
// each caller still gets its own user's hash, and a caller that gives up
// does not fail the others.
func TestConcurrentGetsEachGetTheirOwnUser(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	c := newCache(t)
	at := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	const users = 50
	for u := range users {
		_, err := c.Fill(ctx, fmt.Sprintf("user-%d", u), int64(u+1), []record.Latest{val("heart_rate", float64(u), at)})
		require.NoError(t, err)
	}
	var wg sync.WaitGroup
	for g := range 32 {
		wg.Go(func() {
			for i := range 200 {
				u := (g*7 + i) % users
				if i%10 == 0 {
					cctx, cancel := context.WithCancel(ctx)
					cancel()
					_, _, _, err := c.Get(cctx, fmt.Sprintf("user-%d", u))
					if err == nil {
						t.Errorf("a cancelled read returned no error")
					}
					continue
				}
				vals, seq, ok, err := c.Get(ctx, fmt.Sprintf("user-%d", u))
				if err != nil || !ok || seq != int64(u+1) || vals["heart_rate"].Value != float64(u) {
					t.Errorf("user-%d: got %v seq %d ok %v err %v", u, vals, seq, ok, err)
					return
				}
			}
		})
	}
	wg.Wait()
}
