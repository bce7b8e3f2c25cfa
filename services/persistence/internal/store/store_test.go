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

// TestLoadingRecordsProbesThePrimaryKey guards the plan of the statement
// every write starts with, reading the stored state of its records: with
// 20000 records stored and no statistics yet (a new table, as in a fresh
// deployment before autovacuum's first analyze), a write of 1000 records
// must probe the primary key for each, not read the whole table (the
// plain join's hash of every user's records, which a push paid per write
// until the table grew past about 150,000 rows).
func TestLoadingRecordsProbesThePrimaryKey(t *testing.T) {
	t.Parallel()
	st := open(t)
	ctx := context.Background()
	_, err := st.Pool().Exec(ctx, `INSERT INTO records (user_id, source, vendor_record_id, kind, version, content_hash, event_id)
		SELECT 'u' || (g % 20), 1, 'r' || g, 'sample', 1, '\x00', gen_random_uuid() FROM generate_series(1, 20000) g`)
	require.NoError(t, err)
	users, sources, ids := make([]string, 1000), make([]int16, 1000), make([]string, 1000)
	for i := range ids {
		users[i], sources[i], ids[i] = "u1", 1, fmt.Sprintf("new-%d", i)
	}
	plan := explain(t, st, store.SelectRecordsSQL, users, sources, ids)
	require.Contains(t, plan, "Index Scan using records_pkey", plan)
	require.NotContains(t, plan, "Seq Scan on records", plan)
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

func upsertAt(t *testing.T, src biometricsv1.Source, user, id string, v float64, observed, occurred time.Time) store.Op {
	t.Helper()
	ev, _, reason, _ := record.Normalize(&persistencev1.EventInput{
		UserId: user, Source: src, Kind: "sample", VendorRecordId: id, OccurredAt: timestamppb.New(occurred),
		Readings: []*biometricsv1.Reading{{Metric: "heart_rate_bpm", Value: v, ObservedAt: timestamppb.New(observed)}},
	})
	require.Empty(t, reason)
	return store.Op{Upsert: &ev}
}

// TestStaleAndDeletedUpsertsInOneTransaction: group commit puts a deletion
// and the upserts around it into one transaction; each op must be judged
// against the state the ops before it left, not the stored one.
func TestStaleAndDeletedUpsertsInOneTransaction(t *testing.T) {
	t.Parallel()
	st := open(t)
	ctx := context.Background()
	at := time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)
	hk, whoop := biometricsv1.Source_SOURCE_HEALTHKIT, biometricsv1.Source_SOURCE_WHOOP
	del := func(src biometricsv1.Source, id string, when time.Time) store.Op {
		return store.Op{Delete: &store.Delete{Key: record.Key{UserID: "u1", Source: src, VendorRecordID: id}, DeletedAt: when}}
	}
	res, _, err := st.Apply(ctx, []store.Op{
		upsertAt(t, hk, "u1", "x", 70, at, at),                         // inserted
		del(hk, "x", time.Time{}),                                      // deleted
		upsertAt(t, hk, "u1", "x", 70, at, at),                         // the retried push
		upsertAt(t, whoop, "u1", "w", 60, at, at.Add(time.Hour)),       // inserted
		upsertAt(t, whoop, "u1", "w", 61, at, at),                      // older fetch: stale
		del(whoop, "w", at.Add(2*time.Hour)),                           // deleted
		upsertAt(t, whoop, "u1", "w", 62, at, at.Add(2*time.Hour)),     // not after the delete
		upsertAt(t, whoop, "u1", "w", 63, at, at.Add(3*time.Hour)),     // re-created
		upsertAt(t, whoop, "u1", "w", 64, at, at.Add(150*time.Minute)), // older than the re-creation
	})
	require.NoError(t, err)
	type outcome struct {
		status  persistencev1.WriteStatus
		reason  string
		version int64
	}
	got := make([]outcome, len(res))
	for i, r := range res {
		got[i] = outcome{r.Status, r.Reason, r.Version}
	}
	ins, upd, rej := persistencev1.WriteStatus_WRITE_STATUS_INSERTED, persistencev1.WriteStatus_WRITE_STATUS_UPDATED, persistencev1.WriteStatus_WRITE_STATUS_REJECTED
	require.Equal(t, []outcome{
		{ins, "", 1}, {0, "", 2}, {rej, store.ReasonRecordDeleted, 2},
		{ins, "", 1}, {rej, store.ReasonStaleVersion, 1}, {0, "", 2}, {rej, store.ReasonRecordDeleted, 2},
		{upd, "", 3}, {rej, store.ReasonStaleVersion, 3},
	}, got)
	require.Equal(t, persistencev1.DeleteStatus_DELETE_STATUS_DELETED, res[1].DeleteStatus)
	require.Equal(t, 1, count(t, st, `SELECT count(*) FROM readings WHERE user_id = 'u1'`))
	require.Equal(t, 1, count(t, st, `SELECT count(*) FROM latest WHERE user_id = 'u1' AND value = 63`))
	// u1's five events, in one run.
	require.Equal(t, 5, count(t, st, `SELECT sum(event_count) FROM outbox WHERE key = 'u1'`))
	require.Equal(t, 1, count(t, st, `SELECT count(*) FROM outbox WHERE key = 'u1' AND payload_type = 3`))
	require.Equal(t, 1, count(t, st, `SELECT count(*) FROM records WHERE vendor_record_id = 'x' AND deleted AND deleted_at IS NOT NULL`))
	require.Equal(t, 1, count(t, st, `SELECT count(*) FROM records WHERE vendor_record_id = 'w' AND NOT deleted
		AND deleted_at IS NULL AND occurred_at = $1`, at.Add(3*time.Hour)))
}

// TestReceivedAtFollowsCommitOrder: an event's received_at is stamped
// under the user's lock, so of two writes of one user the one committed
// later has the later received_at (consumers and topiccheck order a user's
// events by it). Write A covers users x and y and waits for x's lock, held
// here, before it can take y's; write B of y alone commits meanwhile. A,
// committed second, must not carry the earlier stamp.
func TestReceivedAtFollowsCommitOrder(t *testing.T) {
	t.Parallel()
	st := open(t)
	ctx := context.Background()
	y := "order-y"
	x := ""
	for i := 0; x == ""; i++ {
		if c := fmt.Sprintf("order-x%d", i); store.UserLockKey(c) < store.UserLockKey(y) {
			x = c
		}
	}
	at := time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)
	opsA := []store.Op{upsert(t, x, "a-x", "recovery_score", 50, at), upsert(t, y, "a-y", "recovery_score", 51, at)}
	opsB := []store.Op{upsert(t, y, "b-y", "recovery_score", 52, at)}

	holder, err := st.Pool().Begin(ctx)
	require.NoError(t, err)
	defer func() { _ = holder.Rollback(ctx) }()
	_, err = holder.Exec(ctx, `SELECT pg_advisory_xact_lock($1)`, store.UserLockKey(x))
	require.NoError(t, err)

	doneA := make(chan error, 1)
	go func() {
		_, _, err := st.Apply(ctx, opsA)
		doneA <- err
	}()
	require.Eventually(t, func() bool {
		return count(t, st, `SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
			AND database = (SELECT oid FROM pg_database WHERE datname = current_database())`) > 0
	}, 10*time.Second, 5*time.Millisecond, "write A never waited for x's lock")
	_, _, err = st.Apply(ctx, opsB)
	require.NoError(t, err)
	require.NoError(t, holder.Rollback(ctx))
	require.NoError(t, <-doneA)

	var later bool
	require.NoError(t, st.Pool().QueryRow(ctx, `SELECT a.received_at > b.received_at FROM events a, events b
		WHERE a.vendor_record_id = 'a-y' AND b.vendor_record_id = 'b-y'`).Scan(&later))
	require.True(t, later, "the write committed second carries the earlier received_at")
}
