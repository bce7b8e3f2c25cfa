package tokenbrokertest

import (
	"context"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	"github.com/biobridge/bridge/emulator"
	tokensv1 "github.com/biobridge/bridge/gen/go/biobridge/tokens/v1"
	"github.com/biobridge/bridge/pkg/ratebudget"
	"github.com/biobridge/bridge/pkg/testpg"
	"github.com/biobridge/bridge/services/tokenbroker/server"
)

func tokenFor(t *testing.T, in *instance, user, vendor, rejected string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(svcCtx(), 60*time.Second)
	defer cancel()
	resp, err := in.client.GetAccessToken(ctx, &tokensv1.GetAccessTokenRequest{UserId: user, Vendor: vendor, RejectedAccessToken: rejected})
	require.NoError(t, err)
	return resp.GetAccessToken()
}

// TestRejectedTokenStorm: the vendor invalidates the user's access tokens
// long before their expiry. A hundred callers spread over three instances
// report the same rejected token at once: exactly one refresh reaches the
// vendor, nothing is presented twice, and everyone gets the one new token.
// A token that was already replaced is not refreshed again.
func TestRejectedTokenStorm(t *testing.T) {
	for _, vendor := range []string{"whoop", "oura"} {
		t.Run(vendor, func(t *testing.T) {
			e := newEnv(t, emulator.Config{})
			cfg := e.config()
			instances := []*instance{e.start(cfg), e.start(cfg), e.start(cfg)}
			connect(t, instances[0], "user-1", vendor, "alice")
			old := tokenFor(t, instances[0], "user-1", vendor, "")
			require.Equal(t, 1, e.emu.ExpireAccessTokens(emulator.Vendor(vendor), "alice"))
			require.False(t, e.vendorAccepts(t, vendor, old))
			before := counters(e, vendor)

			const callers = 100
			tokens := make([]string, callers)
			errs := make([]error, callers)
			var wg sync.WaitGroup
			start := make(chan struct{})
			for i := range callers {
				wg.Go(func() {
					<-start
					ctx, cancel := context.WithTimeout(svcCtx(), 60*time.Second)
					defer cancel()
					resp, err := instances[i%3].client.GetAccessToken(ctx, &tokensv1.GetAccessTokenRequest{
						UserId: "user-1", Vendor: vendor, RejectedAccessToken: old,
					})
					errs[i], tokens[i] = err, resp.GetAccessToken()
				})
			}
			close(start)
			wg.Wait()

			for i, err := range errs {
				require.NoError(t, err, "caller %d", i)
			}
			after := counters(e, vendor)
			require.EqualValues(t, 1, after.TokenRefreshes-before.TokenRefreshes, "refreshes that reached the vendor")
			require.Zero(t, after.RefreshTokenReuseViolations)
			fresh := tokens[0]
			require.NotEqual(t, old, fresh)
			for _, tok := range tokens {
				require.Equal(t, fresh, tok, "every caller gets the one refreshed token")
			}
			require.True(t, e.vendorAccepts(t, vendor, fresh))

			// Late reporters of the replaced token, and ordinary callers, get
			// the new token without another refresh.
			require.Equal(t, fresh, tokenFor(t, instances[1], "user-1", vendor, old))
			require.Equal(t, fresh, tokenFor(t, instances[2], "user-1", vendor, ""))
			require.EqualValues(t, 1, counters(e, vendor).TokenRefreshes-before.TokenRefreshes)
			var reported float64
			for _, in := range instances {
				reported += metricValue(t, in.srv.Registry(), "biobridge_tokenbroker_rejected_tokens_total", map[string]string{"vendor": vendor})
			}
			require.EqualValues(t, callers+1, reported)
		})
	}
}

// TestRejectedTokenOfDeadGrantBreaksConnection: when the forced refresh
// answers invalid_grant and nobody holds newer tokens, the connection is
// broken with a refresh_failed event, as an expiry refresh would.
func TestRejectedTokenOfDeadGrantBreaksConnection(t *testing.T) {
	e := newEnv(t, emulator.Config{})
	in := e.start(e.config())
	connect(t, in, "user-1", "whoop", "alice")
	old := tokenFor(t, in, "user-1", "whoop", "")
	require.Equal(t, 1, e.emu.RevokeGrants(emulator.Whoop, "alice"))

	_, err := in.client.GetAccessToken(svcCtx(), &tokensv1.GetAccessTokenRequest{UserId: "user-1", Vendor: "whoop", RejectedAccessToken: old})
	requireCode(t, err, codes.FailedPrecondition, "connection_broken")
	require.Equal(t, []string{"connected", "refresh_failed"}, eventTypes(t, e, "user-1"))
	require.Zero(t, counters(e, "whoop").RefreshTokenReuseViolations)
}

// proxiedPostgres points cfg's database at a proxy the test can cut.
func proxiedPostgres(t *testing.T, cfg *server.Config) *testpg.Proxy {
	t.Helper()
	u, err := url.Parse(cfg.PostgresURL)
	require.NoError(t, err)
	px := testpg.NewProxy(t, u.Host)
	u.Host = px.Addr()
	cfg.PostgresURL = u.String()
	return px
}

// cutPostgresAfterRefresh cuts the broker off its database right after the
// emulator answered the next refresh, for outage; it reports when the
// database is back.
func cutPostgresAfterRefresh(e *env, px *testpg.Proxy, outage time.Duration) <-chan struct{} {
	restored := make(chan struct{})
	var once sync.Once
	hook := func() {
		once.Do(func() {
			px.SetCut(true)
			time.AfterFunc(outage, func() {
				px.SetCut(false)
				close(restored)
			})
		})
	}
	e.afterRefresh.Store(&hook)
	return restored
}

// TestRefreshSurvivesPostgresOutage: PostgreSQL goes away for 15 s right
// after the vendor answered a refresh (the old refresh token is spent, the
// new one exists only in the broker's hands). The broker keeps the answer
// and stores it when the database returns: the connection still works,
// with one refresh in total and no refresh token presented twice.
func TestRefreshSurvivesPostgresOutage(t *testing.T) {
	e := newEnv(t, emulator.Config{})
	cfg := e.config()
	px := proxiedPostgres(t, &cfg)
	in := e.start(cfg)
	connect(t, in, "user-1", "whoop", "alice")
	e.expire(t, "user-1", "whoop")
	before := counters(e, "whoop")
	restored := cutPostgresAfterRefresh(e, px, 15*time.Second)

	ctx, cancel := context.WithTimeout(svcCtx(), 90*time.Second)
	defer cancel()
	resp, err := in.client.GetAccessToken(ctx, &tokensv1.GetAccessTokenRequest{UserId: "user-1", Vendor: "whoop"})
	<-restored
	require.NoError(t, err, "the caller waits for the stored result")
	require.True(t, e.vendorAccepts(t, "whoop", resp.GetAccessToken()))

	e.expireCacheOnly(t, "user-1", "whoop")
	require.Equal(t, resp.GetAccessToken(), tokenFor(t, in, "user-1", "whoop", ""), "the stored token is the refreshed one")
	after := counters(e, "whoop")
	require.EqualValues(t, 1, after.TokenRefreshes-before.TokenRefreshes)
	require.Zero(t, after.RefreshTokenReuseViolations)
	requireActive(t, in, "user-1")
	require.EqualValues(t, 1, metricValue(t, in.srv.Registry(), "biobridge_tokenbroker_refresh_results_parked_total", map[string]string{"vendor": "whoop"}),
		"the answer was parked while the store was away")
}

// TestParkedRefreshResultIsUsedNotRefreshed: the holder gives up storing
// (its patience is shorter than the outage) and leaves the sealed result
// parked. After the database returns, the next request stores the parked
// result instead of presenting the spent refresh token again.
func TestParkedRefreshResultIsUsedNotRefreshed(t *testing.T) {
	e := newEnv(t, emulator.Config{})
	cfg := e.config()
	cfg.StorePatience = time.Second
	px := proxiedPostgres(t, &cfg)
	in := e.start(cfg)
	connect(t, in, "user-1", "oura", "alice")
	e.expire(t, "user-1", "oura")
	before := counters(e, "oura")
	restored := cutPostgresAfterRefresh(e, px, 4*time.Second)

	_, err := in.client.GetAccessToken(svcCtx(), &tokensv1.GetAccessTokenRequest{UserId: "user-1", Vendor: "oura"})
	require.Error(t, err, "the holder gave up before the database returned")
	<-restored

	var tok string
	require.Eventually(t, func() bool {
		resp, err := in.client.GetAccessToken(svcCtx(), &tokensv1.GetAccessTokenRequest{UserId: "user-1", Vendor: "oura"})
		tok = resp.GetAccessToken()
		return err == nil
	}, 20*time.Second, 100*time.Millisecond)
	require.True(t, e.vendorAccepts(t, "oura", tok))
	after := counters(e, "oura")
	require.EqualValues(t, 1, after.TokenRefreshes-before.TokenRefreshes, "the parked result was stored, not refreshed again")
	require.Zero(t, after.RefreshTokenReuseViolations)
	requireActive(t, in, "user-1")
	n, err := e.redis(t).Exists(context.Background(), e.prefix+"bb:{u:user-1}:tokenparked:oura").Result()
	require.NoError(t, err)
	require.Zero(t, n, "a stored result is no longer parked")
}

// TestRedisLockLostMidRefresh: the Redis lock key disappears (failover,
// eviction) while its holder waits for the vendor, and a second instance
// asks for a token meanwhile. The claim on the connection row keeps the
// second instance from presenting the same refresh token: still one
// refresh, no reuse, and the connection stays healthy.
func TestRedisLockLostMidRefresh(t *testing.T) {
	e := newEnv(t, emulator.Config{})
	cfg := e.config()
	a, b := e.start(cfg), e.start(cfg)
	connect(t, a, "user-1", "whoop", "alice")
	e.expire(t, "user-1", "whoop")
	before := counters(e, "whoop")
	require.NoError(t, e.emu.SetFaults(emulator.Faults{Latency: 1500 * time.Millisecond}))

	fromA := make(chan string, 1)
	go func() {
		resp, err := a.client.GetAccessToken(svcCtx(), &tokensv1.GetAccessTokenRequest{UserId: "user-1", Vendor: "whoop"})
		if err != nil {
			t.Errorf("instance a: %v", err)
		}
		fromA <- resp.GetAccessToken()
	}()
	rdb := e.redis(t)
	lockKey := e.prefix + "bb:{u:user-1}:tokenlock:whoop"
	require.Eventually(t, func() bool {
		return counters(e, "whoop").TokenRequests > before.TokenRequests
	}, 10*time.Second, 5*time.Millisecond, "a's refresh reaches the vendor (which takes 1.5s to answer)")
	n, err := rdb.Del(context.Background(), lockKey).Result()
	require.NoError(t, err)
	require.EqualValues(t, 1, n, "the lock was held while a waited for the vendor")

	fromB := tokenFor(t, b, "user-1", "whoop", "")
	tokA := <-fromA
	require.NoError(t, e.emu.SetFaults(emulator.Faults{}))
	require.Equal(t, tokA, fromB, "b waited for a's refresh")
	require.True(t, e.vendorAccepts(t, "whoop", fromB))
	after := counters(e, "whoop")
	require.EqualValues(t, 1, after.TokenRefreshes-before.TokenRefreshes)
	require.Zero(t, after.RefreshTokenReuseViolations)
	requireActive(t, a, "user-1")
	require.Equal(t, []string{"connected"}, eventTypes(t, e, "user-1"), "no refresh_failed event")
}

func requireActive(t *testing.T, in *instance, user string) {
	t.Helper()
	list, err := in.client.ListConnections(userCtx(t, user), &tokensv1.ListConnectionsRequest{})
	require.NoError(t, err)
	require.Len(t, list.GetConnections(), 1)
	require.Equal(t, tokensv1.ConnectionStatus_CONNECTION_STATUS_ACTIVE, list.GetConnections()[0].GetStatus())
}

// TestConnectCallsSpendSharedBudget: the broker's own API calls on connect
// (the WHOOP profile, the Oura personal info) are taken from the rate
// budget ingest's fetches share, and a spent budget holds them back.
func TestConnectCallsSpendSharedBudget(t *testing.T) {
	e := newEnv(t, emulator.Config{})
	cfg := e.config()
	cfg.WhoopRateLimit, cfg.WhoopRateWindow = 2, time.Hour
	in := e.start(cfg)
	rdb := e.redis(t)
	// The budget exactly as ingest builds it from the same variables.
	whoopBudget := ratebudget.New(rdb, e.prefix, "whoop", []ratebudget.Window{{Limit: 2, Period: time.Hour}}, 0)
	ouraBudget := ratebudget.New(rdb, e.prefix, "oura", []ratebudget.Window{{Limit: ratebudget.DefaultOuraLimit, Period: ratebudget.DefaultOuraWindow}}, 0)

	connect(t, in, "user-1", "whoop", "alice")
	connect(t, in, "user-1", "oura", "alice")
	u, err := whoopBudget.Utilization(context.Background())
	require.NoError(t, err)
	require.InDelta(t, 0.5, u, 1e-9, "one of two WHOOP requests spent by the profile call")
	u, err = ouraBudget.Utilization(context.Background())
	require.NoError(t, err)
	require.InDelta(t, 1.0/ratebudget.DefaultOuraLimit, u, 1e-9, "the Oura personal-info call is counted too")

	// Ingest spends the rest; the next connect must not call the vendor.
	wait, err := whoopBudget.Take(context.Background())
	require.NoError(t, err)
	require.Zero(t, wait)
	calls := counters(e, "whoop").APICallsTotal
	app := callback(t, in, "whoop", authorize(t, in, "user-2", "whoop", "bob"))
	_, err = in.client.CompleteAuthorization(userCtx(t, "user-2"), &tokensv1.CompleteAuthorizationRequest{
		Vendor: "whoop", Code: app.Get("code"), State: app.Get("state"),
	})
	requireCode(t, err, codes.Unavailable, "vendor_unavailable")
	require.Equal(t, calls, counters(e, "whoop").APICallsTotal, "no API call past the shared budget")
}
