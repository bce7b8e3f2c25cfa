package tokenlock

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
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

func TestMutualExclusion(t *testing.T) {
	t.Parallel()
	client, prefix := newClient(t)
	l := New(client)
	ctx := context.Background()
	key := prefix + "lock"

	var holders, maxHolders, acquired atomic.Int32
	var wg sync.WaitGroup
	for range 20 {
		wg.Go(func() {
			for range 20 {
				lk, err := l.TryAcquire(ctx, key, 5*time.Second)
				if err != nil {
					t.Error(err)
					return
				}
				if lk == nil {
					time.Sleep(time.Millisecond)
					continue
				}
				acquired.Add(1)
				n := holders.Add(1)
				for {
					m := maxHolders.Load()
					if n <= m || maxHolders.CompareAndSwap(m, n) {
						break
					}
				}
				time.Sleep(time.Millisecond)
				holders.Add(-1)
				ok, err := lk.Release(ctx)
				if err != nil || !ok {
					t.Errorf("release: ok=%v err=%v", ok, err)
				}
			}
		})
	}
	wg.Wait()
	require.Positive(t, acquired.Load())
	require.EqualValues(t, 1, maxHolders.Load(), "two holders at once")
}

func TestExpiredHolderCannotReleaseNewHolder(t *testing.T) {
	t.Parallel()
	client, prefix := newClient(t)
	l := New(client)
	ctx := context.Background()
	key := prefix + "lock"

	old, err := l.TryAcquire(ctx, key, 100*time.Millisecond)
	require.NoError(t, err)
	require.NotNil(t, old)

	busy, err := l.TryAcquire(ctx, key, time.Second)
	require.NoError(t, err)
	require.Nil(t, busy, "lock must be held")

	var fresh *Lock
	require.Eventually(t, func() bool {
		fresh, err = l.TryAcquire(ctx, key, 10*time.Second)
		return err == nil && fresh != nil
	}, 5*time.Second, 20*time.Millisecond, "lease must expire")

	ok, err := old.Release(ctx)
	require.NoError(t, err)
	require.False(t, ok, "the expired holder must not delete the new holder's lock")
	owner, err := client.Get(ctx, key).Result()
	require.NoError(t, err)
	require.Equal(t, fresh.owner, owner)

	ok, err = fresh.Release(ctx)
	require.NoError(t, err)
	require.True(t, ok)
	require.EqualValues(t, 0, client.Exists(ctx, key).Val())
}

// TestExtendOnlyOwnLease: a holder renews its own lease; once the key was
// lost and taken by someone else, its renewal changes nothing.
func TestExtendOnlyOwnLease(t *testing.T) {
	t.Parallel()
	client, prefix := newClient(t)
	l := New(client)
	ctx := context.Background()
	key := prefix + "lock"

	lk, err := l.TryAcquire(ctx, key, time.Second)
	require.NoError(t, err)
	require.NotNil(t, lk)
	ok, err := lk.Extend(ctx, time.Minute)
	require.NoError(t, err)
	require.True(t, ok)
	ttl, err := client.PTTL(ctx, key).Result()
	require.NoError(t, err)
	require.Greater(t, ttl, 30*time.Second, "the lease was renewed")
	require.True(t, lk.Expires().After(time.Now().Add(30*time.Second)))

	// The key is lost (failover, eviction) and another holder takes it.
	require.NoError(t, client.Del(ctx, key).Err())
	other, err := l.TryAcquire(ctx, key, 2*time.Second)
	require.NoError(t, err)
	require.NotNil(t, other)
	ok, err = lk.Extend(ctx, time.Minute)
	require.NoError(t, err)
	require.False(t, ok, "a lost lease is not renewed")
	ttl, err = client.PTTL(ctx, key).Result()
	require.NoError(t, err)
	require.LessOrEqual(t, ttl, 2*time.Second, "the new holder's lease is untouched")
}
