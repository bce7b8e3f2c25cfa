package server_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
)

func TestWriteEventsInsertDuplicateUpdate(t *testing.T) {
	t.Parallel()
	e := start(t)
	user := newUser()
	at := time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)

	first := e.write(event(user, "rec-1", reading("heart_rate_bpm", 61, at), reading("hrv_sdnn_ms", 40, at)))
	require.Equal(t, persistencev1.WriteStatus_WRITE_STATUS_INSERTED, first[0].GetStatus())
	require.EqualValues(t, 1, first[0].GetVersion())

	// Identical content (readings in another order) is a duplicate.
	dup := e.write(event(user, "rec-1", reading("hrv_sdnn_ms", 40, at), reading("heart_rate_bpm", 61, at)))
	require.Equal(t, persistencev1.WriteStatus_WRITE_STATUS_DUPLICATE, dup[0].GetStatus())
	require.Equal(t, first[0].GetEventId(), dup[0].GetEventId())

	changed := e.write(event(user, "rec-1", reading("heart_rate_bpm", 62, at)))
	require.Equal(t, persistencev1.WriteStatus_WRITE_STATUS_UPDATED, changed[0].GetStatus())
	require.EqualValues(t, 2, changed[0].GetVersion())

	require.Equal(t, 2, e.count(`SELECT count(*) FROM events WHERE user_id = $1`, user))
	require.Equal(t, 1, e.count(`SELECT count(*) FROM readings WHERE user_id = $1`, user))
	require.Equal(t, 2, e.count(`SELECT count(*) FROM outbox WHERE key = $1`, user))

	// Each reading carries its event (provenance): the current version's.
	require.Equal(t, 1, e.count(`SELECT count(*) FROM readings WHERE user_id = $1 AND event_id = $2::uuid`, user, changed[0].GetEventId()))

	l := e.latest(user)
	require.Len(t, l, 1, "the old version's hrv reading no longer counts")
	require.Equal(t, 62.0, l["heart_rate_bpm"].GetValue())
	require.Equal(t, "bpm", l["heart_rate_bpm"].GetUnit())
}

// vendorEvent is a WHOOP record version with the source's occurred_at
// (its updated_at).
func vendorEvent(user, recordID string, occurred time.Time, rs ...*biometricsv1.Reading) *persistencev1.EventInput {
	ev := event(user, recordID, rs...)
	ev.Source, ev.Kind, ev.OccurredAt = biometricsv1.Source_SOURCE_WHOOP, "recovery", ts(occurred)
	return ev
}

// TestRetriedPushAfterDeleteIsRejected: a HealthKit push commits, its
// response is lost, the user deletes the sample, then the app retries the
// push. The deleted sample must not come back, whatever its dates.
func TestRetriedPushAfterDeleteIsRejected(t *testing.T) {
	t.Parallel()
	e := start(t)
	user := newUser()
	at := time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)
	older := event(user, "hk-older", reading("heart_rate_bpm", 60, at.Add(-time.Hour)))
	push := event(user, "hk-x", reading("heart_rate_bpm", 72, at))
	push.OccurredAt = ts(at)
	res := e.write(older, push)
	require.Equal(t, persistencev1.WriteStatus_WRITE_STATUS_INSERTED, res[1].GetStatus())
	require.Equal(t, 72.0, e.latest(user)["heart_rate_bpm"].GetValue())

	del, err := e.persistence.DeleteRecords(e.ingestCtx(), delRequest(user, "hk-x"))
	require.NoError(t, err)
	require.Equal(t, persistencev1.DeleteStatus_DELETE_STATUS_DELETED, del.GetResults()[0].GetStatus())
	require.Equal(t, 60.0, e.latest(user)["heart_rate_bpm"].GetValue())
	e.drainOutbox()
	events := e.count(`SELECT count(*) FROM events WHERE user_id = $1`, user)

	// The retry, then the same sample with a later end date: both rejected.
	later := event(user, "hk-x", reading("heart_rate_bpm", 72, at))
	later.OccurredAt = ts(at.Add(24 * time.Hour))
	for _, ev := range []*persistencev1.EventInput{push, later} {
		r := e.write(ev)[0]
		require.Equal(t, persistencev1.WriteStatus_WRITE_STATUS_REJECTED, r.GetStatus())
		require.Equal(t, "record_deleted", r.GetReason())
		require.Empty(t, r.GetEventId())
	}
	l := e.latest(user)["heart_rate_bpm"]
	require.Equal(t, 60.0, l.GetValue())
	require.Equal(t, "hk-older", l.GetVendorRecordId())
	e.requireCacheMatchesPostgres(user)
	require.Empty(t, e.drainOutbox())
	require.Equal(t, events, e.count(`SELECT count(*) FROM events WHERE user_id = $1`, user))
	require.Zero(t, e.count(`SELECT count(*) FROM readings WHERE user_id = $1 AND vendor_record_id = 'hk-x'`, user))
	require.Equal(t, 1, e.count(`SELECT count(*) FROM records WHERE user_id = $1 AND vendor_record_id = 'hk-x'
		AND deleted AND version = 2 AND deleted_at IS NOT NULL`, user))
}

// TestStaleVendorVersionIsRejected: an older fetch of a record (a reconcile
// page fetched before the newer version was written) must not roll it back.
func TestStaleVendorVersionIsRejected(t *testing.T) {
	t.Parallel()
	e := start(t)
	user := newUser()
	at := time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)
	v1 := vendorEvent(user, "cycle-1", at.Add(time.Hour), reading("heart_rate_bpm", 60, at))
	v2 := vendorEvent(user, "cycle-1", at.Add(2*time.Hour), reading("heart_rate_bpm", 61, at))
	require.Equal(t, persistencev1.WriteStatus_WRITE_STATUS_INSERTED, e.write(v1)[0].GetStatus())
	up := e.write(v2)[0]
	require.Equal(t, persistencev1.WriteStatus_WRITE_STATUS_UPDATED, up.GetStatus())
	e.drainOutbox()

	// The older version, alone and behind a newer one in the same batch.
	stale := e.write(v1)[0]
	require.Equal(t, persistencev1.WriteStatus_WRITE_STATUS_REJECTED, stale.GetStatus())
	require.Equal(t, "stale_version", stale.GetReason())
	require.EqualValues(t, 2, stale.GetVersion())
	require.Equal(t, 61.0, e.latest(user)["heart_rate_bpm"].GetValue())
	require.Empty(t, e.drainOutbox())

	v3 := vendorEvent(user, "cycle-1", at.Add(3*time.Hour), reading("heart_rate_bpm", 62, at))
	res := e.write(v3, v1)
	require.Equal(t, persistencev1.WriteStatus_WRITE_STATUS_UPDATED, res[0].GetStatus())
	require.Equal(t, persistencev1.WriteStatus_WRITE_STATUS_REJECTED, res[1].GetStatus())
	require.Equal(t, "stale_version", res[1].GetReason())
	require.Equal(t, 62.0, e.latest(user)["heart_rate_bpm"].GetValue())
	require.Len(t, e.drainOutbox(), 1)

	// Equal time, other content: vendors do not always bump their
	// timestamp, so it is a new version.
	same := vendorEvent(user, "cycle-1", at.Add(3*time.Hour), reading("heart_rate_bpm", 63, at))
	require.Equal(t, persistencev1.WriteStatus_WRITE_STATUS_UPDATED, e.write(same)[0].GetStatus())

	// A duplicate with a newer time keeps that time: content fetched
	// between the two is stale too.
	bumped := vendorEvent(user, "cycle-1", at.Add(5*time.Hour), reading("heart_rate_bpm", 63, at))
	require.Equal(t, persistencev1.WriteStatus_WRITE_STATUS_DUPLICATE, e.write(bumped)[0].GetStatus())
	between := vendorEvent(user, "cycle-1", at.Add(4*time.Hour), reading("heart_rate_bpm", 64, at))
	r := e.write(between)[0]
	require.Equal(t, persistencev1.WriteStatus_WRITE_STATUS_REJECTED, r.GetStatus())
	require.Equal(t, "stale_version", r.GetReason())
	require.Equal(t, 63.0, e.latest(user)["heart_rate_bpm"].GetValue())
	e.requireCacheMatchesPostgres(user)
	require.Len(t, e.drainOutbox(), 1)
	require.Equal(t, 4, e.count(`SELECT count(*) FROM events WHERE user_id = $1`, user))
}

// TestVendorRecreatesAfterDelete: a WHOOP/Oura record deleted at D comes
// back only with an occurred_at strictly after D; a page fetched before the
// delete does not resurrect it.
func TestVendorRecreatesAfterDelete(t *testing.T) {
	t.Parallel()
	e := start(t)
	user := newUser()
	at := time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)
	deletedAt := at.Add(2 * time.Hour)
	require.Equal(t, persistencev1.WriteStatus_WRITE_STATUS_INSERTED,
		e.write(vendorEvent(user, "sleep-1", at, reading("heart_rate_bpm", 55, at)))[0].GetStatus())
	del, err := e.persistence.DeleteRecords(e.ingestCtx(), &persistencev1.DeleteRecordsRequest{Records: []*persistencev1.RecordRef{
		{UserId: user, Source: biometricsv1.Source_SOURCE_WHOOP, VendorRecordId: "sleep-1", DeletedAt: ts(deletedAt)},
	}})
	require.NoError(t, err)
	require.Equal(t, persistencev1.DeleteStatus_DELETE_STATUS_DELETED, del.GetResults()[0].GetStatus())
	require.Empty(t, e.latest(user))
	e.drainOutbox()

	for _, occurred := range []time.Time{at, at.Add(time.Hour), deletedAt} {
		r := e.write(vendorEvent(user, "sleep-1", occurred, reading("heart_rate_bpm", 56, at)))[0]
		require.Equal(t, persistencev1.WriteStatus_WRITE_STATUS_REJECTED, r.GetStatus(), occurred)
		require.Equal(t, "record_deleted", r.GetReason(), occurred)
	}
	require.Empty(t, e.latest(user))
	require.Empty(t, e.drainOutbox())

	back := e.write(vendorEvent(user, "sleep-1", deletedAt.Add(time.Minute), reading("heart_rate_bpm", 57, at)))[0]
	require.Equal(t, persistencev1.WriteStatus_WRITE_STATUS_UPDATED, back.GetStatus())
	require.EqualValues(t, 3, back.GetVersion())
	require.Equal(t, 57.0, e.latest(user)["heart_rate_bpm"].GetValue())
	e.requireCacheMatchesPostgres(user)
	entries := e.drainOutbox()
	require.Len(t, entries, 1)
	require.Equal(t, biometricsv1.Operation_OPERATION_UPSERT, entries[0].GetEvent().GetOperation())
	require.Equal(t, 1, e.count(`SELECT count(*) FROM records WHERE user_id = $1 AND NOT deleted AND deleted_at IS NULL
		AND occurred_at = $2`, user, deletedAt.Add(time.Minute)))
}
