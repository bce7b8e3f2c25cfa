package ratebudget

import (
	"context"
	"errors"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/pkg/testpg"
)

func newClient(t *testing.T) (redis.UniversalClient, string) {
	t.Helper()
	url, prefix := testpg.NewRedis(t)
	opts, err := redis.ParseURL(url)
	require.NoError(t, err)
	c := redis.NewClient(opts)
	t.Cleanup(func() { _ = c.Close() })
	return c, prefix
}

func TestTakeUntilTheLimitThenWait(t *testing.T) {
	t.Parallel()
	c, prefix := newClient(t)
	ctx := context.Background()
	b := New(c, prefix, "whoop", []Window{{Limit: 5, Period: time.Second}}, 100*time.Millisecond)
	for i := range 5 {
		wait, err := b.Take(ctx)
		require.NoError(t, err)
		require.Zero(t, wait, "request %d is within the budget", i)
	}
	wait, err := b.Take(ctx)
	require.NoError(t, err)
	assert.Greater(t, wait, time.Duration(0), "the sixth request must wait")
	assert.LessOrEqual(t, wait, 1100*time.Millisecond+time.Millisecond, "at most the window and its slack")

	other := New(c, prefix, "oura", []Window{{Limit: 5, Period: time.Second}}, 0)
	wait, err = other.Take(ctx)
	require.NoError(t, err)
	assert.Zero(t, wait, "budgets are per vendor")

	require.Eventually(t, func() bool {
		w, err := b.Take(ctx)
		return err == nil && w == 0
	}, 5*time.Second, 20*time.Millisecond, "the budget refills when the window slides")
}

// Three replicas share one budget: whatever the interleaving, no interval
// of the window's length sees more than the limit.
func TestReplicasShareTheBudget(t *testing.T) {
	t.Parallel()
	c, prefix := newClient(t)
	ctx := context.Background()
	const limit, period = 8, 500 * time.Millisecond
	var mu sync.Mutex
	var granted []time.Time
	var wg sync.WaitGroup
	deadline := time.Now().Add(1600 * time.Millisecond)
	for range 3 {
		b := New(c, prefix, "whoop", []Window{{Limit: limit, Period: period}}, 50*time.Millisecond)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				wait, err := b.Take(ctx)
				if !assert.NoError(t, err) {
					return
				}
				if wait > 0 {
					time.Sleep(min(wait, 20*time.Millisecond))
					continue
				}
				mu.Lock()
				granted = append(granted, time.Now())
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	sort.Slice(granted, func(i, j int) bool { return granted[i].Before(granted[j]) })
	require.GreaterOrEqual(t, len(granted), 2*limit, "the budget was used across several windows")
	for i := range granted {
		n := 0
		for j := i; j < len(granted) && granted[j].Sub(granted[i]) < period; j++ {
			n++
		}
		assert.LessOrEqual(t, n, limit, "requests within one window starting at grant %d", i)
	}
}

func TestSeveralWindows(t *testing.T) {
	t.Parallel()
	c, prefix := newClient(t)
	ctx := context.Background()
	// 3 per 100ms but 4 per minute: the long window is what stops us.
	b := New(c, prefix, "whoop", []Window{{Limit: 3, Period: 100 * time.Millisecond}, {Limit: 4, Period: time.Minute}}, time.Millisecond)
	granted := 0
	for range 50 {
		wait, err := b.Take(ctx)
		require.NoError(t, err)
		if wait == 0 {
			granted++
			continue
		}
		if wait > time.Second {
			break
		}
		time.Sleep(wait)
	}
	assert.Equal(t, 4, granted)
}

func TestPauseStopsEveryone(t *testing.T) {
	t.Parallel()
	c, prefix := newClient(t)
	ctx := context.Background()
	a := New(c, prefix, "whoop", []Window{{Limit: 100, Period: time.Minute}}, 0)
	b := New(c, prefix, "whoop", []Window{{Limit: 100, Period: time.Minute}}, 0)
	require.NoError(t, a.Pause(ctx, 2*time.Second))
	require.NoError(t, a.Pause(ctx, 10*time.Millisecond), "a shorter pause does not shorten the longer one")
	wait, err := b.Take(ctx)
	require.NoError(t, err)
	assert.Greater(t, wait, time.Second, "the other replica waits for the vendor's reset too")
}

// Background work stops at its share of the window; live work may still
// use the rest, and Utilization reports how full the window is.
func TestBackgroundShareLeavesRoomForLiveWork(t *testing.T) {
	t.Parallel()
	c, prefix := newClient(t)
	ctx := context.Background()
	b := New(c, prefix, "whoop", []Window{{Limit: 10, Period: time.Minute}}, time.Second)
	u, err := b.Utilization(ctx)
	require.NoError(t, err)
	assert.Zero(t, u)
	for i := range 4 {
		wait, err := b.TakeShare(ctx, 0.4)
		require.NoError(t, err)
		require.Zero(t, wait, "background request %d is within its share", i)
	}
	wait, err := b.TakeShare(ctx, 0.4)
	require.NoError(t, err)
	assert.Greater(t, wait, 50*time.Second, "background work waits for the window to slide")
	for i := range 6 {
		wait, err := b.Take(ctx)
		require.NoError(t, err)
		require.Zero(t, wait, "live request %d uses the room background work left", i)
	}
	wait, err = b.Take(ctx)
	require.NoError(t, err)
	assert.Positive(t, wait, "the limit itself still holds")
	u, err = b.Utilization(ctx)
	require.NoError(t, err)
	assert.InDelta(t, 1.0, u, 1e-9)
}

func TestWaitStopsAtTheDeadline(t *testing.T) {
	ctx := context.Background()
	granted := func(context.Context) (time.Duration, error) { return 0, nil }
	wait, err := Wait(ctx, time.Now(), granted)
	require.NoError(t, err)
	require.Zero(t, wait)

	spent := func(context.Context) (time.Duration, error) { return time.Hour, nil }
	wait, err = Wait(ctx, time.Now().Add(time.Minute), spent)
	require.ErrorIs(t, err, ErrSpent)
	require.Equal(t, time.Hour, wait)

	broken := errors.New("redis down")
	_, err = Wait(ctx, time.Time{}, func(context.Context) (time.Duration, error) { return 0, broken })
	require.ErrorIs(t, err, broken)

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = Wait(cctx, time.Time{}, spent)
	require.ErrorIs(t, err, context.Canceled)
}
