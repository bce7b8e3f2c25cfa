package store_test

import (
	"context"
	"fmt"
	"math"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	"github.com/biobridge/bridge/pkg/outboxrun"
	"github.com/biobridge/bridge/services/persistence/internal/record"
	"github.com/biobridge/bridge/services/persistence/internal/store"
)

// bulkScript is a sequence of writes that goes through every branch of a
// large write: new records, duplicates and second versions within one
// push, updates of stored records (their readings replaced), older
// readings that must not lower latest, deletions, a HealthKit tombstone
// of a sample never stored, a multi-reading vendor record, and records of
// a second user.
func bulkScript(t *testing.T) [][]store.Op {
	t.Helper()
	at := time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)
	hk, whoop := biometricsv1.Source_SOURCE_HEALTHKIT, biometricsv1.Source_SOURCE_WHOOP
	del := func(user string, src biometricsv1.Source, id string) store.Op {
		return store.Op{Delete: &store.Delete{Key: record.Key{UserID: user, Source: src, VendorRecordID: id}, DeletedAt: at.Add(time.Hour)}}
	}
	multi := func(user, id string, v float64, when time.Time) store.Op {
		ev, _, reason, _ := record.Normalize(&persistencev1.EventInput{
			UserId: user, Source: whoop, Kind: "recovery", VendorRecordId: id, OccurredAt: timestamppb.New(when),
			Readings: []*biometricsv1.Reading{
				{Metric: "heart_rate_bpm", Value: v, ObservedAt: timestamppb.New(when)},
				{Metric: "hrv_rmssd_ms", Value: v / 2, ObservedAt: timestamppb.New(when)},
				{Metric: "heart_rate_bpm", Value: v + 1, ObservedAt: timestamppb.New(when.Add(-time.Minute))},
			},
		})
		require.Empty(t, reason)
		return store.Op{Upsert: &ev}
	}
	var first []store.Op
	for i := range 40 {
		user := fmt.Sprintf("u%d", i%2)
		first = append(first, upsertAt(t, hk, user, fmt.Sprintf("s%d", i), float64(60+i), at.Add(time.Duration(i)*time.Second), at))
	}
	first = append(first,
		upsertAt(t, hk, "u0", "s0", 60, at, at),                                      // the same sample twice in one push
		upsertAt(t, hk, "u0", "s2", 99, at.Add(2*time.Second), at),                   // a second version in the same push
		multi("u0", "w1", 50, at.Add(-time.Hour)),                                    // a multi-reading record
		del("u1", hk, "never-stored"),                                                // tombstone of an unknown sample
		upsertAt(t, hk, "u1", "never-stored", 70, at.Add(time.Hour), at),             // refused: record_deleted
		upsertAt(t, whoop, "u1", "w2", 80, at.Add(-2*time.Hour), at.Add(-time.Hour)), // a vendor record
	)
	var second []store.Op
	for i := range 20 {
		user := fmt.Sprintf("u%d", i%2)
		// Older readings of new samples: latest must not go back.
		second = append(second, upsertAt(t, hk, user, fmt.Sprintf("old%d", i), float64(100+i), at.Add(-time.Duration(i+1)*time.Minute), at))
	}
	second = append(second,
		upsertAt(t, hk, "u0", "s4", 64, at.Add(4*time.Second), at),                   // duplicate of a stored sample
		upsertAt(t, hk, "u1", "s5", 120, at.Add(5*time.Second), at.Add(time.Minute)), // new content for a stored sample
		multi("u0", "w1", 52, at), // replaces the stored readings
		upsertAt(t, whoop, "u1", "w2", 81, at.Add(-2*time.Hour), at.Add(-2*time.Hour)), // stale
		del("u0", hk, "s38"),     // deletes the newest reading of u0: latest falls back
		del("u1", hk, "s7"),      // an older one
		del("u1", hk, "s7"),      // already deleted
		del("u1", whoop, "nope"), // not found
	)
	return [][]store.Op{first, second}
}

// TestBulkAndSmallWritesStoreTheSameRows runs the same writes through a
// store that COPYs every write and one that never does: the results and
// every stored row (but for generated ids and times) must be the same.
func TestBulkAndSmallWritesStoreTheSameRows(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	bulk, small := open(t), open(t)
	store.SetCopyThreshold(bulk, 1)
	store.SetCopyThreshold(small, math.MaxInt)
	for step, ops := range bulkScript(t) {
		var outs [2][]string
		for j, st := range []*store.Store{bulk, small} {
			res, changes, err := st.Apply(ctx, ops)
			require.NoError(t, err, "step %d", step)
			for i, r := range res {
				outs[j] = append(outs[j], fmt.Sprintf("%d: %v %v v%d %s", i, r.Status, r.DeleteStatus, r.Version, r.Reason))
			}
			for _, c := range changes {
				outs[j] = append(outs[j], fmt.Sprintf("change %s seq %d set %d removed %v", c.UserID, c.Seq, len(c.Set), c.Removed))
			}
		}
		require.Equal(t, outs[1], outs[0], "results of step %d", step)
	}
	queries := []string{
		`SELECT user_id, metric, observed_at, source, vendor_record_id, seq, value, start_time, device_name, device_model, device_bundle_id
		 FROM readings ORDER BY 1, 2, 3, 4, 5, 6`,
		// Each reading belongs to its record's current version.
		`SELECT count(*) FROM readings r JOIN records c USING (user_id, source, vendor_record_id) WHERE r.event_id = c.event_id`,
		`SELECT user_id, source, vendor_record_id, kind, version, content_hash, deleted, metrics, observed_min, observed_max,
		        occurred_at, deleted_at, created_at = updated_at
		 FROM records ORDER BY 1, 2, 3`,
		`SELECT e.user_id, e.source, e.vendor_record_id, e.kind, e.version, e.operation, e.occurred_at, e.content_hash, e.reading_count,
		        e.event_id = c.event_id
		 FROM events e JOIN records c USING (user_id, source, vendor_record_id) ORDER BY 1, 2, 3, 5`,
		`SELECT ` + "user_id, metric, observed_at, source, vendor_record_id, seq, value" + ` FROM latest ORDER BY 1, 2`,
		`SELECT user_id, seq FROM user_commits ORDER BY 1`,
		`SELECT topic, key, payload_type, traceparent, event_count FROM outbox ORDER BY id`,
	}
	for _, q := range queries {
		require.Equal(t, dump(t, small, q), dump(t, bulk, q), q)
	}
	// The outbox payloads carry the same events, in the same order per
	// user, but for the event ids and receive times.
	require.Equal(t, outboxEvents(t, small), outboxEvents(t, bulk))

	// Latest never went back to the older readings of the second write,
	// and fell back to the newest remaining one after the deletion.
	at := time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)
	require.Equal(t, 1, count(t, bulk, `SELECT count(*) FROM latest WHERE user_id = 'u0' AND metric = 'heart_rate_bpm'
		AND vendor_record_id = 's36' AND observed_at = $1`, at.Add(36*time.Second)))
	require.Equal(t, 1, count(t, bulk, `SELECT count(*) FROM latest WHERE user_id = 'u1' AND metric = 'heart_rate_bpm'
		AND vendor_record_id = 's39' AND observed_at = $1`, at.Add(39*time.Second)))
	// The large writes did COPY: 40 new samples are more than enough.
	require.Equal(t, 1, count(t, bulk, `SELECT count(*) FROM records WHERE vendor_record_id = 'never-stored' AND deleted`))
}

func dump(t *testing.T, st *store.Store, q string) []string {
	t.Helper()
	rows, err := st.Pool().Query(context.Background(), q)
	require.NoError(t, err)
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (string, error) {
		v, err := r.Values()
		return fmt.Sprint(v), err
	})
	require.NoError(t, err)
	return out
}

func outboxEvents(t *testing.T, st *store.Store) []string {
	t.Helper()
	var out []string
	for _, p := range outboxPayloads(t, st) {
		var ev biometricsv1.BiometricEvent
		require.NoError(t, proto.Unmarshal(p, &ev))
		ev.EventId, ev.ReceivedAt = "", nil
		out = append(out, fmt.Sprint(&ev))
	}
	return out
}

// outboxPayloads returns the stored event payloads of the outbox in id
// order, each run's events in their order.
func outboxPayloads(t *testing.T, st *store.Store) [][]byte {
	t.Helper()
	rows, err := st.Pool().Query(context.Background(), `SELECT payload_type, payload FROM outbox ORDER BY id`)
	require.NoError(t, err)
	var out [][]byte
	var typ int16
	var payload []byte
	_, err = pgx.ForEachRow(rows, []any{&typ, &payload}, func() error {
		if typ != outboxrun.PayloadType {
			out = append(out, payload)
			return nil
		}
		events, err := outboxrun.Split(payload)
		out = append(out, events...)
		return err
	})
	require.NoError(t, err)
	return out
}
