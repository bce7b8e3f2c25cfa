package server_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	"github.com/biobridge/bridge/pkg/catalog"
	"github.com/biobridge/bridge/services/persistence/server"
)

func TestServiceTokenRequired(t *testing.T) {
	t.Parallel()
	e := start(t)
	user := newUser()
	bg, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	calls := map[string]func(ctx context.Context) error{
		"GetLatest": func(ctx context.Context) error {
			_, err := e.biometrics.GetLatest(ctx, &biometricsv1.GetLatestRequest{UserId: user})
			return err
		},
		"QueryReadings": func(ctx context.Context) error {
			_, err := e.biometrics.QueryReadings(ctx, &biometricsv1.QueryReadingsRequest{UserId: user, Metric: "heart_rate_bpm"})
			return err
		},
		"WriteEvents": func(ctx context.Context) error {
			_, err := e.persistence.WriteEvents(ctx, &persistencev1.WriteEventsRequest{})
			return err
		},
		"LeaseOutbox": func(ctx context.Context) error {
			_, err := e.persistence.LeaseOutbox(ctx, &persistencev1.LeaseOutboxRequest{})
			return err
		},
	}
	for name, call := range calls {
		for _, tc := range []struct {
			desc string
			ctx  context.Context
		}{
			{"no token", bg},
			{"wrong token", withToken(bg, "not-a-token")},
			{"token prefix", withToken(bg, agentToken[:len(agentToken)-1])},
		} {
			err := call(tc.ctx)
			require.Equal(t, codes.Unauthenticated, status.Code(err), "%s with %s", name, tc.desc)
		}
		require.NoError(t, call(withToken(bg, agentToken)), name)
	}
	// Rejected calls were not audited; the two authenticated reads were.
	e.srv.FlushAudit(bg)
	require.Equal(t, 2, e.count(`SELECT count(*) FROM audit_log WHERE user_id = $1`, user))
}

func TestReadsAreAudited(t *testing.T) {
	t.Parallel()
	e := start(t)
	user := newUser()
	e.write(event(user, "a", reading("heart_rate_bpm", 60, time.Now().Add(-time.Minute))))

	_, err := e.biometrics.GetLatest(e.agentCtx(), &biometricsv1.GetLatestRequest{UserId: user, Metrics: []string{"heart_rate_bpm", "spo2_pct"}})
	require.NoError(t, err)
	require.Eventually(t, func() bool {
		return e.count(`SELECT count(*) FROM audit_log WHERE user_id = $1`, user) == 1
	}, 10*time.Second, 20*time.Millisecond, "the batch writer flushes on its interval")

	var caller, method string
	var metrics []string
	var at time.Time
	require.NoError(t, e.db.QueryRow(context.Background(),
		`SELECT caller, method, metrics, at FROM audit_log WHERE user_id = $1`, user).Scan(&caller, &method, &metrics, &at))
	require.Equal(t, "agent", caller)
	require.Equal(t, "GetLatest", method)
	require.Equal(t, []string{"heart_rate_bpm", "spo2_pct"}, metrics)
	require.WithinDuration(t, time.Now(), at, time.Minute)

	// Many concurrent reads: each audited, none dropped.
	const n = 200
	errs := make(chan error, n)
	for range n {
		go func() {
			_, err := e.biometrics.QueryReadings(e.agentCtx(), &biometricsv1.QueryReadingsRequest{UserId: user, Metric: "heart_rate_bpm"})
			errs <- err
		}()
	}
	for range n {
		require.NoError(t, <-errs)
	}
	e.srv.FlushAudit(context.Background())
	require.Equal(t, n, e.count(`SELECT count(*) FROM audit_log WHERE user_id = $1 AND method = 'QueryReadings'`, user))
	require.Zero(t, counter(t, e.srv.Registry(), "biobridge_persistence_audit_dropped_total"))
}

func TestGetLatestValidation(t *testing.T) {
	t.Parallel()
	e := start(t)
	for _, tc := range []struct {
		name string
		req  *biometricsv1.GetLatestRequest
	}{
		{"missing user", &biometricsv1.GetLatestRequest{}},
		{"brace in user id", &biometricsv1.GetLatestRequest{UserId: "a}b"}},
		{"unknown metric", &biometricsv1.GetLatestRequest{UserId: "u", Metrics: []string{"mood"}}},
	} {
		_, err := e.biometrics.GetLatest(e.agentCtx(), tc.req)
		require.Equal(t, codes.InvalidArgument, status.Code(err), tc.name)
	}
	resp, err := e.biometrics.GetLatest(e.agentCtx(), &biometricsv1.GetLatestRequest{UserId: newUser()})
	require.NoError(t, err)
	require.Empty(t, resp.GetValues(), "a user without data has no values")
}

func TestGetLatestFiltersAndDescribes(t *testing.T) {
	t.Parallel()
	e := start(t)
	user := newUser()
	at := time.Now().Add(-time.Hour).UTC().Truncate(time.Microsecond)
	in := event(user, "s1", reading("sleep_score", 81, at), reading("hrv_rmssd_ms", 45.5, at))
	in.Source = biometricsv1.Source_SOURCE_OURA
	in.Readings[1].Device = &biometricsv1.Device{Name: "Oura Ring", Model: "Gen3"}
	e.write(in)

	resp, err := e.biometrics.GetLatest(e.agentCtx(), &biometricsv1.GetLatestRequest{UserId: user})
	require.NoError(t, err)
	require.Len(t, resp.GetValues(), 2)
	require.Equal(t, "hrv_rmssd_ms", resp.GetValues()[0].GetMetric(), "ordered by metric")
	v := resp.GetValues()[0]
	require.Equal(t, 45.5, v.GetValue())
	require.Equal(t, "ms", v.GetUnit())
	require.Equal(t, biometricsv1.Source_SOURCE_OURA, v.GetSource())
	require.Equal(t, "Oura Ring", v.GetDevice().GetName())
	require.True(t, at.Equal(v.GetObservedAt().AsTime()))
	require.InDelta(t, time.Hour.Seconds(), v.GetAge().AsDuration().Seconds(), 60)

	only := e.latest(user, "sleep_score")
	require.Len(t, only, 1)
	require.Equal(t, 81.0, only["sleep_score"].GetValue())
}

func TestQueryReadingsPages(t *testing.T) {
	t.Parallel()
	e := start(t)
	user := newUser()
	base := time.Date(2026, 9, 1, 0, 0, 0, 0, time.UTC)
	var evs []*persistencev1.EventInput
	for i := range 250 {
		// Pairs of readings at the same instant from two records: the
		// order must still be total and stable.
		evs = append(evs, event(user, fmt.Sprintf("r-%03d", i), reading("heart_rate_bpm", 60, base.Add(time.Duration(i/2)*time.Minute))))
	}
	e.write(evs...)
	e.write(event(user, "other", reading("spo2_pct", 97, base)))

	var got []*biometricsv1.StoredReading
	token := ""
	pages := 0
	for {
		resp, err := e.biometrics.QueryReadings(e.agentCtx(), &biometricsv1.QueryReadingsRequest{
			UserId: user, Metric: "heart_rate_bpm", PageSize: 100, PageToken: token,
			Start: ts(base),
		})
		require.NoError(t, err)
		pages++
		got = append(got, resp.GetReadings()...)
		if pages == 1 {
			// A write landing between pages does not shift or repeat them.
			e.write(event(user, "late", reading("heart_rate_bpm", 70, base)))
		}
		token = resp.GetNextPageToken()
		if token == "" {
			break
		}
	}
	require.Equal(t, 3, pages)
	require.Len(t, got, 250)
	for i, r := range got {
		require.Equal(t, fmt.Sprintf("r-%03d", i), r.GetVendorRecordId())
		require.Equal(t, "bpm", r.GetUnit())
	}

	// A token only works with the filters it came from.
	resp, err := e.biometrics.QueryReadings(e.agentCtx(), &biometricsv1.QueryReadingsRequest{
		UserId: user, Metric: "heart_rate_bpm", PageSize: 10, Start: ts(base)})
	require.NoError(t, err)
	_, err = e.biometrics.QueryReadings(e.agentCtx(), &biometricsv1.QueryReadingsRequest{
		UserId: user, Metric: "spo2_pct", PageToken: resp.GetNextPageToken(), Start: ts(base)})
	require.Equal(t, codes.InvalidArgument, status.Code(err))
	_, err = e.biometrics.QueryReadings(e.agentCtx(), &biometricsv1.QueryReadingsRequest{
		UserId: user, Metric: "heart_rate_bpm", PageToken: "garbage"})
	require.Equal(t, codes.InvalidArgument, status.Code(err))

	// The time range is [start, end).
	resp, err = e.biometrics.QueryReadings(e.agentCtx(), &biometricsv1.QueryReadingsRequest{
		UserId: user, Metric: "heart_rate_bpm", Start: ts(base.Add(time.Minute)), End: ts(base.Add(3 * time.Minute))})
	require.NoError(t, err)
	require.Len(t, resp.GetReadings(), 4)
	require.Empty(t, resp.GetNextPageToken())
}

func TestWatchLatest(t *testing.T) {
	t.Parallel()
	e := start(t)
	user := newUser()
	at := time.Date(2026, 11, 1, 7, 0, 0, 0, time.UTC)
	e.write(event(user, "a", reading("heart_rate_bpm", 60, at), reading("spo2_pct", 97, at)))

	ctx, cancel := context.WithCancel(e.agentCtx())
	defer cancel()
	stream, err := e.biometrics.WatchLatest(ctx, &biometricsv1.WatchLatestRequest{UserId: user, Metrics: []string{"heart_rate_bpm"}})
	require.NoError(t, err)
	first, err := stream.Recv()
	require.NoError(t, err)
	require.Equal(t, biometricsv1.ChangeType_CHANGE_TYPE_SNAPSHOT, first.GetChange())
	require.Equal(t, 60.0, first.GetValue().GetValue())

	// An older reading changes nothing; a newer one is streamed; spo2 is
	// not watched.
	e.write(event(user, "old", reading("heart_rate_bpm", 50, at.Add(-time.Hour))))
	e.write(event(user, "b", reading("heart_rate_bpm", 70, at.Add(time.Hour)), reading("spo2_pct", 99, at.Add(time.Hour))))
	next, err := stream.Recv()
	require.NoError(t, err)
	require.Equal(t, biometricsv1.ChangeType_CHANGE_TYPE_UPDATED, next.GetChange())
	require.Equal(t, 70.0, next.GetValue().GetValue())

	// Deleting it restores the previous value.
	_, err = e.persistence.DeleteRecords(e.ingestCtx(), delRequest(user, "b"))
	require.NoError(t, err)
	next, err = stream.Recv()
	require.NoError(t, err)
	require.Equal(t, biometricsv1.ChangeType_CHANGE_TYPE_UPDATED, next.GetChange())
	require.Equal(t, 60.0, next.GetValue().GetValue())

	// Deleting the rest removes the metric.
	_, err = e.persistence.DeleteRecords(e.ingestCtx(), delRequest(user, "a", "old"))
	require.NoError(t, err)
	next, err = stream.Recv()
	require.NoError(t, err)
	require.Equal(t, biometricsv1.ChangeType_CHANGE_TYPE_REMOVED, next.GetChange())
	require.Equal(t, "heart_rate_bpm", next.GetValue().GetMetric())
}

func TestListMetrics(t *testing.T) {
	t.Parallel()
	e := start(t)
	resp, err := e.biometrics.ListMetrics(e.agentCtx(), &biometricsv1.ListMetricsRequest{})
	require.NoError(t, err)
	require.Len(t, resp.GetMetrics(), len(catalog.All()))
	for i, m := range resp.GetMetrics() {
		require.Equal(t, catalog.Names()[i], m.GetName())
	}
}

// TestShutdownFlushesAudit: entries still buffered when the server stops
// are written before Serve returns.
func TestShutdownFlushesAudit(t *testing.T) {
	t.Parallel()
	// The longest interval Validate accepts: no timed flush in the test.
	e := start(t, func(c *server.Config) { c.AuditFlushInterval = time.Minute })
	user := newUser()
	for range 5 {
		_, err := e.biometrics.GetLatest(e.agentCtx(), &biometricsv1.GetLatestRequest{UserId: user})
		require.NoError(t, err)
	}
	e.stop()
	require.Equal(t, 5, e.count(`SELECT count(*) FROM audit_log WHERE user_id = $1`, user))
}

// TestWatchStreamsAreBounded: past WATCH_MAX_STREAMS a new watch is refused
// with RESOURCE_EXHAUSTED (each one holds a Redis connection), and a slot
// frees when a watch ends.
func TestWatchStreamsAreBounded(t *testing.T) {
	t.Parallel()
	e := start(t, func(c *server.Config) { c.WatchMaxStreams = 1 })
	user := newUser()
	e.write(event(user, "a", reading("heart_rate_bpm", 60, time.Date(2026, 11, 1, 7, 0, 0, 0, time.UTC))))

	first, cancelFirst := context.WithCancel(e.agentCtx())
	stream, err := e.biometrics.WatchLatest(first, &biometricsv1.WatchLatestRequest{UserId: user})
	require.NoError(t, err)
	_, err = stream.Recv()
	require.NoError(t, err, "the first watch is served")

	second, err := e.biometrics.WatchLatest(e.agentCtx(), &biometricsv1.WatchLatestRequest{UserId: user})
	require.NoError(t, err)
	_, err = second.Recv()
	require.Equal(t, codes.ResourceExhausted, status.Code(err), "the second watch is refused: %v", err)

	cancelFirst()
	require.Eventually(t, func() bool {
		ctx, cancel := context.WithCancel(e.agentCtx())
		defer cancel()
		s, err := e.biometrics.WatchLatest(ctx, &biometricsv1.WatchLatestRequest{UserId: user})
		if err != nil {
			return false
		}
		_, err = s.Recv()
		return err == nil
	}, 10*time.Second, 50*time.Millisecond, "the slot frees when the first watch ends")
}
