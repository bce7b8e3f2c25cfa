package tokenbrokertest

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	"github.com/biobridge/bridge/emulator"
	tokensv1 "github.com/biobridge/bridge/gen/go/biobridge/tokens/v1"
)

// listAll pages through ListActiveConnections.
func listAll(t *testing.T, in *instance, since time.Time, size int32) []*tokensv1.Connection {
	t.Helper()
	req := &tokensv1.ListActiveConnectionsRequest{PageSize: size}
	if !since.IsZero() {
		req.ConnectedSince = timestamppb.New(since)
	}
	var out []*tokensv1.Connection
	for range 100 {
		resp, err := in.client.ListActiveConnections(svcCtx(), req)
		require.NoError(t, err)
		out = append(out, resp.GetConnections()...)
		if resp.GetNextPageToken() == "" {
			return out
		}
		req.PageToken = resp.GetNextPageToken()
	}
	t.Fatal("ListActiveConnections never ended")
	return nil
}

func mine(t *testing.T, in *instance, user string) *tokensv1.Connection {
	t.Helper()
	resp, err := in.client.ListConnections(userCtx(t, user), &tokensv1.ListConnectionsRequest{})
	require.NoError(t, err)
	require.Len(t, resp.GetConnections(), 1)
	return resp.GetConnections()[0]
}

// TestListActiveConnections pages through active connections only, filters
// by connection time and is open to services only.
func TestListActiveConnections(t *testing.T) {
	e := newEnv(t, emulator.Config{})
	in := e.start(e.config())
	before := time.Now().Add(-time.Second)
	connect(t, in, "user-1", "whoop", "alice")
	connect(t, in, "user-2", "oura", "bob")
	connect(t, in, "user-3", "whoop", "carol")
	connect(t, in, "user-4", "oura", "dave")
	_, err := in.client.RevokeConnection(userCtx(t, "user-4"), &tokensv1.RevokeConnectionRequest{Vendor: "oura"})
	require.NoError(t, err)

	all := listAll(t, in, time.Time{}, 2)
	var keys []string
	for _, c := range all {
		keys = append(keys, c.GetUserId()+"/"+c.GetVendor())
		require.Equal(t, tokensv1.ConnectionStatus_CONNECTION_STATUS_ACTIVE, c.GetStatus())
		require.NotNil(t, c.GetConnectedAt())
	}
	require.Equal(t, []string{"user-1/whoop", "user-2/oura", "user-3/whoop"}, keys, "active ones, by key, across pages")
	require.Len(t, listAll(t, in, before, 0), 3)
	require.Empty(t, listAll(t, in, time.Now().Add(time.Minute), 0), "nobody connected in the future")

	for _, tc := range []struct {
		name   string
		ctx    context.Context
		req    *tokensv1.ListActiveConnectionsRequest
		code   codes.Code
		reason string
	}{
		{"user token", userCtx(t, "user-1"), &tokensv1.ListActiveConnectionsRequest{}, codes.Unauthenticated, "invalid_service_token"},
		{"page too large", svcCtx(), &tokensv1.ListActiveConnectionsRequest{PageSize: 5000}, codes.InvalidArgument, "invalid_page_size"},
		{"forged token", svcCtx(), &tokensv1.ListActiveConnectionsRequest{PageToken: "not-a-token"}, codes.InvalidArgument, "invalid_page_token"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := in.client.ListActiveConnections(tc.ctx, tc.req)
			requireCode(t, err, tc.code, tc.reason)
		})
	}
}

// TestStaleness: a connection silent past the threshold is marked stale
// once (with a stale event), shows as stale in ListConnections, and becomes
// fresh (with a fresh event) when new data is reported; old news changes
// nothing, and a revoked connection is not counted.
func TestStaleness(t *testing.T) {
	e := newEnv(t, emulator.Config{})
	in := e.start(e.config())
	connect(t, in, "user-1", "whoop", "alice")
	connect(t, in, "user-2", "oura", "bob")
	connect(t, in, "user-3", "whoop", "carol")
	ctx := context.Background()
	// user-1 and user-2 connected three hours ago; user-3 did too, but
	// before freshness was tracked (the deploy of migration 0002 was just
	// now): its silence counts from then.
	_, err := e.pg(t).Exec(ctx, `UPDATE tokens.connections SET connected_at = now() - interval '3 hours',
		tracked_since = now() - interval '3 hours' WHERE user_id IN ('user-1', 'user-2')`)
	require.NoError(t, err)
	_, err = e.pg(t).Exec(ctx, `UPDATE tokens.connections SET connected_at = now() - interval '3 hours' WHERE user_id = 'user-3'`)
	require.NoError(t, err)

	sweep := func(after time.Duration) *tokensv1.MarkStaleConnectionsResponse {
		t.Helper()
		resp, err := in.client.MarkStaleConnections(svcCtx(), &tokensv1.MarkStaleConnectionsRequest{StaleAfter: durationpb.New(after)})
		require.NoError(t, err)
		return resp
	}
	resp := sweep(time.Hour)
	require.EqualValues(t, 2, resp.GetMarked())
	require.Equal(t, map[string]int64{"whoop": 1, "oura": 1}, resp.GetStaleByVendor())
	require.Zero(t, sweep(time.Hour).GetMarked(), "a stale connection is marked once")
	require.True(t, mine(t, in, "user-1").GetStale())
	require.False(t, mine(t, in, "user-3").GetStale())

	// Data arrives for user-1: fresh again, last_data_at shown.
	at := time.Now().Add(-time.Minute).Truncate(time.Microsecond)
	arr, err := in.client.ReportDataArrival(svcCtx(), &tokensv1.ReportDataArrivalRequest{Arrivals: []*tokensv1.DataArrival{
		{UserId: "user-1", Vendor: "whoop", ArrivedAt: timestamppb.New(at.Add(-time.Minute))},
		{UserId: "user-1", Vendor: "whoop", ArrivedAt: timestamppb.New(at)},
		{UserId: "user-3", Vendor: "whoop", ArrivedAt: timestamppb.New(at)},
		{UserId: "nobody", Vendor: "whoop", ArrivedAt: timestamppb.New(at)},
	}})
	require.NoError(t, err)
	require.EqualValues(t, 1, arr.GetFreshened(), "only user-1 was stale")
	c := mine(t, in, "user-1")
	require.False(t, c.GetStale())
	require.True(t, at.Equal(c.GetLastDataAt().AsTime()), "the latest arrival of the batch: %v", c.GetLastDataAt().AsTime())

	// An older report is old news.
	arr, err = in.client.ReportDataArrival(svcCtx(), &tokensv1.ReportDataArrivalRequest{Arrivals: []*tokensv1.DataArrival{
		{UserId: "user-1", Vendor: "whoop", ArrivedAt: timestamppb.New(at.Add(-time.Hour))},
	}})
	require.NoError(t, err)
	require.Zero(t, arr.GetFreshened())
	require.True(t, at.Equal(mine(t, in, "user-1").GetLastDataAt().AsTime()))

	// Silence counts from the last data: with a threshold shorter than
	// its age user-1 is stale again, user-3's fresh data keeps it fresh.
	require.EqualValues(t, 1, sweep(30*time.Second).GetMarked())
	require.Equal(t, []string{"connected", "stale", "fresh", "stale"}, eventTypes(t, e, "user-1"))
	require.Equal(t, []string{"connected"}, eventTypes(t, e, "user-3"))

	// A revoked connection is not stale.
	_, err = in.client.RevokeConnection(userCtx(t, "user-2"), &tokensv1.RevokeConnectionRequest{Vendor: "oura"})
	require.NoError(t, err)
	require.Equal(t, map[string]int64{"whoop": 1, "oura": 0}, sweep(time.Hour).GetStaleByVendor())

	for _, tc := range []struct {
		name string
		call func() error
		code codes.Code
	}{
		{"arrival of an unknown vendor", func() error {
			_, err := in.client.ReportDataArrival(svcCtx(), &tokensv1.ReportDataArrivalRequest{Arrivals: []*tokensv1.DataArrival{
				{UserId: "user-1", Vendor: "fitbit", ArrivedAt: timestamppb.Now()}}})
			return err
		}, codes.InvalidArgument},
		{"arrival without time", func() error {
			_, err := in.client.ReportDataArrival(svcCtx(), &tokensv1.ReportDataArrivalRequest{Arrivals: []*tokensv1.DataArrival{
				{UserId: "user-1", Vendor: "whoop"}}})
			return err
		}, codes.InvalidArgument},
		{"no threshold", func() error {
			_, err := in.client.MarkStaleConnections(svcCtx(), &tokensv1.MarkStaleConnectionsRequest{})
			return err
		}, codes.InvalidArgument},
		{"threshold below a second", func() error {
			_, err := in.client.MarkStaleConnections(svcCtx(), &tokensv1.MarkStaleConnectionsRequest{StaleAfter: durationpb.New(time.Millisecond)})
			return err
		}, codes.InvalidArgument},
		{"user token", func() error {
			_, err := in.client.MarkStaleConnections(userCtx(t, "user-1"), &tokensv1.MarkStaleConnectionsRequest{StaleAfter: durationpb.New(time.Hour)})
			return err
		}, codes.Unauthenticated},
	} {
		t.Run(tc.name, func(t *testing.T) { requireCode(t, tc.call(), tc.code, "") })
	}
}

// TestLabelledMetricsStartAtZero: the series the dashboards and alerts use
// exist before the first refresh.
func TestLabelledMetricsStartAtZero(t *testing.T) {
	e := newEnv(t, emulator.Config{})
	in := e.start(e.config())
	mfs, err := in.srv.Registry().Gather()
	require.NoError(t, err)
	series := map[string]int{}
	for _, mf := range mfs {
		series[mf.GetName()] = len(mf.GetMetric())
	}
	for name, want := range map[string]int{
		"biobridge_tokenbroker_refreshes_total":        2 * 5,
		"biobridge_tokenbroker_refresh_failures_total": 2 * 9,
		"biobridge_tokenbroker_lock_wait_seconds":      2,
		"biobridge_tokenbroker_cache_hits_total":       2,
		"biobridge_tokenbroker_cache_misses_total":     2,
	} {
		require.Equal(t, want, series[name], name)
	}
}
