package whoop

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	"github.com/biobridge/bridge/pkg/catalog"
)

// Documents as WHOOP v2 serves them (field names and shapes from the API
// reference; values made up).
const (
	sleepJSON = `{"id":"ecfc6a15-4661-442f-a9a4-f160dd7afae8","cycle_id":93845,"user_id":10129,
		"created_at":"2026-11-20T07:02:11.000Z","updated_at":"2026-11-20T07:05:40.120Z",
		"start":"2026-11-19T22:48:00.000Z","end":"2026-11-20T06:58:00.000Z","timezone_offset":"-05:00","nap":false,
		"score_state":"SCORED","score":{"stage_summary":{"total_in_bed_time_milli":29400000,"total_awake_time_milli":2100000,
		"total_no_data_time_milli":0,"total_light_sleep_time_milli":13800000,"total_slow_wave_sleep_time_milli":6300000,
		"total_rem_sleep_time_milli":7200000,"sleep_cycle_count":4,"disturbance_count":9},
		"sleep_needed":{"baseline_milli":27720000,"need_from_sleep_debt_milli":352230,"need_from_recent_strain_milli":208595,"need_from_recent_nap_milli":-12312},
		"respiratory_rate":15.6,"sleep_performance_percentage":98,"sleep_consistency_percentage":90,"sleep_efficiency_percentage":91.7}}`
	recoveryJSON = `{"cycle_id":93845,"sleep_id":"ecfc6a15-4661-442f-a9a4-f160dd7afae8","user_id":10129,
		"created_at":"2026-11-20T07:05:40.120Z","updated_at":"2026-11-20T07:06:01.000Z","score_state":"SCORED",
		"score":{"user_calibrating":false,"recovery_score":44,"resting_heart_rate":64,"hrv_rmssd_milli":31.813562,
		"spo2_percentage":95.6875,"skin_temp_celsius":33.7}}`
	workoutJSON = `{"id":"ecfc6a15-4661-442f-a9a4-f160dd7afae9","user_id":10129,"created_at":"2026-11-20T18:00:00Z",
		"updated_at":"2026-11-20T18:10:00Z","start":"2026-11-20T17:00:00Z","end":"2026-11-20T17:45:00Z","timezone_offset":"-05:00",
		"sport_name":"running","sport_id":0,"score_state":"SCORED","score":{"strain":8.2463,"average_heart_rate":123,
		"max_heart_rate":146,"kilojoule":1569.34033203125,"percent_recorded":100,"distance_meter":1772.77035916,
		"altitude_gain_meter":46.64384460449,"altitude_change_meter":-0.781372010707855,
		"zone_durations":{"zone_zero_milli":300000,"zone_one_milli":600000,"zone_two_milli":900000,"zone_three_milli":900000,"zone_four_milli":600000,"zone_five_milli":300000}}}`
)

func decode[T any](t *testing.T, s string) T {
	t.Helper()
	var v T
	require.NoError(t, json.Unmarshal([]byte(s), &v))
	return v
}

func values(t *testing.T, n Normalized) map[string]float64 {
	t.Helper()
	out := map[string]float64{}
	for _, r := range n.Event.GetReadings() {
		_, dup := out[r.GetMetric()]
		require.False(t, dup, "one reading per metric in %s", n.Event.GetKind())
		m, ok := catalog.Lookup(r.GetMetric())
		require.True(t, ok)
		assert.Equal(t, m.Unit, r.GetUnit())
		out[r.GetMetric()] = r.GetValue()
	}
	return out
}

func TestNormalizeSleep(t *testing.T) {
	t.Parallel()
	s := decode[Sleep](t, sleepJSON)
	n, err := NormalizeSleep("user-1", s)
	require.NoError(t, err)
	ev := n.Event
	assert.Equal(t, biometricsv1.Source_SOURCE_WHOOP, ev.GetSource())
	assert.Equal(t, "sleep", ev.GetKind())
	assert.Equal(t, "ecfc6a15-4661-442f-a9a4-f160dd7afae8", ev.GetVendorRecordId(), "the sleep UUID is the record identity")
	assert.Equal(t, time.Date(2026, 11, 20, 7, 5, 40, 120_000_000, time.UTC), ev.GetOccurredAt().AsTime())
	got := values(t, n)
	assert.InDeltaMapValues(t, map[string]float64{
		"sleep_duration_s":      (13800 + 6300 + 7200), // light + deep + REM, ms → s
		"light_sleep_s":         13800,
		"deep_sleep_s":          6300,
		"rem_sleep_s":           7200,
		"awake_s":               2100,
		"sleep_efficiency_pct":  91.7,
		"sleep_score":           98,
		"respiratory_rate_brpm": 15.6,
	}, got, 1e-9)
	for _, r := range ev.GetReadings() {
		assert.Equal(t, s.End, r.GetObservedAt().AsTime())
		assert.Equal(t, s.Start, r.GetStartTime().AsTime())
		assert.Equal(t, "WHOOP", r.GetDevice().GetName())
	}
}

func TestNormalizeRecovery(t *testing.T) {
	t.Parallel()
	s := decode[Sleep](t, sleepJSON)
	r := decode[Recovery](t, recoveryJSON)
	n, err := NormalizeRecovery("user-1", s, r)
	require.NoError(t, err)
	assert.Equal(t, "recovery:ecfc6a15-4661-442f-a9a4-f160dd7afae8", n.Event.GetVendorRecordId())
	assert.Equal(t, "recovery", n.Event.GetKind())
	got := values(t, n)
	assert.InDeltaMapValues(t, map[string]float64{
		"recovery_score":         44,
		"resting_heart_rate_bpm": 64,
		"hrv_rmssd_ms":           31.813562, // RMSSD in ms stays RMSSD
		"spo2_pct":               95.6875,
		"skin_temp_c":            33.7,
	}, got, 1e-9)
	assert.NotContains(t, got, "hrv_sdnn_ms")
	assert.Equal(t, s.End, n.Event.GetReadings()[0].GetObservedAt().AsTime(), "a recovery is observed when the sleep ends")
}

func TestNormalizeRecoveryWithoutOptionalFigures(t *testing.T) {
	t.Parallel()
	s := decode[Sleep](t, sleepJSON)
	r := decode[Recovery](t, `{"cycle_id":1,"sleep_id":"x","score_state":"SCORED","score":{"recovery_score":80,
		"resting_heart_rate":300,"hrv_rmssd_milli":55,"spo2_percentage":null}}`)
	n, err := NormalizeRecovery("u", s, r)
	require.NoError(t, err)
	got := values(t, n)
	assert.Equal(t, map[string]float64{"recovery_score": 80, "hrv_rmssd_ms": 55}, got,
		"absent figures are absent, not zero; an implausible one is skipped")
	require.Len(t, n.Skipped, 1)
	assert.Equal(t, "resting_heart_rate_bpm", n.Skipped[0].Metric)
	assert.Equal(t, catalog.ReasonOutOfRange, n.Skipped[0].Reason)
}

func TestNormalizeWorkout(t *testing.T) {
	t.Parallel()
	w := decode[Workout](t, workoutJSON)
	n, err := NormalizeWorkout("u", w)
	require.NoError(t, err)
	assert.Equal(t, "ecfc6a15-4661-442f-a9a4-f160dd7afae9", n.Event.GetVendorRecordId())
	got := values(t, n)
	assert.InDeltaMapValues(t, map[string]float64{
		"strain":             8.2463,
		"active_energy_kcal": 1569.34033203125 / 4.184, // kJ → kcal
		"distance_m":         1772.77035916,
	}, got, 1e-9)
}

func TestIncompleteRecords(t *testing.T) {
	t.Parallel()
	_, err := NormalizeSleep("u", Sleep{ID: "x"})
	require.ErrorIs(t, err, ErrIncomplete)
	_, err = NormalizeWorkout("u", Workout{ID: "x", Start: time.Now()})
	require.ErrorIs(t, err, ErrIncomplete)
	_, err = NormalizeRecovery("u", Sleep{ID: "x"}, Recovery{})
	require.ErrorIs(t, err, ErrIncomplete)
}
