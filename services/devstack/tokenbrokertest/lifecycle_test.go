package tokenbrokertest

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/biobridge/bridge/emulator"
	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	tokensv1 "github.com/biobridge/bridge/gen/go/biobridge/tokens/v1"
)

// sequences returns the sequence numbers of user's recorded connection
// events, in recording order.
func sequences(t *testing.T, e *env, user string) []int64 {
	t.Helper()
	rows, err := e.pg(t).Query(context.Background(),
		`SELECT sequence FROM tokens.connection_events WHERE user_id = $1 ORDER BY created_at, event_id`, user)
	require.NoError(t, err)
	defer rows.Close()
	var out []int64
	for rows.Next() {
		var n int64
		require.NoError(t, rows.Scan(&n))
		out = append(out, n)
	}
	require.NoError(t, rows.Err())
	return out
}

// Every connection event of a user, ingest's backfill_completed included,
// takes the next number of one per-user sequence; a repeated event id is
// recorded once; an event for a connection that does not exist is refused.
func TestConnectionEventsShareOneSequence(t *testing.T) {
	e := newEnv(t, emulator.Config{})
	in := e.start(e.config())
	connect(t, in, "user-seq", "whoop", "sam")
	const id = "8d0f2b1e-4a57-4d6e-9a43-5b2f0c1d7e90"
	ev := &biometricsv1.ConnectionEvent{EventId: id, UserId: "user-seq", Vendor: "whoop",
		Type: biometricsv1.ConnectionEventType_CONNECTION_EVENT_TYPE_BACKFILL_COMPLETED, OccurredAt: timestamppb.Now()}
	first, err := in.client.RecordConnectionEvent(svcCtx(), &tokensv1.RecordConnectionEventRequest{Event: ev})
	require.NoError(t, err)
	again, err := in.client.RecordConnectionEvent(svcCtx(), &tokensv1.RecordConnectionEventRequest{Event: ev})
	require.NoError(t, err)
	require.Equal(t, first.GetSequence(), again.GetSequence(), "a retried event keeps its number")
	_, err = in.client.RevokeConnection(userCtx(t, "user-seq"), &tokensv1.RevokeConnectionRequest{Vendor: "whoop"})
	require.NoError(t, err)
	require.Equal(t, []string{"connected", "backfill_completed", "revoked"}, eventTypes(t, e, "user-seq"))
	require.Equal(t, []int64{1, 2, 3}, sequences(t, e, "user-seq"))

	_, err = in.client.RecordConnectionEvent(svcCtx(), &tokensv1.RecordConnectionEventRequest{Event: &biometricsv1.ConnectionEvent{
		EventId: "0b7c7f1e-1111-4d6e-9a43-5b2f0c1d7e90", UserId: "nobody", Vendor: "whoop",
		Type: biometricsv1.ConnectionEventType_CONNECTION_EVENT_TYPE_BACKFILL_COMPLETED}})
	requireCode(t, err, codes.NotFound, "connection_not_found")
	_, err = in.client.RecordConnectionEvent(svcCtx(), &tokensv1.RecordConnectionEventRequest{Event: &biometricsv1.ConnectionEvent{
		EventId: "0b7c7f1e-2222-4d6e-9a43-5b2f0c1d7e90", UserId: "user-seq", Vendor: "whoop",
		Type: biometricsv1.ConnectionEventType_CONNECTION_EVENT_TYPE_REVOKED}})
	requireCode(t, err, codes.InvalidArgument, "unsupported_event_type")
}

// DeleteUserData revokes every live connection at the vendor, deletes the
// user's rows and Redis keys, refuses a new authorization afterwards, and
// succeeds again without doing anything.
func TestDeleteUserData(t *testing.T) {
	e := newEnv(t, emulator.Config{})
	in := e.start(e.config())
	connect(t, in, "user-del", "whoop", "dora")
	connect(t, in, "user-del", "oura", "dora")
	for _, v := range []string{"whoop", "oura"} {
		_, err := in.client.GetAccessToken(svcCtx(), &tokensv1.GetAccessTokenRequest{UserId: "user-del", Vendor: v})
		require.NoError(t, err)
	}
	ctx := context.Background()
	keys, err := e.redis(t).Keys(ctx, e.prefix+"*user-del*").Result()
	require.NoError(t, err)
	require.NotEmpty(t, keys, "tokens are cached")

	resp, err := in.client.DeleteUserData(svcCtx(), &tokensv1.DeleteUserDataRequest{UserId: "user-del"})
	require.NoError(t, err)
	require.Len(t, resp.GetRevocations(), 2)
	for _, r := range resp.GetRevocations() {
		require.True(t, r.GetRevokedAtVendor(), r.GetVendor())
		require.NotEmpty(t, r.GetVendorUserId())
	}
	require.EqualValues(t, 1, counters(e, "whoop").Revocations)
	require.EqualValues(t, 1, counters(e, "oura").Revocations)
	var rows int
	require.NoError(t, e.pg(t).QueryRow(ctx, `SELECT (SELECT count(*) FROM tokens.connections WHERE user_id = 'user-del')
		+ (SELECT count(*) FROM tokens.connection_events WHERE user_id = 'user-del')
		+ (SELECT count(*) FROM tokens.oauth_states WHERE user_id = 'user-del')
		+ (SELECT count(*) FROM tokens.user_event_sequences WHERE user_id = 'user-del')`).Scan(&rows))
	require.Zero(t, rows)
	keys, err = e.redis(t).Keys(ctx, e.prefix+"*user-del*").Result()
	require.NoError(t, err)
	require.Empty(t, keys)

	_, err = in.client.StartAuthorization(userCtx(t, "user-del"), &tokensv1.StartAuthorizationRequest{Vendor: "whoop"})
	requireCode(t, err, codes.FailedPrecondition, "user_erased")

	resp, err = in.client.DeleteUserData(svcCtx(), &tokensv1.DeleteUserDataRequest{UserId: "user-del"})
	require.NoError(t, err)
	require.Empty(t, resp.GetRevocations())
	require.EqualValues(t, 1, counters(e, "whoop").Revocations)
}
