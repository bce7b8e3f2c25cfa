package ingesttest

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/emulator"
	ingestv1 "github.com/biobridge/bridge/gen/go/biobridge/ingest/v1"
	"github.com/biobridge/bridge/services/devstack/internal/vendorrecords"
	"github.com/biobridge/bridge/services/ingest/server"
)

// storedRecords lists user's records in persistence the same way, and the
// highest version among them. Oura heart-rate samples (one record each)
// are left out: the emulator lists documents only (see heartRateRecords).
func storedRecords(t *testing.T, e *env, user string) ([]string, int) {
	t.Helper()
	rows, err := e.db.Query(context.Background(), `SELECT source, vendor_record_id, version FROM biometrics.records
		WHERE user_id = $1 AND NOT deleted AND kind <> 'heartrate' ORDER BY 1, 2`, user)
	require.NoError(t, err)
	defer rows.Close()
	var out []string
	maxVersion := 0
	for rows.Next() {
		var src, version int
		var id string
		require.NoError(t, rows.Scan(&src, &id, &version))
		name := map[int]string{1: "whoop", 2: "oura"}[src]
		require.NotEmpty(t, name, "source %d", src)
		out = append(out, name+"/"+id)
		maxVersion = max(maxVersion, version)
	}
	require.NoError(t, rows.Err())
	sort.Strings(out)
	return out, maxVersion
}

// heartRateRecords counts user's stored Oura heart-rate samples.
func heartRateRecords(t *testing.T, e *env, user string) int {
	t.Helper()
	var n int
	require.NoError(t, e.db.QueryRow(context.Background(), `SELECT count(*) FROM biometrics.records
		WHERE user_id = $1 AND kind = 'heartrate'`, user).Scan(&n))
	return n
}

func backfills(t *testing.T, e *env, user string) []*ingestv1.Backfill {
	t.Helper()
	resp, err := e.ingestRPC.GetBackfillProgress(svc(opsToken), &ingestv1.GetBackfillProgressRequest{UserId: user})
	require.NoError(t, err)
	return resp.GetBackfills()
}

func completed(bs []*ingestv1.Backfill) int {
	n := 0
	for _, b := range bs {
		if b.GetState() == ingestv1.BackfillState_BACKFILL_STATE_COMPLETED {
			n++
		}
	}
	return n
}

// connectionEvents counts the connection events persistence appended for
// user, by type number.
func connectionEvents(t *testing.T, e *env, user string) map[int]int {
	t.Helper()
	rows, err := e.db.Query(context.Background(), `SELECT type, count(*) FROM biometrics.connection_events WHERE user_id = $1 GROUP BY type`, user)
	require.NoError(t, err)
	defer rows.Close()
	out := map[int]int{}
	for rows.Next() {
		var typ, n int
		require.NoError(t, rows.Scan(&typ, &n))
		out[typ] = n
	}
	require.NoError(t, rows.Err())
	return out
}

// A user connects WHOOP and Oura with five days of history on the vendor
// side (and Oura's date ranges behaving as the live API's do): the backfill
// reads every collection page by page, every record arrives once, progress
// is visible, and each connection ends with a backfill_completed event.
// Reconnecting starts a second backfill that stores nothing twice.
func TestBackfillOnConnect(t *testing.T) {
	t.Parallel()
	e := newEnv(t, options{
		emu: func(c *emulator.Config) { c.OuraDateRangeQuirk, c.OuraPageSize = true, 3 },
		ingest: func(c *server.Config) {
			c.BackfillDays, c.ConnectionSyncInterval = 6, 100*time.Millisecond
		},
	})
	ctx := context.Background()
	_, err := e.emu.AddUser(emulator.UserSpec{Name: "hana"})
	require.NoError(t, err)
	hist, err := e.emu.GenerateHistory(ctx, emulator.HistorySpec{User: "hana", Days: 5})
	require.NoError(t, err)
	want := vendorrecords.Expected(e.emu, "hana")
	// Five days are four or five nights depending on the time of day (the
	// emulator generates no record that ends in the future), so the bound
	// only asks for several pages of every collection.
	require.Greater(t, len(want), 20, "history: %v", hist.Records)

	e.connect("user-h", "whoop", "hana")
	e.connect("user-h", "oura", "hana")
	require.Eventually(t, func() bool { return completed(backfills(t, e, "user-h")) == 2 }, 30*time.Second, 50*time.Millisecond,
		"backfills never completed: %v; jobs %s", backfills(t, e, "user-h"), e.debugJobs())
	got, maxVersion := storedRecords(t, e, "user-h")
	assert.Equal(t, want, got, "every record of the history, nothing else")
	assert.Equal(t, 1, maxVersion)

	var records int64
	for _, b := range backfills(t, e, "user-h") {
		assert.Zero(t, b.GetPagesPending())
		assert.Zero(t, b.GetPagesDead())
		assert.Equal(t, b.GetPagesTotal(), b.GetPagesDone())
		assert.NotNil(t, b.GetCompletedAt())
		assert.WithinDuration(t, b.GetWindowEnd().AsTime().Add(-6*24*time.Hour), b.GetWindowStart().AsTime(), time.Second)
		records += b.GetRecords()
	}
	assert.EqualValues(t, len(want)+heartRateRecords(t, e, "user-h"), records)
	require.Eventually(t, func() bool { return connectionEvents(t, e, "user-h")[4] == 2 }, 10*time.Second, 50*time.Millisecond,
		"one backfill_completed per connection reaches persistence's outbox")
	// Oura pages of three documents: the paging was exercised.
	assert.Greater(t, e.emu.Counters().Oura.APICalls["GET /v2/usercollection/{data_type}"], int64(5))

	// A reconnect is a new generation with its own backfill; everything
	// it reads is already stored.
	e.connect("user-h", "whoop", "hana")
	require.Eventually(t, func() bool { return completed(backfills(t, e, "user-h")) == 3 }, 30*time.Second, 50*time.Millisecond)
	got, maxVersion = storedRecords(t, e, "user-h")
	assert.Equal(t, want, got)
	assert.Equal(t, 1, maxVersion, "a second read of the history is a duplicate, not a new version")
}

// With 30% of webhooks dropped by the vendor, reconciliation reads the
// recent window of every connection once per interval and every record
// arrives.
func TestReconciliationRecoversDroppedWebhooks(t *testing.T) {
	t.Parallel()
	const interval = 3 * time.Second
	e := newEnv(t, options{
		emu: func(c *emulator.Config) { c.Seed = 9 },
		ingest: func(c *server.Config) {
			c.ReconcileInterval, c.ReconcileWindow = interval, 72*time.Hour
		},
	})
	ctx := context.Background()
	e.connect("user-r", "whoop", "rita")
	e.connect("user-r", "oura", "rita")
	require.NoError(t, e.emu.SetFaults(emulator.Faults{WebhookDropRate: 0.3}))
	for i := range 6 {
		start, end := night(48 - 8*i)
		_, err := e.emu.CreateRecord(ctx, emulator.RecordSpec{User: "rita", Vendor: emulator.Whoop, Type: "sleep", Start: start, End: end})
		require.NoError(t, err)
	}
	// Oura days within the window (today and the two days before).
	for i := range 3 {
		day := time.Now().UTC().AddDate(0, 0, -i).Format(time.DateOnly)
		for _, typ := range []string{"daily_sleep", "daily_readiness", "daily_spo2"} {
			_, err := e.emu.CreateRecord(ctx, emulator.RecordSpec{User: "rita", Vendor: emulator.Oura, Type: typ, Day: day})
			require.NoError(t, err)
		}
	}
	e.waitWebhooks()
	created := time.Now()
	want := vendorrecords.Expected(e.emu, "rita")
	require.Len(t, want, 6*2+3*3)
	dropped := e.emu.Counters().Whoop.WebhooksDropped + e.emu.Counters().Oura.WebhooksDropped
	require.Positive(t, dropped, "the vendor dropped webhooks")

	if !assert.Eventually(t, func() bool {
		got, _ := storedRecords(t, e, "user-r")
		return fmt.Sprint(got) == fmt.Sprint(want)
	}, interval+10*time.Second, 100*time.Millisecond, "records never all arrived") {
		got, _ := storedRecords(t, e, "user-r")
		t.Fatalf("stored %d of %d; jobs %s", len(got), len(want), e.debugJobs())
	}
	t.Logf("%d webhooks dropped; every record stored %s after the last was created (interval %s)", dropped,
		time.Since(created).Round(time.Millisecond), interval)
	_, maxVersion := storedRecords(t, e, "user-r")
	assert.Equal(t, 1, maxVersion)
	assert.Positive(t, e.outcomes()["page_stored"], "reconciliation stored what the webhooks missed")
}
