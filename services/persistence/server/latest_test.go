package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
)

// sample is one reading delivered as its own record (HealthKit style).
type sample struct {
	id     string
	metric string
	value  float64
	at     time.Time
}

// TestShuffledDeliveryKeepsNewestAndDeleteRestoresPrevious delivers 1,000
// readings for one user in random order, from several concurrent callers
// and in batches of random size. Whatever the order, each metric's latest
// value must be the newest observation, in Redis and in PostgreSQL; and
// deleting the record that holds it must bring back the one before.
func TestShuffledDeliveryKeepsNewestAndDeleteRestoresPrevious(t *testing.T) {
	t.Parallel()
	e := start(t)
	user := newUser()
	metrics := []string{"heart_rate_bpm", "hrv_sdnn_ms", "respiratory_rate_brpm", "spo2_pct"}
	base := time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC)
	rng := rand.New(rand.NewPCG(1, 2))
	var samples []sample
	for i := range 1000 {
		m := metrics[i%len(metrics)]
		samples = append(samples, sample{
			id:     fmt.Sprintf("hk-%04d", i),
			metric: m,
			value:  float64(50 + i%10), // valid for every metric used
			// Spread over two months so several partitions are involved.
			at: base.Add(time.Duration(i) * 97 * time.Minute),
		})
	}
	newest := map[string][]sample{} // per metric, sorted newest first
	for _, s := range samples {
		newest[s.metric] = append(newest[s.metric], s)
	}
	for m := range newest {
		list := newest[m]
		for i, j := 0, len(list)-1; i < j; i, j = i+1, j-1 {
			list[i], list[j] = list[j], list[i]
		}
	}
	rng.Shuffle(len(samples), func(i, j int) { samples[i], samples[j] = samples[j], samples[i] })

	// Four callers, each sending its share in batches of 1..25 events.
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(w), 7))
			mine := samples[w*250 : (w+1)*250]
			for len(mine) > 0 {
				n := min(1+r.IntN(25), len(mine))
				var evs []*persistencev1.EventInput
				for _, s := range mine[:n] {
					evs = append(evs, event(user, s.id, reading(s.metric, s.value, s.at)))
				}
				mine = mine[n:]
				resp, err := e.persistence.WriteEvents(e.ingestCtx(), &persistencev1.WriteEventsRequest{Events: evs})
				if !noErr(t, err) {
					return
				}
				for _, r := range resp.GetResults() {
					if r.GetStatus() != persistencev1.WriteStatus_WRITE_STATUS_INSERTED {
						t.Errorf("event %d: status %s", r.GetIndex(), r.GetStatus())
					}
				}
			}
		})
	}
	wg.Wait()
	require.Equal(t, 1000, e.count(`SELECT count(*) FROM readings WHERE user_id = $1`, user))

	check := func(depth map[string]int) {
		t.Helper()
		got := e.latest(user)
		require.Len(t, got, len(metrics))
		for _, m := range metrics {
			want := newest[m][depth[m]]
			require.Equal(t, want.id, got[m].GetVendorRecordId(), m)
			require.True(t, want.at.Equal(got[m].GetObservedAt().AsTime()), m)
			require.Equal(t, want.value, got[m].GetValue(), m)
		}
		e.requireCacheMatchesPostgres(user)
	}
	check(map[string]int{})

	// Delete the newest heart rate record: the one before becomes latest.
	// Then the newest and second newest spo2: the third is latest.
	del := func(ids ...string) {
		var refs []*persistencev1.RecordRef
		for _, id := range ids {
			refs = append(refs, &persistencev1.RecordRef{UserId: user, Source: biometricsv1.Source_SOURCE_HEALTHKIT, VendorRecordId: id})
		}
		resp, err := e.persistence.DeleteRecords(e.ingestCtx(), &persistencev1.DeleteRecordsRequest{Records: refs})
		require.NoError(t, err)
		for _, r := range resp.GetResults() {
			require.Equal(t, persistencev1.DeleteStatus_DELETE_STATUS_DELETED, r.GetStatus())
			require.NotEmpty(t, r.GetEventId())
		}
	}
	del(newest["heart_rate_bpm"][0].id)
	check(map[string]int{"heart_rate_bpm": 1})
	del(newest["spo2_pct"][0].id, newest["spo2_pct"][1].id)
	check(map[string]int{"heart_rate_bpm": 1, "spo2_pct": 2})

	// Deleting again changes nothing; an unknown record is not found.
	resp, err := e.persistence.DeleteRecords(e.ingestCtx(), &persistencev1.DeleteRecordsRequest{Records: []*persistencev1.RecordRef{
		{UserId: user, Source: biometricsv1.Source_SOURCE_HEALTHKIT, VendorRecordId: newest["spo2_pct"][0].id},
		{UserId: user, Source: biometricsv1.Source_SOURCE_HEALTHKIT, VendorRecordId: "no-such-record"},
	}})
	require.NoError(t, err)
	require.Equal(t, persistencev1.DeleteStatus_DELETE_STATUS_ALREADY_DELETED, resp.GetResults()[0].GetStatus())
	require.Equal(t, persistencev1.DeleteStatus_DELETE_STATUS_NOT_FOUND, resp.GetResults()[1].GetStatus())
	check(map[string]int{"heart_rate_bpm": 1, "spo2_pct": 2})

	// The deletions were published as DELETE events, after the upserts.
	entries := e.drainOutbox()
	require.Len(t, entries, 1003)
	var deletes int
	for _, en := range entries {
		if en.GetEvent().GetOperation() == biometricsv1.Operation_OPERATION_DELETE {
			deletes++
			require.EqualValues(t, 2, en.GetEvent().GetVersion())
			require.Empty(t, en.GetEvent().GetReadings())
		}
	}
	require.Equal(t, 3, deletes)
	// The tombstones keep the history: three records with two versions,
	// and the unknown HealthKit sample's tombstone (one version, never
	// published) that keeps a late push of it out.
	require.Equal(t, 1004, e.count(`SELECT count(*) FROM events WHERE user_id = $1`, user))
	require.Equal(t, 4, e.count(`SELECT count(*) FROM records WHERE user_id = $1 AND deleted`, user))
}

// TestDeletingTheOnlyRecordRemovesTheMetric checks the REMOVED path: no
// value is left, so the metric disappears from GetLatest and the cache.
func TestDeletingTheOnlyRecordRemovesTheMetric(t *testing.T) {
	t.Parallel()
	e := start(t)
	user := newUser()
	at := time.Date(2026, 11, 1, 7, 0, 0, 0, time.UTC)
	e.write(vendorEvent(user, "sleep-1", at, reading("sleep_score", 80, at), reading("heart_rate_bpm", 50, at)))
	e.write(event(user, "hr-1", reading("heart_rate_bpm", 55, at.Add(-time.Hour))))
	require.Len(t, e.latest(user), 2)

	_, err := e.persistence.DeleteRecords(e.ingestCtx(), &persistencev1.DeleteRecordsRequest{Records: []*persistencev1.RecordRef{
		{UserId: user, Source: biometricsv1.Source_SOURCE_WHOOP, VendorRecordId: "sleep-1", DeletedAt: ts(at.Add(time.Hour))},
	}})
	require.NoError(t, err)
	got := e.latest(user)
	require.Len(t, got, 1)
	require.Equal(t, 55.0, got["heart_rate_bpm"].GetValue())
	e.requireCacheMatchesPostgres(user)

	// The record comes back (re-created at the source after the delete):
	// a new version.
	res := e.write(vendorEvent(user, "sleep-1", at.Add(2*time.Hour), reading("sleep_score", 80, at), reading("heart_rate_bpm", 50, at)))
	require.Equal(t, persistencev1.WriteStatus_WRITE_STATUS_UPDATED, res[0].GetStatus())
	require.EqualValues(t, 3, res[0].GetVersion())
	require.Len(t, e.latest(user), 2)
	e.requireCacheMatchesPostgres(user)
}

// TestChangedVersionCanMoveLatestBackwards: a new version of the record
// that held the latest value moves its observation earlier; the latest
// value must follow (an observed_at compare-and-set alone would keep the
// stale one).
func TestChangedVersionCanMoveLatestBackwards(t *testing.T) {
	t.Parallel()
	e := start(t)
	user := newUser()
	at := time.Date(2026, 11, 1, 7, 0, 0, 0, time.UTC)
	e.write(event(user, "a", reading("heart_rate_bpm", 60, at)))
	e.write(event(user, "b", reading("heart_rate_bpm", 70, at.Add(time.Hour))))
	require.Equal(t, 70.0, e.latest(user)["heart_rate_bpm"].GetValue())

	res := e.write(event(user, "b", reading("heart_rate_bpm", 71, at.Add(-time.Hour))))
	require.Equal(t, persistencev1.WriteStatus_WRITE_STATUS_UPDATED, res[0].GetStatus())
	got := e.latest(user)["heart_rate_bpm"]
	require.Equal(t, 60.0, got.GetValue())
	require.Equal(t, "a", got.GetVendorRecordId())
	e.requireCacheMatchesPostgres(user)
}

func TestRecordIdentityIsScopedPerUser(t *testing.T) {
	t.Parallel()
	e := start(t)
	alice, bob := newUser(), newUser()
	at := time.Date(2026, 11, 1, 7, 0, 0, 0, time.UTC)
	a := e.write(event(alice, "same-uuid", reading("heart_rate_bpm", 60, at)))
	b := e.write(event(bob, "same-uuid", reading("heart_rate_bpm", 90, at)))
	require.Equal(t, persistencev1.WriteStatus_WRITE_STATUS_INSERTED, a[0].GetStatus())
	require.Equal(t, persistencev1.WriteStatus_WRITE_STATUS_INSERTED, b[0].GetStatus())
	require.Equal(t, 60.0, e.latest(alice)["heart_rate_bpm"].GetValue())
	require.Equal(t, 90.0, e.latest(bob)["heart_rate_bpm"].GetValue())

	// Bob deleting "his" record leaves Alice's alone.
	_, err := e.persistence.DeleteRecords(e.ingestCtx(), &persistencev1.DeleteRecordsRequest{Records: []*persistencev1.RecordRef{
		{UserId: bob, Source: biometricsv1.Source_SOURCE_HEALTHKIT, VendorRecordId: "same-uuid"},
	}})
	require.NoError(t, err)
	require.Equal(t, 60.0, e.latest(alice)["heart_rate_bpm"].GetValue())
	require.Empty(t, e.latest(bob))
}

// requireCacheMatchesPostgres compares the Redis hash with the latest
// table, field by field, once the cache is filled (a read fills it).
func (e *env) requireCacheMatchesPostgres(user string) {
	e.t.Helper()
	if e.rdb == nil {
		return
	}
	e.latest(user) // fills the cache on a miss
	key := e.prefix + "bb:{u:" + user + "}:latest"
	h, err := e.rdb.HGetAll(context.Background(), key).Result()
	require.NoError(e.t, err)
	require.Equal(e.t, "1", h["_ok"], "cache holds a complete snapshot")
	rows, err := e.db.Query(context.Background(), `SELECT metric, value, vendor_record_id, observed_at FROM latest WHERE user_id = $1`, user)
	require.NoError(e.t, err)
	defer rows.Close()
	n := 0
	for rows.Next() {
		var (
			metric, rec string
			value       float64
			at          time.Time
		)
		require.NoError(e.t, rows.Scan(&metric, &value, &rec, &at))
		n++
		var cached struct {
			V float64 `json:"v"`
			T int64   `json:"t"`
			R string  `json:"r"`
		}
		require.NoError(e.t, json.Unmarshal([]byte(h[metric]), &cached), metric)
		require.Equal(e.t, value, cached.V, metric)
		require.Equal(e.t, rec, cached.R, metric)
		require.Equal(e.t, at.UnixMicro(), cached.T, metric)
	}
	require.NoError(e.t, rows.Err())
	require.Equal(e.t, n, len(h)-2, "no extra fields besides _seq and _ok")
}

// noErr reports an error from a goroutine without stopping the test there.
func noErr(t *testing.T, err error) bool {
	t.Helper()
	if err != nil {
		t.Error(err)
		return false
	}
	return true
}
