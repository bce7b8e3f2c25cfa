package ingesttest

import (
	"context"
	"encoding/json"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/emulator"
	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	ingestv1 "github.com/biobridge/bridge/gen/go/biobridge/ingest/v1"
	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/services/ingest/server"
)

// A WHOOP user connects through the connect flow; the emulator creates
// sleeps (each with its cycle and recovery) and a workout and delivers
// every webhook twice, shuffled. The readings arrive in the catalog's units
// exactly once; deleting the newest sleep rolls the latest values back.
func TestWhoopEndToEnd(t *testing.T) {
	t.Parallel()
	e := newEnv(t, options{})
	ctx := context.Background()
	e.connect("user-w1", "whoop", "walter")
	require.NoError(t, e.emu.SetFaults(emulator.Faults{WebhookDuplicateRate: 1, WebhookReorder: true}))

	olderStart, olderEnd := night(30)
	_, err := e.emu.CreateRecord(ctx, emulator.RecordSpec{User: "walter", Vendor: emulator.Whoop, Type: "sleep",
		Start: olderStart, End: olderEnd, Values: map[string]float64{
			"recovery_score": 35, "hrv_rmssd_milli": 28.5, "resting_heart_rate": 61,
			"total_light_sleep_time_milli": 12_000_000, "total_slow_wave_sleep_time_milli": 5_000_000,
			"total_rem_sleep_time_milli": 6_000_000, "total_awake_time_milli": 1_800_000,
			"sleep_efficiency_percentage": 88, "sleep_performance_percentage": 81, "respiratory_rate": 15.1,
		}})
	require.NoError(t, err)
	newStart, newEnd := night(6)
	recs, err := e.emu.CreateRecord(ctx, emulator.RecordSpec{User: "walter", Vendor: emulator.Whoop, Type: "sleep",
		Start: newStart, End: newEnd, Values: map[string]float64{
			"recovery_score": 74, "hrv_rmssd_milli": 61.25, "resting_heart_rate": 52, "spo2_percentage": 96.5, "skin_temp_celsius": 33.4,
			"total_light_sleep_time_milli": 14_400_000, "total_slow_wave_sleep_time_milli": 5_400_000,
			"total_rem_sleep_time_milli": 7_200_000, "total_awake_time_milli": 1_200_000,
			"sleep_efficiency_percentage": 93.5, "sleep_performance_percentage": 97, "respiratory_rate": 14.2,
		}})
	require.NoError(t, err)
	newSleepID := recs[0].ID
	workoutEnd := time.Now().UTC().Add(-2 * time.Hour).Truncate(time.Second)
	_, err = e.emu.CreateRecord(ctx, emulator.RecordSpec{User: "walter", Vendor: emulator.Whoop, Type: "workout",
		Start: workoutEnd.Add(-45 * time.Minute), End: workoutEnd, SportName: "running",
		Values: map[string]float64{"strain": 11.5, "kilojoule": 2092, "distance_meter": 8000}})
	require.NoError(t, err)

	got := e.waitLatest("user-w1", map[string]float64{
		"recovery_score":         74,
		"hrv_rmssd_ms":           61.25, // RMSSD stays RMSSD, in ms
		"resting_heart_rate_bpm": 52,
		"spo2_pct":               96.5,
		"skin_temp_c":            33.4,
		"sleep_duration_s":       (14_400_000 + 5_400_000 + 7_200_000) / 1000, // ms → s
		"deep_sleep_s":           5400,
		"rem_sleep_s":            7200,
		"light_sleep_s":          14400,
		"awake_s":                1200,
		"sleep_efficiency_pct":   93.5,
		"sleep_score":            97,
		"respiratory_rate_brpm":  14.2,
		"strain":                 11.5,
		"active_energy_kcal":     2092 / 4.184, // kJ → kcal
		"distance_m":             8000,
	}, 20*time.Second)
	assert.Equal(t, biometricsv1.Source_SOURCE_WHOOP, got["recovery_score"].GetSource())
	assert.Equal(t, "recovery:"+newSleepID, got["recovery_score"].GetVendorRecordId())
	assert.Equal(t, newSleepID, got["sleep_duration_s"].GetVendorRecordId())
	assert.True(t, newEnd.Equal(got["hrv_rmssd_ms"].GetObservedAt().AsTime()), "a recovery is observed when its sleep ends")
	assert.NotContains(t, got, "hrv_sdnn_ms")

	// Every delivery came twice: five events, five jobs, one version each.
	e.waitWebhooks()
	counters := e.emu.Counters().Whoop
	assert.GreaterOrEqual(t, counters.WebhooksDuplicated, int64(5))
	e.waitJobsSettled(10 * time.Second)
	assert.Equal(t, map[string]int{"done": 5}, e.jobCounts())
	assert.Equal(t, map[string]int{"stored": 5}, e.outcomes())
	assertOneVersionPerRecord(t, e, 5)
	assert.Equal(t, float64(counters.WebhooksDelivered-5), counter(t, e.ingest.Registry(), "biobridge_ingest_webhooks_total",
		map[string]string{"vendor": "whoop", "outcome": "duplicate"}))

	// Deleting the newest sleep (sleep.deleted + recovery.deleted) makes
	// the older night latest again.
	require.NoError(t, e.emu.DeleteRecord(ctx, emulator.Whoop, "sleep", newSleepID))
	after := e.waitLatest("user-w1", map[string]float64{
		"recovery_score": 35, "hrv_rmssd_ms": 28.5, "resting_heart_rate_bpm": 61,
		"sleep_duration_s": 23000, "sleep_score": 81,
	}, 20*time.Second)
	for m, v := range after {
		assert.NotContains(t, v.GetVendorRecordId(), newSleepID, "%s still comes from the deleted sleep", m)
	}
	e.waitJobsSettled(10 * time.Second)
	assert.Equal(t, 2, e.outcomes()["deleted"])
}

// assertOneVersionPerRecord checks persistence holds n records of which
// none was written twice (every redelivery and re-run was a duplicate).
func assertOneVersionPerRecord(t *testing.T, e *env, n int) {
	t.Helper()
	var records, maxVersion, events int
	require.NoError(t, e.db.QueryRow(context.Background(),
		`SELECT count(*), coalesce(max(version), 0) FROM biometrics.records`).Scan(&records, &maxVersion))
	require.NoError(t, e.db.QueryRow(context.Background(), `SELECT count(*) FROM biometrics.events`).Scan(&events))
	assert.Equal(t, n, records)
	assert.Equal(t, 1, maxVersion, "no record has a second version")
	assert.Equal(t, n, events, "one event per record")
}

// A PENDING_SCORE WHOOP record is waited for (not counted as a failure)
// and stored once it is scored.
func TestWhoopPendingScore(t *testing.T) {
	t.Parallel()
	e := newEnv(t, options{ingest: func(c *server.Config) { c.JobMaxAttempts = 2 }})
	ctx := context.Background()
	e.connect("user-p", "whoop", "pat")
	start, end := night(5)
	recs, err := e.emu.CreateRecord(ctx, emulator.RecordSpec{User: "pat", Vendor: emulator.Whoop, Type: "sleep",
		Start: start, End: end, ScoreState: emulator.ScoreStatePending, Values: map[string]float64{"recovery_score": 66}})
	require.NoError(t, err)
	// Several looks at the pending records pass (more than JobMaxAttempts),
	// and the jobs are still waiting, not dead.
	require.Eventually(t, func() bool {
		return counter(t, e.ingest.Registry(), "biobridge_ingest_job_retries_total", map[string]string{"reason": "pending_score"}) >= 6
	}, 20*time.Second, 50*time.Millisecond)
	assert.Zero(t, e.jobCounts()["dead"])
	assert.Empty(t, e.latest("user-p"))

	_, err = e.emu.ScoreRecord(ctx, "sleep", recs[0].ID)
	require.NoError(t, err)
	e.waitLatest("user-p", map[string]float64{"recovery_score": 66}, 20*time.Second)
}

// A job that keeps failing ends dead after its last attempt, is listed by
// ListJobs, and RetryJobs brings it back once the cause is fixed.
func TestDeadJobsCanBeRetried(t *testing.T) {
	t.Parallel()
	e := newEnv(t, options{ingest: func(c *server.Config) { c.JobMaxAttempts = 2 }})
	ctx := context.Background()
	e.connect("user-d", "whoop", "dora")
	require.NoError(t, e.emu.SetFaults(emulator.Faults{ErrorRate: 1}))
	end := time.Now().UTC().Add(-time.Hour).Truncate(time.Second)
	_, err := e.emu.CreateRecord(ctx, emulator.RecordSpec{User: "dora", Vendor: emulator.Whoop, Type: "workout",
		Start: end.Add(-time.Hour), End: end, Values: map[string]float64{"strain": 9}})
	require.NoError(t, err)

	var dead []*ingestv1.Job
	require.Eventually(t, func() bool {
		resp, err := e.ingestRPC.ListJobs(svc(opsToken), &ingestv1.ListJobsRequest{State: ingestv1.JobState_JOB_STATE_DEAD})
		require.NoError(t, err)
		dead = resp.GetJobs()
		return len(dead) == 1
	}, 20*time.Second, 50*time.Millisecond, "jobs: %s", e.debugJobs())
	j := dead[0]
	assert.Equal(t, "whoop", j.GetVendor())
	assert.Equal(t, "webhook", j.GetKind())
	assert.Equal(t, int32(2), j.GetAttempts())
	assert.Equal(t, biometricsv1.Source_SOURCE_WHOOP, j.GetSource())
	assert.Contains(t, j.GetLastError(), "HTTP 500")
	assert.Equal(t, 1.0, counter(t, e.ingest.Registry(), "biobridge_ingest_jobs_dead_total", map[string]string{"vendor": "whoop"}))

	require.NoError(t, e.emu.SetFaults(emulator.Faults{}))
	resp, err := e.ingestRPC.RetryJobs(svc(opsToken), &ingestv1.RetryJobsRequest{Ids: []int64{j.GetId()}})
	require.NoError(t, err)
	assert.Equal(t, int32(1), resp.GetRequeued())
	e.waitLatest("user-d", map[string]float64{"strain": 9}, 20*time.Second)
	// The value is readable once persistence acknowledged the write; the
	// worker marks its job done after that acknowledgment.
	e.waitJobsSettled(10 * time.Second)
	assert.Equal(t, map[string]int{"done": 1}, e.jobCounts())
}

// An Oura user connects; the verification handshake passes through the
// gateway; documents the emulator creates arrive as readings (HRV as
// RMSSD), and an Oura delete removes a record.
func TestOuraEndToEnd(t *testing.T) {
	t.Parallel()
	e := newEnv(t, options{})
	ctx := context.Background()
	require.NoError(t, e.emu.VerifyOuraCallback(ctx, e.gatewayURL+"/v1/webhooks/oura", ""), "the handshake answers the challenge")
	require.Error(t, e.emu.VerifyOuraCallback(ctx, e.gatewayURL+"/v1/webhooks/oura", "not-our-token"), "a foreign token is refused")
	e.connect("user-o1", "oura", "olga")
	require.NoError(t, e.emu.SetFaults(emulator.Faults{WebhookDuplicateRate: 1, WebhookReorder: true}))

	start, end := night(7)
	day := end.Format(time.DateOnly)
	sleep, err := e.emu.CreateRecord(ctx, emulator.RecordSpec{User: "olga", Vendor: emulator.Oura, Type: "sleep", Start: start, End: end,
		Values: map[string]float64{"average_hrv": 47, "lowest_heart_rate": 49, "total_sleep_duration": 26100, "deep_sleep_duration": 5400,
			"rem_sleep_duration": 6300, "light_sleep_duration": 14400, "awake_time": 1800, "efficiency": 92, "average_breath": 14.5}})
	require.NoError(t, err)
	_, err = e.emu.CreateRecord(ctx, emulator.RecordSpec{User: "olga", Vendor: emulator.Oura, Type: "daily_readiness", Day: day, End: end,
		Values: map[string]float64{"score": 84, "temperature_deviation": -0.25}})
	require.NoError(t, err)
	_, err = e.emu.CreateRecord(ctx, emulator.RecordSpec{User: "olga", Vendor: emulator.Oura, Type: "daily_sleep", Day: day, End: end,
		Values: map[string]float64{"score": 79}})
	require.NoError(t, err)
	_, err = e.emu.CreateRecord(ctx, emulator.RecordSpec{User: "olga", Vendor: emulator.Oura, Type: "daily_spo2", Day: day, End: end,
		Values: map[string]float64{"spo2_percentage": 97.2}})
	require.NoError(t, err)

	got := e.waitLatest("user-o1", map[string]float64{
		"hrv_rmssd_ms": 47, "resting_heart_rate_bpm": 49, "sleep_duration_s": 26100, "deep_sleep_s": 5400, "rem_sleep_s": 6300,
		"light_sleep_s": 14400, "awake_s": 1800, "sleep_efficiency_pct": 92, "respiratory_rate_brpm": 14.5,
		"readiness_score": 84, "temperature_deviation_c": -0.25, "sleep_score": 79, "spo2_pct": 97.2,
	}, 20*time.Second)
	assert.Equal(t, biometricsv1.Source_SOURCE_OURA, got["hrv_rmssd_ms"].GetSource())
	assert.Equal(t, sleep[0].ID, got["hrv_rmssd_ms"].GetVendorRecordId(), "the Oura document id is the record identity")
	e.waitWebhooks()
	e.waitJobsSettled(10 * time.Second)
	assert.Equal(t, map[string]int{"stored": 4}, e.outcomes(), "duplicate deliveries made no extra jobs")
	assertOneVersionPerRecord(t, e, 4)

	require.NoError(t, e.emu.DeleteRecord(ctx, emulator.Oura, "sleep", sleep[0].ID))
	require.Eventually(t, func() bool {
		_, ok := e.latest("user-o1")["hrv_rmssd_ms"]
		return !ok
	}, 20*time.Second, 50*time.Millisecond, "the deleted sleep's readings are gone")
	assert.Contains(t, e.latest("user-o1"), "readiness_score", "other documents stay")
}

// A webhook for a vendor account nobody connected is acknowledged (the
// vendor must not retry for an hour), then dropped by the worker, counted
// and logged by pseudonym only.
func TestUnknownVendorUserIsAcknowledged(t *testing.T) {
	t.Parallel()
	log := &syncBuffer{}
	e := newEnv(t, options{ingestLog: log})
	ctx := context.Background()
	stranger, err := e.emu.AddUser(emulator.UserSpec{Name: "stranger"})
	require.NoError(t, err)
	end := time.Now().UTC().Add(-time.Hour).Truncate(time.Second)
	_, err = e.emu.CreateRecord(ctx, emulator.RecordSpec{User: "stranger", Vendor: emulator.Whoop, Type: "workout", Start: end.Add(-time.Hour), End: end})
	require.NoError(t, err)
	e.waitWebhooks()
	c := e.emu.Counters().Whoop
	assert.Equal(t, int64(1), c.WebhooksDelivered, "acknowledged on the first attempt")
	assert.Zero(t, c.WebhookRetries)
	e.waitJobsSettled(10 * time.Second)
	assert.Equal(t, map[string]int{"unknown_user": 1}, e.outcomes())
	assert.Zero(t, e.emu.Counters().Whoop.APICallsTotal, "nothing is fetched for an unknown user")
	assert.Equal(t, 1.0, counter(t, e.ingest.Registry(), "biobridge_ingest_webhooks_unknown_user_total", map[string]string{"vendor": "whoop"}))
	out := log.String()
	assert.Contains(t, out, "notification for a vendor user without a connection")
	assert.Regexp(t, `"user":"u_[0-9a-f]{16}"`, out, "the vendor user appears as a pseudonym")
	assert.NotContains(t, out, strconv.FormatInt(stranger.WhoopUserID, 10), "never as the raw id")
}

// HealthKit pushes still work through the REST gateway: per-sample
// results, SpO2 fractions become percent, SDNN stays SDNN, and the JWT's
// subject is the only user written.
func TestHealthKitPush(t *testing.T) {
	t.Parallel()
	e := newEnv(t, options{})
	tok, err := auth.IssueUserToken(userSecret, "user-hk", time.Hour)
	require.NoError(t, err)
	at := time.Now().UTC().Add(-time.Hour).Truncate(time.Second).Format(time.RFC3339)
	body := `{"samples":[
		{"uuid":"A1","type":"HKQuantityTypeIdentifierHeartRate","value":64,"unit":"count/min","start_date":"` + at + `","end_date":"` + at + `"},
		{"uuid":"A2","type":"HKQuantityTypeIdentifierOxygenSaturation","value":0.97,"unit":"%","start_date":"` + at + `","end_date":"` + at + `"},
		{"uuid":"A3","type":"HKQuantityTypeIdentifierHeartRateVariabilitySDNN","value":48,"unit":"ms","start_date":"` + at + `","end_date":"` + at + `"},
		{"uuid":"A4","type":"HKQuantityTypeIdentifierHeartRate","value":400,"unit":"count/min","start_date":"` + at + `","end_date":"` + at + `"}]}`
	req, err := http.NewRequest(http.MethodPost, e.gatewayURL+"/v1/healthkit/samples", strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+tok)
	out := e.do(req, http.StatusOK)
	var resp struct {
		Accepted int `json:"accepted"`
		Rejected int `json:"rejected"`
		Results  []struct {
			UUID   string `json:"uuid"`
			Reason string `json:"reason"`
		} `json:"results"`
	}
	require.NoError(t, json.Unmarshal(out, &resp))
	assert.Equal(t, 3, resp.Accepted)
	assert.Equal(t, 1, resp.Rejected)
	assert.Equal(t, "out_of_range", resp.Results[3].Reason)
	got := e.waitLatest("user-hk", map[string]float64{"heart_rate_bpm": 64, "spo2_pct": 97, "hrv_sdnn_ms": 48}, 10*time.Second)
	assert.NotContains(t, got, "hrv_rmssd_ms")
	assert.Equal(t, biometricsv1.Source_SOURCE_HEALTHKIT, got["heart_rate_bpm"].GetSource())
}

// TestPushWithAMalformedDeletionChangesNothing: a push whose one deleted
// uuid is malformed is answered 400 before anything is written, its valid
// samples included.
func TestPushWithAMalformedDeletionChangesNothing(t *testing.T) {
	t.Parallel()
	e := newEnv(t, options{})
	tok, err := auth.IssueUserToken(userSecret, "user-bad-delete", time.Hour)
	require.NoError(t, err)
	at := time.Now().UTC().Add(-time.Hour).Truncate(time.Second).Format(time.RFC3339)
	body := `{"samples":[{"uuid":"D1","type":"HKQuantityTypeIdentifierHeartRate","value":64,"unit":"count/min","start_date":"` + at + `","end_date":"` + at + `"}],
		"deleted":["gone-1","bad\u0000uuid"]}`
	req, err := http.NewRequest(http.MethodPost, e.gatewayURL+"/v1/healthkit/samples", strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+tok)
	out := e.do(req, http.StatusBadRequest)
	assert.Contains(t, string(out), "invalid_deleted_uuid")
	assert.Contains(t, string(out), "deleted[1]")
	assert.Empty(t, e.latest("user-bad-delete"), "the valid sample of the refused push was not stored")
}
