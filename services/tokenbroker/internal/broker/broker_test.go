package broker

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/pkg/apperr"
	"github.com/biobridge/bridge/pkg/testpg"
	"github.com/biobridge/bridge/services/tokenbroker/tokencache"
)

// The refresh-race tests that run the vendor emulator (a lost race, a dead
// grant, a transient vendor error, a loser while the winner may land) are
// in services/devstack/tokenbrokertest/races_test.go.

// newCache is a token cache on a fresh Redis key prefix.
func newCache(t *testing.T) *tokencache.Cache {
	t.Helper()
	redisURL, prefix := testpg.NewRedis(t)
	opts, err := redis.ParseURL(redisURL)
	require.NoError(t, err)
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { _ = rdb.Close() })
	return tokencache.New(rdb, prefix)
}

// TestStaleCacheWriteDoesNotWin: a slow writer with an older version must
// not replace a newer cached token.
func TestStaleCacheWriteDoesNotWin(t *testing.T) {
	cache := newCache(t)
	ctx := context.Background()
	exp := time.Now().Add(time.Hour)
	require.NoError(t, cache.Put(ctx, "u", "whoop", tokencache.Entry{Version: 5, KeyID: "k1", Sealed: []byte("new"), ExpiresAt: exp}, time.Minute))
	require.NoError(t, cache.Put(ctx, "u", "whoop", tokencache.Entry{Version: 4, KeyID: "k1", Sealed: []byte("old"), ExpiresAt: exp}, time.Minute))
	e, err := cache.Get(ctx, "u", "whoop")
	require.NoError(t, err)
	require.Equal(t, []byte("new"), e.Sealed)
	require.NoError(t, cache.Put(ctx, "u", "whoop", tokencache.Entry{Version: 6, KeyID: "k1", Sealed: []byte("newer"), ExpiresAt: exp}, time.Minute))
	e, err = cache.Get(ctx, "u", "whoop")
	require.NoError(t, err)
	require.Equal(t, []byte("newer"), e.Sealed)
}

// TestReturnURL: the app's return URL is one of the registered ones,
// exactly; anything else could send an authorization code elsewhere.
func TestReturnURL(t *testing.T) {
	b := &Broker{cfg: Config{ReturnURLs: []string{"com.example.app:/oauth", "https://app.example/oauth/done"}}}
	tests := []struct {
		in, want string
	}{
		{"", "com.example.app:/oauth"},
		{"https://app.example/oauth/done", "https://app.example/oauth/done"},
		{"https://app.example/oauth/done?x=1", ""},
		{"https://app.example/oauth/done/../x", ""},
		{"https://evil.example/oauth/done", ""},
		{"com.example.app:/oauth/", ""},
		{"javascript:alert(1)", ""},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			got, err := b.returnURL(tc.in)
			if tc.want != "" {
				require.NoError(t, err)
				require.Equal(t, tc.want, got)
				return
			}
			require.Equal(t, ReasonInvalidReturnTo, apperr.ReasonOf(err))
		})
	}
	_, err := (&Broker{}).returnURL("")
	require.Equal(t, ReasonNoReturnURL, apperr.ReasonOf(err), "without registered return URLs connecting is refused")
}
