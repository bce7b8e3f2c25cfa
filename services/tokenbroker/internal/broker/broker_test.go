package broker

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"net/http"
	"net/http/httptest"
	"net/url"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/pkg/apperr"
	"github.com/biobridge/bridge/pkg/pgstore"
	"github.com/biobridge/bridge/pkg/testpg"
	"github.com/biobridge/bridge/pkg/vendoremu"
	"github.com/biobridge/bridge/services/tokenbroker/internal/postgres"
	"github.com/biobridge/bridge/services/tokenbroker/internal/tokencache"
	"github.com/biobridge/bridge/services/tokenbroker/internal/tokencrypt"
	"github.com/biobridge/bridge/services/tokenbroker/internal/tokenlock"
	"github.com/biobridge/bridge/services/tokenbroker/internal/vendors"
)

type world struct {
	store  *postgres.Store
	cache  *tokencache.Cache
	locker *tokenlock.Locker
	emu    *vendoremu.Emulator
	emuURL string
	// a and b are two broker instances on the same store and Redis.
	a, b *Broker
	bm   *Metrics
}

func newWorld(t *testing.T, emuCfg vendoremu.Config) *world {
	t.Helper()
	ctx := context.Background()
	pgURL := testpg.New(t, "tokenbroker_"+postgres.Migrations.Version(), postgres.Migrations.Migrate)
	pool, err := pgstore.Connect(ctx, pgURL, nil)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	redisURL, prefix := testpg.NewRedis(t)
	opts, err := redis.ParseURL(redisURL)
	require.NoError(t, err)
	rdb := redis.NewClient(opts)
	t.Cleanup(func() { _ = rdb.Close() })

	emuCfg.WhoopRateLimit = -1
	emu, err := vendoremu.New(emuCfg, nil)
	require.NoError(t, err)
	srv := httptest.NewServer(emu.Handler())
	t.Cleanup(srv.Close)

	key := make([]byte, 32)
	_, err = rand.Read(key)
	require.NoError(t, err)
	keys, err := tokencrypt.Parse("k1:" + base64.StdEncoding.EncodeToString(key))
	require.NoError(t, err)
	whoop, err := vendors.New(vendors.Whoop, vendors.Credentials{
		ClientID: vendoremu.DefaultWhoopClientID, ClientSecret: vendoremu.DefaultWhoopClientSecret, APIURL: srv.URL + "/whoop",
	}, "http://gateway.test", srv.Client())
	require.NoError(t, err)

	w := &world{store: postgres.New(pool), cache: tokencache.New(rdb, prefix), locker: tokenlock.New(rdb), emu: emu, emuURL: srv.URL}
	mk := func() (*Broker, *Metrics) {
		m := NewMetrics(prometheus.NewRegistry())
		b, err := New(Config{RefreshTimeout: 5 * time.Second, LockLease: 10 * time.Second, PublicBaseURL: "http://gateway.test", ReturnURLs: []string{"com.example.app:/oauth"}}, Deps{
			Store: w.store, Cache: w.cache, Locker: tokenlock.New(rdb), Keys: keys,
			Vendors: map[string]*vendors.Vendor{vendors.Whoop: whoop}, Metrics: m,
		})
		require.NoError(t, err)
		return b, m
	}
	w.a, _ = mk()
	w.b, w.bm = mk()
	return w
}

// connect runs the connect flow on broker a for user.
func (w *world) connect(t *testing.T, user string) {
	t.Helper()
	ctx := context.Background()
	authURL, _, err := w.a.StartAuthorization(ctx, user, vendors.Whoop, "")
	require.NoError(t, err)
	u, err := url.Parse(authURL)
	require.NoError(t, err)
	q := u.Query()
	q.Set("login_hint", "alice")
	u.RawQuery = q.Encode()
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	res, err := client.Get(u.String())
	require.NoError(t, err)
	require.NoError(t, res.Body.Close())
	loc, err := url.Parse(res.Header.Get("Location"))
	require.NoError(t, err)
	_, err = w.a.CompleteAuthorization(ctx, user, vendors.Whoop, loc.Query().Get("code"), loc.Query().Get("state"), "")
	require.NoError(t, err)
}

// lock takes user's refresh lock as a refreshing instance would.
func (w *world) lock(t *testing.T, user string) *tokenlock.Lock {
	t.Helper()
	l, err := w.locker.TryAcquire(context.Background(), w.cache.LockKey(user, vendors.Whoop), 10*time.Second)
	require.NoError(t, err)
	require.NotNil(t, l)
	return l
}

func (w *world) expire(t *testing.T, user string) *postgres.Connection {
	t.Helper()
	ctx := context.Background()
	c, err := w.store.Get(ctx, user, vendors.Whoop)
	require.NoError(t, err)
	_, err = w.store.StoreRefreshed(ctx, user, vendors.Whoop, c.Version, postgres.Tokens{
		KeyID: c.KeyID, AccessTokenEnc: c.AccessTokenEnc, RefreshTokenEnc: c.RefreshTokenEnc, AccessExpiresAt: time.Now().Add(-time.Minute),
	}, time.Now())
	require.NoError(t, err)
	require.NoError(t, w.cache.Delete(ctx, user, vendors.Whoop))
	c, err = w.store.Get(ctx, user, vendors.Whoop)
	require.NoError(t, err)
	return c
}

// TestInvalidGrantAfterAnotherInstanceRefreshedIsALostRace: instance B
// presents a refresh token that instance A already rotated (B's view is
// from before A's write, as after a lock lost to a Redis failover). The
// vendor answers invalid_grant; B must find A's tokens in the store and
// use them, not mark the connection broken.
func TestInvalidGrantAfterAnotherInstanceRefreshedIsALostRace(t *testing.T) {
	// ReuseKeepsGrant: the vendor rejects only the reused token, so A's
	// tokens keep working and the test can check B hands them out.
	w := newWorld(t, vendoremu.Config{ReuseKeepsGrant: true})
	ctx := context.Background()
	w.connect(t, "user-1")
	stale := w.expire(t, "user-1")

	fromA, err := w.a.GetAccessToken(ctx, "user-1", vendors.Whoop, "")
	require.NoError(t, err)
	require.EqualValues(t, 1, w.emu.Counters().Whoop.TokenRefreshes)

	got, err := w.b.refreshConn(ctx, w.lock(t, "user-1"), stale, time.Now().Add(5*time.Second), true)
	require.NoError(t, err, "a lost race is not an error")
	require.Equal(t, fromA.Token, got.Token, "B hands out A's token")
	require.EqualValues(t, 1, w.emu.Counters().Whoop.InvalidGrants, "the vendor did reject B's stale token")

	c, err := w.store.Get(ctx, "user-1", vendors.Whoop)
	require.NoError(t, err)
	require.Equal(t, postgres.StatusActive, c.Status)
	events, err := w.store.Events(ctx, "user-1")
	require.NoError(t, err)
	require.Len(t, events, 1)
	require.Equal(t, postgres.EventConnected, events[0].Type, "no refresh_failed event")
	require.EqualValues(t, 1, testutil.ToFloat64(w.bm.Refreshes.WithLabelValues(vendors.Whoop, OutcomeLostRace)))
	require.EqualValues(t, 0, testutil.ToFloat64(w.bm.Refreshes.WithLabelValues(vendors.Whoop, OutcomeBroken)))
}

// TestInvalidGrantWithNobodyElseBreaksTheConnection is the other side: the
// same invalid_grant with an unchanged store means the grant is dead.
func TestInvalidGrantWithNobodyElseBreaksTheConnection(t *testing.T) {
	w := newWorld(t, vendoremu.Config{})
	ctx := context.Background()
	w.connect(t, "user-1")
	current := w.expire(t, "user-1")
	require.Equal(t, 1, w.emu.RevokeGrants(vendoremu.Whoop, "alice"))

	_, err := w.b.refreshConn(ctx, w.lock(t, "user-1"), current, time.Now().Add(5*time.Second), true)
	require.Error(t, err)
	require.Equal(t, ReasonConnectionBroken, apperr.ReasonOf(err))
	c, err := w.store.Get(ctx, "user-1", vendors.Whoop)
	require.NoError(t, err)
	require.Equal(t, postgres.StatusBroken, c.Status)
	require.Equal(t, vendors.ReasonInvalidGrant, c.BrokenReason)
	events, err := w.store.Events(ctx, "user-1")
	require.NoError(t, err)
	require.Len(t, events, 2)
	require.Equal(t, postgres.EventRefreshFailed, events[1].Type)
	require.Equal(t, vendors.ReasonInvalidGrant, events[1].Reason)
	require.EqualValues(t, 1, testutil.ToFloat64(w.bm.Refreshes.WithLabelValues(vendors.Whoop, OutcomeBroken)))
}

// TestTransientVendorErrorsChangeNothing: a 5xx from the token endpoint
// (nothing rotated) is retryable and leaves the connection alone.
func TestTransientVendorErrorsChangeNothing(t *testing.T) {
	w := newWorld(t, vendoremu.Config{})
	ctx := context.Background()
	w.connect(t, "user-1")
	w.expire(t, "user-1")
	require.NoError(t, w.emu.SetFaults(vendoremu.Faults{TokenErrorRate: 1}))

	_, err := w.b.GetAccessToken(ctx, "user-1", vendors.Whoop, "")
	require.Error(t, err)
	require.Equal(t, apperr.Unavailable, apperr.CodeOf(err))
	c, err := w.store.Get(ctx, "user-1", vendors.Whoop)
	require.NoError(t, err)
	require.Equal(t, postgres.StatusActive, c.Status)

	require.NoError(t, w.emu.SetFaults(vendoremu.Faults{}))
	_, err = w.b.GetAccessToken(ctx, "user-1", vendors.Whoop, "")
	require.NoError(t, err)
	require.Zero(t, w.emu.Counters().Whoop.RefreshTokenReuseViolations)
	require.EqualValues(t, 1, testutil.ToFloat64(w.bm.RefreshFailures.WithLabelValues(vendors.Whoop, vendors.ReasonVendorError)))
}

// TestStaleCacheWriteDoesNotWin: a slow writer with an older version must
// not replace a newer cached token.
func TestStaleCacheWriteDoesNotWin(t *testing.T) {
	w := newWorld(t, vendoremu.Config{})
	ctx := context.Background()
	exp := time.Now().Add(time.Hour)
	require.NoError(t, w.cache.Put(ctx, "u", "whoop", tokencache.Entry{Version: 5, KeyID: "k1", Sealed: []byte("new"), ExpiresAt: exp}, time.Minute))
	require.NoError(t, w.cache.Put(ctx, "u", "whoop", tokencache.Entry{Version: 4, KeyID: "k1", Sealed: []byte("old"), ExpiresAt: exp}, time.Minute))
	e, err := w.cache.Get(ctx, "u", "whoop")
	require.NoError(t, err)
	require.Equal(t, []byte("new"), e.Sealed)
	require.NoError(t, w.cache.Put(ctx, "u", "whoop", tokencache.Entry{Version: 6, KeyID: "k1", Sealed: []byte("newer"), ExpiresAt: exp}, time.Minute))
	e, err = w.cache.Get(ctx, "u", "whoop")
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

// TestLoserDoesNotBreakWhileWinnerMayLand: B presents a spent refresh token
// (its Redis lock was lost) while A's claim on the row is still running: A
// may be about to store the tokens that replaced it. B's invalid_grant must
// not mark the connection broken; it is told to retry instead.
func TestLoserDoesNotBreakWhileWinnerMayLand(t *testing.T) {
	w := newWorld(t, vendoremu.Config{ReuseKeepsGrant: true})
	ctx := context.Background()
	w.connect(t, "user-1")
	stale := w.expire(t, "user-1")
	// A's refresh reached the vendor (the refresh token is spent) and A
	// still holds its claim, its result not stored yet.
	refresh, err := w.a.keys.Open(stale.KeyID, stale.RefreshTokenEnc, aad("user-1", vendors.Whoop, "refresh"))
	require.NoError(t, err)
	_, err = w.a.vendors[vendors.Whoop].Refresh(ctx, string(refresh))
	require.NoError(t, err)
	require.NoError(t, w.store.ClaimRefresh(ctx, "user-1", vendors.Whoop, stale.Version, "instance-a", time.Minute))

	_, err = w.b.refreshConn(ctx, w.lock(t, "user-1"), stale, time.Now().Add(5*time.Second), true)
	require.Error(t, err)
	require.Equal(t, ReasonRefreshInProgress, apperr.ReasonOf(err))
	c, err := w.store.Get(ctx, "user-1", vendors.Whoop)
	require.NoError(t, err)
	require.Equal(t, postgres.StatusActive, c.Status, "not broken while the winner may land")
	events, err := w.store.Events(ctx, "user-1")
	require.NoError(t, err)
	require.Len(t, events, 1, "no refresh_failed event")
	require.EqualValues(t, 0, testutil.ToFloat64(w.bm.Refreshes.WithLabelValues(vendors.Whoop, OutcomeBroken)))
}
