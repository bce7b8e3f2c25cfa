package tokenbrokertest

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	"github.com/biobridge/bridge/emulator"
	tokensv1 "github.com/biobridge/bridge/gen/go/biobridge/tokens/v1"
)

// The refresh races below start from states a single GetAccessToken cannot
// reach on its own (a lock lost, a claim lapsed or held by someone else
// while the vendor call is in flight). The test makes them while the
// broker's refresh request is held at the vendor (env.beforeRefresh), so
// every step happens in a fixed order.

// loseLockAndClaim is what a Redis failover plus a lapsed row claim do to
// the instance refreshing user's connection: its lock key and its claim
// are gone, so another instance may refresh.
// The clients are opened by the test beforehand: this runs in the
// emulator's handler, not on the test's goroutine.
func (e *env) loseLockAndClaim(ctx context.Context, rdb *redis.Client, pg *pgx.Conn, user, vendor string) error {
	if err := rdb.Del(ctx, e.prefix+"bb:{u:"+user+"}:tokenlock:"+vendor).Err(); err != nil {
		return err
	}
	_, err := pg.Exec(ctx, `UPDATE tokens.connections SET refresh_claim_owner = NULL, refresh_claim_until = NULL
		WHERE user_id = $1 AND vendor = $2`, user, vendor)
	return err
}

// brokenReason is the stored broken reason of user's connection.
func brokenReason(t *testing.T, e *env, user, vendor string) string {
	t.Helper()
	var reason string
	require.NoError(t, e.pg(t).QueryRow(context.Background(),
		`SELECT broken_reason FROM tokens.connections WHERE user_id = $1 AND vendor = $2`, user, vendor).Scan(&reason))
	return reason
}

// eventReasons are the reasons of user's connection events, in order.
func eventReasons(t *testing.T, e *env, user string) []string {
	t.Helper()
	return eventColumn(t, e, user, "reason")
}

func connectionStatus(t *testing.T, in *instance, user string) tokensv1.ConnectionStatus {
	t.Helper()
	list, err := in.client.ListConnections(userCtx(t, user), &tokensv1.ListConnectionsRequest{})
	require.NoError(t, err)
	require.Len(t, list.GetConnections(), 1)
	return list.GetConnections()[0].GetStatus()
}

func refreshes(t *testing.T, in *instance, outcome string) float64 {
	t.Helper()
	return metricValue(t, in.srv.Registry(), "biobridge_tokenbroker_refreshes_total", map[string]string{"vendor": "whoop", "outcome": outcome})
}

// TestInvalidGrantAfterAnotherInstanceRefreshedIsALostRace: instance B
// presents a refresh token that instance A already rotated (B's view is
// from before A's write, as after a lock lost to a Redis failover). The
// vendor answers invalid_grant; B must find A's tokens in the store and
// use them, not mark the connection broken.
func TestInvalidGrantAfterAnotherInstanceRefreshedIsALostRace(t *testing.T) {
	// ReuseKeepsGrant: the vendor rejects only the reused token, so A's
	// tokens keep working and the test can check B hands them out.
	e := newEnv(t, emulator.Config{ReuseKeepsGrant: true})
	cfg := e.config()
	a, b := e.start(cfg), e.start(cfg)
	connect(t, a, "user-1", "whoop", "alice")
	e.expire(t, "user-1", "whoop")

	// B's refresh is on its way to the vendor when B loses its lock and
	// claim; A refreshes and stores first.
	var fromA string
	var aErr error
	var refreshesAfterA int64
	rdb, pg := e.redis(t), e.pg(t)
	hook := func(url.Values) {
		ctx := context.Background()
		if aErr = e.loseLockAndClaim(ctx, rdb, pg, "user-1", "whoop"); aErr != nil {
			return
		}
		var resp *tokensv1.GetAccessTokenResponse
		resp, aErr = a.client.GetAccessToken(svcCtx(), &tokensv1.GetAccessTokenRequest{UserId: "user-1", Vendor: "whoop"})
		fromA = resp.GetAccessToken()
		refreshesAfterA = counters(e, "whoop").TokenRefreshes
	}
	e.beforeRefresh.Store(&hook)

	got := tokenFor(t, b, "user-1", "whoop", "")
	require.NoError(t, aErr, "instance a refreshes while b's request is at the vendor")
	require.EqualValues(t, 1, refreshesAfterA)
	require.Equal(t, fromA, got, "B hands out A's token")
	require.EqualValues(t, 1, counters(e, "whoop").InvalidGrants, "the vendor did reject B's stale token")

	require.Equal(t, tokensv1.ConnectionStatus_CONNECTION_STATUS_ACTIVE, connectionStatus(t, b, "user-1"))
	require.Equal(t, []string{"connected"}, eventTypes(t, e, "user-1"), "no refresh_failed event")
	require.EqualValues(t, 1, refreshes(t, b, "lost_race"))
	require.EqualValues(t, 0, refreshes(t, b, "broken"))
}

// TestInvalidGrantWithNobodyElseBreaksTheConnection is the other side: the
// same invalid_grant with an unchanged store means the grant is dead.
func TestInvalidGrantWithNobodyElseBreaksTheConnection(t *testing.T) {
	e := newEnv(t, emulator.Config{})
	cfg := e.config()
	a, b := e.start(cfg), e.start(cfg)
	connect(t, a, "user-1", "whoop", "alice")
	e.expire(t, "user-1", "whoop")
	require.Equal(t, 1, e.emu.RevokeGrants(emulator.Whoop, "alice"))

	_, err := b.client.GetAccessToken(svcCtx(), &tokensv1.GetAccessTokenRequest{UserId: "user-1", Vendor: "whoop"})
	requireCode(t, err, codes.FailedPrecondition, "connection_broken")
	require.Equal(t, tokensv1.ConnectionStatus_CONNECTION_STATUS_BROKEN, connectionStatus(t, b, "user-1"))
	require.Equal(t, "invalid_grant", brokenReason(t, e, "user-1", "whoop"))
	require.Equal(t, []string{"connected", "refresh_failed"}, eventTypes(t, e, "user-1"))
	require.Equal(t, "invalid_grant", eventReasons(t, e, "user-1")[1])
	require.EqualValues(t, 1, refreshes(t, b, "broken"))
}

// TestTransientVendorErrorsChangeNothing: a 5xx from the token endpoint
// (nothing rotated) is retryable and leaves the connection alone.
func TestTransientVendorErrorsChangeNothing(t *testing.T) {
	e := newEnv(t, emulator.Config{})
	cfg := e.config()
	a, b := e.start(cfg), e.start(cfg)
	connect(t, a, "user-1", "whoop", "alice")
	e.expire(t, "user-1", "whoop")
	require.NoError(t, e.emu.SetFaults(emulator.Faults{TokenErrorRate: 1}))

	_, err := b.client.GetAccessToken(svcCtx(), &tokensv1.GetAccessTokenRequest{UserId: "user-1", Vendor: "whoop"})
	requireCode(t, err, codes.Unavailable, "")
	require.Equal(t, tokensv1.ConnectionStatus_CONNECTION_STATUS_ACTIVE, connectionStatus(t, b, "user-1"))

	require.NoError(t, e.emu.SetFaults(emulator.Faults{}))
	tokenFor(t, b, "user-1", "whoop", "")
	require.Zero(t, counters(e, "whoop").RefreshTokenReuseViolations)
	require.EqualValues(t, 1, metricValue(t, b.srv.Registry(), "biobridge_tokenbroker_refresh_failures_total",
		map[string]string{"vendor": "whoop", "reason": "vendor_error"}))
}

// TestLoserDoesNotBreakWhileWinnerMayLand: B presents a spent refresh token
// (its Redis lock was lost) while A's claim on the row is still running: A
// may be about to store the tokens that replaced it. B's invalid_grant must
// not mark the connection broken; it is told to retry instead.
func TestLoserDoesNotBreakWhileWinnerMayLand(t *testing.T) {
	e := newEnv(t, emulator.Config{ReuseKeepsGrant: true})
	cfg := e.config()
	a, b := e.start(cfg), e.start(cfg)
	connect(t, a, "user-1", "whoop", "alice")
	e.expire(t, "user-1", "whoop")

	// While B's request is on its way: A's refresh reached the vendor (the
	// refresh token is spent) and A holds the claim, its result not
	// stored yet.
	spent := 0
	var hookErr error
	pg := e.pg(t)
	hook := func(form url.Values) {
		rec := httptest.NewRecorder()
		req := httptest.NewRequest(http.MethodPost, "/whoop/oauth/oauth2/token", strings.NewReader(form.Encode()))
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		e.emu.Handler().ServeHTTP(rec, req)
		spent = rec.Code
		_, hookErr = pg.Exec(context.Background(), `UPDATE tokens.connections
			SET refresh_claim_owner = 'instance-a', refresh_claim_until = clock_timestamp() + interval '1 minute'
			WHERE user_id = 'user-1' AND vendor = 'whoop'`)
	}
	e.beforeRefresh.Store(&hook)

	_, err := b.client.GetAccessToken(svcCtx(), &tokensv1.GetAccessTokenRequest{UserId: "user-1", Vendor: "whoop"})
	require.Equal(t, http.StatusOK, spent, "A's refresh reached the vendor")
	require.NoError(t, hookErr)
	requireCode(t, err, codes.Unavailable, "refresh_in_progress")
	require.Equal(t, tokensv1.ConnectionStatus_CONNECTION_STATUS_ACTIVE, connectionStatus(t, b, "user-1"), "not broken while the winner may land")
	require.Equal(t, []string{"connected"}, eventTypes(t, e, "user-1"), "no refresh_failed event")
	require.EqualValues(t, 0, refreshes(t, b, "broken"))
}
