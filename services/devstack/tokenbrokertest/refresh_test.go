package tokenbrokertest

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	"github.com/biobridge/bridge/emulator"
	tokensv1 "github.com/biobridge/bridge/gen/go/biobridge/tokens/v1"
)

// TestRefreshStormAcrossThreeInstances is the acceptance test of rotation
// safety: 1,000 concurrent GetAccessToken calls for one expired connection,
// spread over three broker instances sharing the database and Redis, cause
// exactly one refresh at the vendor, no refresh-token reuse, and every
// caller gets the same, working token.
func TestRefreshStormAcrossThreeInstances(t *testing.T) {
	for _, vendor := range []string{"whoop", "oura"} {
		t.Run(vendor, func(t *testing.T) {
			e := newEnv(t, emulator.Config{})
			cfg := e.config()
			instances := []*instance{e.start(cfg), e.start(cfg), e.start(cfg)}
			connect(t, instances[0], "user-1", vendor, "alice")
			e.expire(t, "user-1", vendor)
			before := counters(e, vendor)

			const callers = 1000
			tokens := make([]string, callers)
			errs := make([]error, callers)
			var wg sync.WaitGroup
			start := make(chan struct{})
			for i := range callers {
				wg.Go(func() {
					<-start
					ctx, cancel := context.WithTimeout(svcCtx(), 60*time.Second)
					defer cancel()
					resp, err := instances[i%3].client.GetAccessToken(ctx, &tokensv1.GetAccessTokenRequest{UserId: "user-1", Vendor: vendor})
					errs[i] = err
					tokens[i] = resp.GetAccessToken()
				})
			}
			close(start)
			wg.Wait()

			for i, err := range errs {
				require.NoError(t, err, "caller %d", i)
			}
			after := counters(e, vendor)
			require.EqualValues(t, 1, after.TokenRefreshes-before.TokenRefreshes, "refreshes that reached the vendor")
			require.Zero(t, after.RefreshTokenReuseViolations, "refresh token reuse violations")
			distinct := map[string]bool{}
			for _, tok := range tokens {
				distinct[tok] = true
			}
			require.Len(t, distinct, 1, "every caller gets the one refreshed token")
			for tok := range distinct {
				require.True(t, e.vendorAccepts(t, vendor, tok), "the vendor accepts the token")
			}
			var refreshed float64
			for _, in := range instances {
				refreshed += metricValue(t, in.srv.Registry(), "biobridge_tokenbroker_refreshes_total", map[string]string{"vendor": vendor, "outcome": "success"})
			}
			require.EqualValues(t, 1, refreshed, "refreshes counted across instances")
		})
	}
}

// TestLockHolderDiesLeaseExpires: an instance that took the lock and died
// leaves the lock until its lease expires. The others wait (they do not
// give up), then one of them refreshes; nothing is presented twice.
func TestLockHolderDiesLeaseExpires(t *testing.T) {
	e := newEnv(t, emulator.Config{})
	cfg := e.config()
	cfg.RefreshTimeout = time.Second
	cfg.LockLease = 3 * time.Second
	a, b := e.start(cfg), e.start(cfg)
	connect(t, a, "user-1", "whoop", "alice")
	e.expire(t, "user-1", "whoop")

	// The dead instance's lock: a foreign owner with 1.5s of lease left.
	rdb := e.redis(t)
	lockKey := e.prefix + "bb:{u:user-1}:tokenlock:whoop"
	require.NoError(t, rdb.Set(context.Background(), lockKey, "dead-instance", 1500*time.Millisecond).Err())
	before := counters(e, "whoop")

	var wg sync.WaitGroup
	results := make([]string, 20)
	errs := make([]error, 20)
	start := time.Now()
	for i := range results {
		wg.Go(func() {
			in := []*instance{a, b}[i%2]
			resp, err := in.client.GetAccessToken(svcCtx(), &tokensv1.GetAccessTokenRequest{UserId: "user-1", Vendor: "whoop"})
			errs[i], results[i] = err, resp.GetAccessToken()
		})
	}
	wg.Wait()
	waited := time.Since(start)

	for i, err := range errs {
		require.NoError(t, err, "caller %d must wait for the lease, not give up", i)
	}
	after := counters(e, "whoop")
	require.EqualValues(t, 1, after.TokenRefreshes-before.TokenRefreshes)
	require.Zero(t, after.RefreshTokenReuseViolations)
	require.True(t, e.vendorAccepts(t, "whoop", results[0]))
	for _, tok := range results {
		require.Equal(t, results[0], tok)
	}
	require.GreaterOrEqual(t, waited, time.Second, "nobody refreshed while the dead holder's lease was valid")
	waits := metricValue(t, a.srv.Registry(), "biobridge_tokenbroker_lock_wait_seconds", nil) +
		metricValue(t, b.srv.Registry(), "biobridge_tokenbroker_lock_wait_seconds", nil)
	require.Positive(t, waits, "lock waits are measured")
}

// TestCallerGivingUpDoesNotLoseTheRefresh: a caller whose deadline passes
// while the vendor is still answering must not abort the refresh: the
// vendor rotates anyway, and the new tokens are stored for the next caller.
func TestCallerGivingUpDoesNotLoseTheRefresh(t *testing.T) {
	e := newEnv(t, emulator.Config{})
	in := e.start(e.config())
	connect(t, in, "user-1", "whoop", "alice")
	e.expire(t, "user-1", "whoop")
	require.NoError(t, e.emu.SetFaults(emulator.Faults{Latency: 500 * time.Millisecond}))
	before := counters(e, "whoop")

	ctx, cancel := context.WithTimeout(svcCtx(), 100*time.Millisecond)
	_, err := in.client.GetAccessToken(ctx, &tokensv1.GetAccessTokenRequest{UserId: "user-1", Vendor: "whoop"})
	cancel()
	requireCode(t, err, codes.DeadlineExceeded, "")

	require.Eventually(t, func() bool {
		return counters(e, "whoop").TokenRefreshes-before.TokenRefreshes == 1
	}, 10*time.Second, 20*time.Millisecond)
	require.NoError(t, e.emu.SetFaults(emulator.Faults{}))
	var tok string
	require.Eventually(t, func() bool {
		resp, err := in.client.GetAccessToken(svcCtx(), &tokensv1.GetAccessTokenRequest{UserId: "user-1", Vendor: "whoop"})
		if err != nil {
			return false
		}
		tok = resp.GetAccessToken()
		return true
	}, 10*time.Second, 20*time.Millisecond)
	require.True(t, e.vendorAccepts(t, "whoop", tok))
	after := counters(e, "whoop")
	require.EqualValues(t, 1, after.TokenRefreshes-before.TokenRefreshes, "the stored result is reused, not refreshed again")
	require.Zero(t, after.RefreshTokenReuseViolations)
}

// TestRevokedGrantMarksConnectionBroken: an invalid_grant nobody explains
// (the user disconnected the app at the vendor) breaks the connection once,
// records a refresh_failed event, and later calls do not hit the vendor.
func TestRevokedGrantMarksConnectionBroken(t *testing.T) {
	e := newEnv(t, emulator.Config{})
	in := e.start(e.config())
	connect(t, in, "user-1", "oura", "alice")
	e.expire(t, "user-1", "oura")
	require.Equal(t, 1, e.emu.RevokeGrants(emulator.Oura, "alice"))
	before := counters(e, "oura")

	_, err := in.client.GetAccessToken(svcCtx(), &tokensv1.GetAccessTokenRequest{UserId: "user-1", Vendor: "oura"})
	requireCode(t, err, codes.FailedPrecondition, "connection_broken")
	_, err = in.client.GetAccessToken(svcCtx(), &tokensv1.GetAccessTokenRequest{UserId: "user-1", Vendor: "oura"})
	requireCode(t, err, codes.FailedPrecondition, "connection_broken")
	require.EqualValues(t, 1, counters(e, "oura").TokenRequests-before.TokenRequests, "a broken connection is not retried at the vendor")

	list, err := in.client.ListConnections(userCtx(t, "user-1"), &tokensv1.ListConnectionsRequest{})
	require.NoError(t, err)
	require.Len(t, list.GetConnections(), 1)
	require.Equal(t, tokensv1.ConnectionStatus_CONNECTION_STATUS_BROKEN, list.GetConnections()[0].GetStatus())
	require.Equal(t, []string{"connected", "refresh_failed"}, eventTypes(t, e, "user-1"))
	require.EqualValues(t, 1, metricValue(t, in.srv.Registry(), "biobridge_tokenbroker_refresh_failures_total", map[string]string{"vendor": "oura", "reason": "invalid_grant"}))

	// Reconnecting repairs it.
	connect(t, in, "user-1", "oura", "alice")
	_, err = in.client.GetAccessToken(svcCtx(), &tokensv1.GetAccessTokenRequest{UserId: "user-1", Vendor: "oura"})
	require.NoError(t, err)
}

// TestProactiveRefresh: an active connection whose token is about to
// expire is refreshed in the background, once, across instances.
func TestProactiveRefresh(t *testing.T) {
	e := newEnv(t, emulator.Config{})
	cfg := e.config()
	cfg.ProactiveInterval = 100 * time.Millisecond
	cfg.ProactiveWindow = 5 * time.Minute
	a, b := e.start(cfg), e.start(cfg)
	connect(t, a, "user-1", "whoop", "alice")
	first, err := a.client.GetAccessToken(svcCtx(), &tokensv1.GetAccessTokenRequest{UserId: "user-1", Vendor: "whoop"})
	require.NoError(t, err)
	before := counters(e, "whoop")

	// The token now has 4 minutes left: inside the proactive window, still
	// good for callers.
	_, err = e.pg(t).Exec(context.Background(),
		`UPDATE tokens.connections SET access_expires_at = now() + interval '4 minutes' WHERE user_id = 'user-1'`)
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		return counters(e, "whoop").TokenRefreshes-before.TokenRefreshes >= 1
	}, 10*time.Second, 20*time.Millisecond)
	var expires time.Time
	require.Eventually(t, func() bool {
		require.NoError(t, e.pg(t).QueryRow(context.Background(),
			`SELECT access_expires_at FROM tokens.connections WHERE user_id = 'user-1'`).Scan(&expires))
		return time.Until(expires) > 30*time.Minute
	}, 10*time.Second, 20*time.Millisecond)
	// Both instances kept scanning meanwhile; the second saw the new token.
	e.expireCacheOnly(t, "user-1", "whoop")
	second, err := b.client.GetAccessToken(svcCtx(), &tokensv1.GetAccessTokenRequest{UserId: "user-1", Vendor: "whoop"})
	require.NoError(t, err)
	require.NotEqual(t, first.GetAccessToken(), second.GetAccessToken())
	after := counters(e, "whoop")
	require.EqualValues(t, 1, after.TokenRefreshes-before.TokenRefreshes)
	require.Zero(t, after.RefreshTokenReuseViolations)
}

func (e *env) expireCacheOnly(t *testing.T, user, vendor string) {
	t.Helper()
	require.NoError(t, e.redis(t).Del(context.Background(), e.prefix+"bb:{u:"+user+"}:token:"+vendor).Err())
}

// eventTypes are the types of user's connection events, in order.
func eventTypes(t *testing.T, e *env, user string) []string {
	t.Helper()
	return eventColumn(t, e, user, "type")
}

// eventColumn is one text column of user's connection events, in order.
func eventColumn(t *testing.T, e *env, user, column string) []string {
	t.Helper()
	rows, err := e.pg(t).Query(context.Background(),
		`SELECT `+column+` FROM tokens.connection_events WHERE user_id = $1 ORDER BY created_at, event_id`, user)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	return out
}
