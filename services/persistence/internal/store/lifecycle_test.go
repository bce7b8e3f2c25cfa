package store_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	"github.com/biobridge/bridge/services/persistence/internal/record"
	"github.com/biobridge/bridge/services/persistence/internal/store"
)

// userRows counts, per table of the schema, the rows that mention user in
// any text column (found through information_schema, so a table added
// later is covered without touching this test).
func userRows(t *testing.T, st *store.Store, user string) map[string]int {
	t.Helper()
	ctx := context.Background()
	rows, err := st.Pool().Query(ctx, `
		SELECT c.table_name, c.column_name FROM information_schema.columns c
		JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
		WHERE c.table_schema = $1 AND t.table_type = 'BASE TABLE'
		  AND c.data_type IN ('text', 'ARRAY', 'jsonb', 'character varying')`, store.Schema)
	require.NoError(t, err)
	type col struct{ table, column string }
	var cols []col
	for rows.Next() {
		var c col
		require.NoError(t, rows.Scan(&c.table, &c.column))
		cols = append(cols, c)
	}
	require.NoError(t, rows.Err())
	require.NotEmpty(t, cols)
	out := map[string]int{}
	for _, c := range cols {
		n := count(t, st, fmt.Sprintf(`SELECT count(*) FROM %s.%q WHERE %q::text LIKE '%%' || $1 || '%%'`, store.Schema, c.table, c.column), user)
		if n > 0 {
			out[c.table+"."+c.column] += n
		}
	}
	return out
}

// TestEraseUser: every row about the user goes, other users keep theirs,
// past audit entries stay under the pseudonym, one user_erased event is
// queued after the user's connection events, later writes are refused,
// and a second erasure changes nothing.
func TestEraseUser(t *testing.T) {
	t.Parallel()
	st := open(t)
	ctx := context.Background()
	now := time.Now().UTC()
	old := time.Date(2019, 3, 14, 0, 0, 0, 0, time.UTC)
	const user, other = "erase-me", "keep-me"

	_, _, err := st.Apply(ctx, []store.Op{
		upsert(t, user, "r1", "heart_rate_bpm", 60, now.Add(-time.Hour)),
		upsert(t, user, "r2", "heart_rate_bpm", 61, old),
		upsert(t, user, "r3", "steps", 1000, now),
		upsert(t, other, "r1", "heart_rate_bpm", 70, now),
		{Delete: &store.Delete{Key: record.Key{UserID: user, Source: biometricsv1.Source_SOURCE_HEALTHKIT, VendorRecordID: "gone"}}},
	})
	require.NoError(t, err)
	_, err = st.AppendConnectionEvents(ctx, []store.ConnectionEvent{
		{Event: &biometricsv1.ConnectionEvent{UserId: user, Vendor: "whoop", Type: biometricsv1.ConnectionEventType_CONNECTION_EVENT_TYPE_CONNECTED, Sequence: 1}},
		{Event: &biometricsv1.ConnectionEvent{UserId: user, Vendor: "whoop", Type: biometricsv1.ConnectionEventType_CONNECTION_EVENT_TYPE_BACKFILL_COMPLETED, Sequence: 2}},
	})
	require.NoError(t, err)
	require.NoError(t, st.InsertAudit(ctx, []store.AuditEntry{{At: now, Caller: "agents", UserID: user, Method: "GetLatest"}}))
	require.NotEmpty(t, userRows(t, st, user))

	out, err := st.EraseUser(ctx, user, "operator")
	require.NoError(t, err)
	require.True(t, out.Erased)
	require.EqualValues(t, 4, out.Deleted["records"])

	// The only row left that names the user is the user_erased outbox
	// entry itself (the Kafka key) and the key's head pointing at it,
	// until the publisher sends it.
	require.Equal(t, map[string]int{"outbox.key": 1, "outbox_heads.key": 1}, userRows(t, st, user))
	var payload []byte
	require.NoError(t, st.Pool().QueryRow(ctx, `SELECT payload FROM outbox WHERE key = $1`, user).Scan(&payload))
	var ev biometricsv1.ConnectionEvent
	require.NoError(t, proto.Unmarshal(payload, &ev))
	require.Equal(t, biometricsv1.ConnectionEventType_CONNECTION_EVENT_TYPE_USER_ERASED, ev.GetType())
	require.EqualValues(t, 3, ev.GetSequence(), "user_erased follows the user's connection events")
	require.Equal(t, out.EventID, ev.GetEventId())

	// The other user is untouched.
	require.Equal(t, 1, count(t, st, `SELECT count(*) FROM readings WHERE user_id = $1`, other))
	require.Equal(t, 1, count(t, st, `SELECT count(*) FROM latest WHERE user_id = $1`, other))

	// Audit: the old entry and the erasure's own, both under the pseudonym.
	require.Equal(t, 2, count(t, st, `SELECT count(*) FROM audit_log WHERE user_id LIKE 'u\_%'`))
	require.Equal(t, 1, count(t, st, `SELECT count(*) FROM audit_log WHERE caller = 'operator' AND method = 'DeleteUserData'`))

	// Late data is refused and stores nothing.
	res, _, err := st.Apply(ctx, []store.Op{
		upsert(t, user, "r1", "heart_rate_bpm", 60, now.Add(-time.Hour)),
		{Delete: &store.Delete{Key: record.Key{UserID: user, Source: biometricsv1.Source_SOURCE_HEALTHKIT, VendorRecordID: "late"}}},
	})
	require.NoError(t, err)
	require.Equal(t, persistencev1.WriteStatus_WRITE_STATUS_REJECTED, res[0].Status)
	require.Equal(t, store.ReasonUserErased, res[0].Reason)
	require.Equal(t, persistencev1.DeleteStatus_DELETE_STATUS_NOT_FOUND, res[1].DeleteStatus)
	_, err = st.AppendConnectionEvents(ctx, []store.ConnectionEvent{
		{Event: &biometricsv1.ConnectionEvent{UserId: user, Vendor: "oura", Type: biometricsv1.ConnectionEventType_CONNECTION_EVENT_TYPE_REVOKED}},
	})
	require.NoError(t, err)
	require.NoError(t, st.InsertAudit(ctx, []store.AuditEntry{{At: now, Caller: "agents", UserID: user, Method: "GetLatest"}}))
	require.Equal(t, map[string]int{"outbox.key": 1, "outbox_heads.key": 1}, userRows(t, st, user))

	// Again: a no-op.
	again, err := st.EraseUser(ctx, user, "operator")
	require.NoError(t, err)
	require.False(t, again.Erased)
	require.Equal(t, 1, count(t, st, `SELECT count(*) FROM outbox WHERE key = $1`, user))
	erased, err := st.IsErased(ctx, user)
	require.NoError(t, err)
	require.True(t, erased)
}

// TestHealthKitDeleteOfUnknownSampleLeavesTombstone: deleting a sample the
// bridge never stored still records a tombstone, so the sample's late or
// retried push is refused instead of stored.
func TestHealthKitDeleteOfUnknownSampleLeavesTombstone(t *testing.T) {
	t.Parallel()
	st := open(t)
	ctx := context.Background()
	key := record.Key{UserID: "hk", Source: biometricsv1.Source_SOURCE_HEALTHKIT, VendorRecordID: "never-stored"}
	res, _, err := st.Apply(ctx, []store.Op{{Delete: &store.Delete{Key: key}}})
	require.NoError(t, err)
	require.Equal(t, persistencev1.DeleteStatus_DELETE_STATUS_NOT_FOUND, res[0].DeleteStatus)
	require.Zero(t, count(t, st, `SELECT count(*) FROM outbox`), "nothing to publish about a sample nobody saw")

	ev, _, reason, _ := record.Normalize(&persistencev1.EventInput{
		UserId: key.UserID, Source: key.Source, Kind: "HKQuantityTypeIdentifierHeartRate", VendorRecordId: key.VendorRecordID,
		OccurredAt: timestamppb.New(time.Now().Add(time.Hour)),
		Readings:   []*biometricsv1.Reading{{Metric: "heart_rate_bpm", Value: 70, ObservedAt: timestamppb.Now()}},
	})
	require.Empty(t, reason)
	res, _, err = st.Apply(ctx, []store.Op{{Upsert: &ev}})
	require.NoError(t, err)
	require.Equal(t, persistencev1.WriteStatus_WRITE_STATUS_REJECTED, res[0].Status)
	require.Equal(t, store.ReasonRecordDeleted, res[0].Reason)
	require.Zero(t, count(t, st, `SELECT count(*) FROM readings WHERE user_id = 'hk'`))

	// A repeated delete is an ordinary "already deleted"; a vendor record
	// never stored gets no tombstone (vendors can re-create ids).
	res, _, err = st.Apply(ctx, []store.Op{
		{Delete: &store.Delete{Key: key}},
		{Delete: &store.Delete{Key: record.Key{UserID: "hk", Source: biometricsv1.Source_SOURCE_WHOOP, VendorRecordID: "x"}}},
	})
	require.NoError(t, err)
	require.Equal(t, persistencev1.DeleteStatus_DELETE_STATUS_ALREADY_DELETED, res[0].DeleteStatus)
	require.Equal(t, persistencev1.DeleteStatus_DELETE_STATUS_NOT_FOUND, res[1].DeleteStatus)
	require.Equal(t, 1, count(t, st, `SELECT count(*) FROM records WHERE user_id = 'hk'`))
}

// TestRetentionDropsOldPartitionsOnly: with a six-month policy, monthly
// partitions whose whole month is older are dropped, newer ones stay,
// default partitions stay, and latest values survive the readings they
// came from.
func TestRetentionDropsOldPartitionsOnly(t *testing.T) {
	t.Parallel()
	st := open(t)
	ctx := context.Background()
	now := time.Now().UTC()
	thisMonth := time.Date(now.Year(), now.Month(), 1, 0, 0, 0, 0, time.UTC)
	var ops []store.Op
	for i := 1; i <= 12; i++ {
		ops = append(ops, upsert(t, "ret", fmt.Sprintf("m%d", i), "heart_rate_bpm", float64(50+i), thisMonth.AddDate(0, -i, 3)))
	}
	// The only steps reading is a year old: it is the latest steps value.
	ops = append(ops, upsert(t, "ret", "steps-old", "steps", 1234, thisMonth.AddDate(0, -12, 5)))
	_, _, err := st.Apply(ctx, ops)
	require.NoError(t, err)
	require.NoError(t, st.EnsurePartitions(ctx, now, 3))
	require.NoError(t, st.InsertAudit(ctx, []store.AuditEntry{{At: thisMonth.AddDate(0, -8, 1), Caller: "agents", UserID: "ret", Method: "GetLatest"}}))
	require.NoError(t, st.EnsurePartitions(ctx, now, 3))

	policy := store.Retention{Readings: 183 * 24 * time.Hour} // about six months
	dropped, err := st.DropExpiredPartitions(ctx, now, policy)
	require.NoError(t, err)
	var names []string
	for _, d := range dropped {
		require.Equal(t, "readings", d.Table)
		names = append(names, d.Partition)
	}
	require.NotEmpty(t, names)

	cutoff := now.Add(-policy.Readings)
	kept := 0
	for i := 1; i <= 12; i++ {
		m := thisMonth.AddDate(0, -i, 0)
		name := fmt.Sprintf("readings_p%04d_%02d", m.Year(), int(m.Month()))
		exists := count(t, st, `SELECT count(*) FROM pg_class WHERE relname = $1`, name) == 1
		expired := !m.AddDate(0, 1, 0).After(cutoff)
		require.Equal(t, !expired, exists, "%s (expired=%v)", name, expired)
		require.Equal(t, expired, contains(names, name), name)
		if !expired {
			kept++
		}
	}
	require.GreaterOrEqual(t, kept, 5)
	// Readings of kept months are still there; dropped ones are gone.
	require.Equal(t, kept, count(t, st, `SELECT count(*) FROM readings WHERE user_id = 'ret' AND metric = 'heart_rate_bpm'`))
	require.Zero(t, count(t, st, `SELECT count(*) FROM readings WHERE metric = 'steps'`))
	// The latest values survive, the year-old steps value included.
	require.Equal(t, 1234, count(t, st, `SELECT value::int FROM latest WHERE user_id = 'ret' AND metric = 'steps'`))
	require.Equal(t, 51, count(t, st, `SELECT value::int FROM latest WHERE user_id = 'ret' AND metric = 'heart_rate_bpm'`))
	// Events and audit have no policy here: untouched.
	require.Equal(t, 1, count(t, st, `SELECT count(*) FROM audit_log`))
	require.Equal(t, 1, count(t, st, `SELECT count(*) FROM pg_class WHERE relname = 'readings_default'`))

	// A second run finds nothing more to drop.
	dropped, err = st.DropExpiredPartitions(ctx, now, policy)
	require.NoError(t, err)
	require.Empty(t, dropped)
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}
