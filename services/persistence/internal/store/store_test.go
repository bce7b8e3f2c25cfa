package store_test

import (
	"context"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/timestamppb"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	"github.com/biobridge/bridge/pkg/testpg"
	"github.com/biobridge/bridge/services/persistence/internal/metrics"
	"github.com/biobridge/bridge/services/persistence/internal/record"
	"github.com/biobridge/bridge/services/persistence/internal/store"
)

func migrate(ctx context.Context, url string) error { return store.Migrate(ctx, url, 3) }

func open(t *testing.T) *store.Store {
	t.Helper()
	url := testpg.New(t, "persistence-"+store.MigrationsVersion, migrate)
	st, err := store.Open(context.Background(), url, slog.New(slog.DiscardHandler), metrics.Nop())
	require.NoError(t, err)
	t.Cleanup(st.Close)
	return st
}

func upsert(t *testing.T, user, id string, metric string, v float64, at time.Time) store.Op {
	t.Helper()
	ev, _, reason, _ := record.Normalize(&persistencev1.EventInput{
		UserId: user, Source: biometricsv1.Source_SOURCE_WHOOP, Kind: "recovery", VendorRecordId: id,
		Readings: []*biometricsv1.Reading{{Metric: metric, Value: v, ObservedAt: timestamppb.New(at)}},
	})
	require.Empty(t, reason)
	return store.Op{Upsert: &ev}
}

func count(t *testing.T, st *store.Store, q string, args ...any) int {
	t.Helper()
	var n int
	require.NoError(t, st.Pool().QueryRow(context.Background(), q, args...).Scan(&n))
	return n
}

// TestPartitionsAheadAndDefaultSplit: the months around now exist after
// migration; rows of an old month land in the default partition (the write
// does not fail) and maintenance moves them into a partition of their own.
func TestPartitionsAheadAndDefaultSplit(t *testing.T) {
	t.Parallel()
	st := open(t)
	ctx := context.Background()
	now := time.Now().UTC()
	for _, table := range []string{"readings", "events", "audit_log"} {
		for i := -1; i <= 3; i++ {
			m := time.Date(now.Year(), now.Month()+time.Month(i), 1, 0, 0, 0, 0, time.UTC)
			name := fmt.Sprintf("%s_p%04d_%02d", table, m.Year(), int(m.Month()))
			require.Equal(t, 1, count(t, st, `SELECT count(*) FROM pg_class WHERE relname = $1 AND relispartition`, name), name)
		}
	}

	old := time.Date(2019, 3, 14, 15, 9, 26, 0, time.UTC)
	_, _, err := st.Apply(ctx, []store.Op{
		upsert(t, "u1", "old-1", "heart_rate_bpm", 60, old),
		upsert(t, "u1", "old-2", "heart_rate_bpm", 61, old.Add(time.Hour)),
		upsert(t, "u1", "new", "heart_rate_bpm", 62, now),
	})
	require.NoError(t, err)
	require.Equal(t, 2, count(t, st, `SELECT count(*) FROM readings_default`))

	require.NoError(t, st.EnsurePartitions(ctx, now, 3))
	require.Zero(t, count(t, st, `SELECT count(*) FROM readings_default`))
	require.Equal(t, 2, count(t, st, `SELECT count(*) FROM readings_p2019_03`))
	require.Equal(t, 3, count(t, st, `SELECT count(*) FROM readings WHERE user_id = 'u1'`))
	// Running again is a no-op.
	require.NoError(t, st.EnsurePartitions(ctx, now, 3))

	// A new version of an old record still replaces its readings there.
	_, _, err = st.Apply(ctx, []store.Op{upsert(t, "u1", "old-1", "heart_rate_bpm", 70, old.Add(-time.Hour))})
	require.NoError(t, err)
	require.Equal(t, 2, count(t, st, `SELECT count(*) FROM readings_p2019_03`))
	require.Equal(t, 1, count(t, st, `SELECT count(*) FROM readings WHERE value = 70`))
}

// TestReplacingReadingsUsesThePrimaryKey guards the plan of the statement
// that removes a replaced version's readings: it must reach them through
// the primary key with the record's time range, not by scanning.
func TestReplacingReadingsUsesThePrimaryKey(t *testing.T) {
	t.Parallel()
	st := open(t)
	ctx := context.Background()
	var ops []store.Op
	for i := range 2000 {
		ops = append(ops, upsert(t, fmt.Sprintf("u%d", i%20), fmt.Sprintf("r%d", i), "heart_rate_bpm", 60, time.Now().Add(-time.Duration(i)*time.Minute)))
	}
	_, _, err := st.Apply(ctx, ops)
	require.NoError(t, err)
	_, err = st.Pool().Exec(ctx, `ANALYZE readings`)
	require.NoError(t, err)
	plan := explain(t, st, store.DeleteReadingsSQL,
		[]string{"u1"}, []int16{1}, []string{"r1"}, []string{"heart_rate_bpm"},
		[]time.Time{time.Now().Add(-time.Hour)}, []time.Time{time.Now()})
	// Empty partitions may be "scanned" (no rows, no cost); the one
	// holding the rows must be reached through its primary key.
	now := time.Now().UTC()
	require.Contains(t, plan, fmt.Sprintf("Index Scan using readings_p%04d_%02d_pkey", now.Year(), int(now.Month())), plan)
}

func explain(t *testing.T, st *store.Store, q string, args ...any) string {
	t.Helper()
	rows, err := st.Pool().Query(context.Background(), "EXPLAIN "+q, args...)
	require.NoError(t, err)
	defer rows.Close()
	var out string
	for rows.Next() {
		var line string
		require.NoError(t, rows.Scan(&line))
		out += line + "\n"
	}
	require.NoError(t, rows.Err())
	return out
}
