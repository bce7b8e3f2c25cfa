package oura

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	"github.com/biobridge/bridge/pkg/catalog"
)

// Documents as Oura v2 serves them (shapes from the API reference).
const (
	sleepJSON = `{"id":"8f9a5221-639e-4a85-81cb-4065ef23f979","average_breath":14.75,"average_heart_rate":52.1,
		"average_hrv":48,"awake_time":2820,"bedtime_end":"2026-11-20T07:31:02+01:00","bedtime_start":"2026-11-19T23:08:02+01:00",
		"day":"2026-11-20","deep_sleep_duration":4590,"efficiency":91,"heart_rate":{"interval":300,"items":[null,55,54],"timestamp":"2026-11-19T23:08:02+01:00"},
		"latency":540,"light_sleep_duration":13740,"low_battery_alert":false,"lowest_heart_rate":47,"period":0,
		"readiness":{"contributors":{"activity_balance":80},"score":82,"temperature_deviation":-0.12,"temperature_trend_deviation":0.05},
		"readiness_score_delta":null,"rem_sleep_duration":7020,"restless_periods":180,"sleep_phase_5_min":"4422111",
		"time_in_bed":30180,"total_sleep_duration":25350,"type":"long_sleep"}`
	readinessJSON = `{"id":"0c3f6b2e-1234-4cde-8f00-aa55aa55aa55","contributors":{"activity_balance":80},"day":"2026-11-20",
		"score":82,"temperature_deviation":-0.12,"temperature_trend_deviation":0.05,"timestamp":"2026-11-20T00:00:00+01:00"}`
	dailySleepJSON = `{"id":"d1","contributors":{"deep_sleep":80},"day":"2026-11-20","score":77,"timestamp":"2026-11-20T00:00:00+01:00"}`
	spo2JSON       = `{"id":"s1","day":"2026-11-20","spo2_percentage":{"average":96.8},"breathing_disturbance_index":3}`
	spo2NullJSON   = `{"id":"s2","day":"2026-11-21","spo2_percentage":null}`
	activityJSON   = `{"id":"a1","day":"2026-11-20","steps":10342,"active_calories":512,"timestamp":"2026-11-20T00:00:00-08:00"}`
)

func decode(t *testing.T, s string) Document {
	t.Helper()
	var d Document
	require.NoError(t, json.Unmarshal([]byte(s), &d))
	return d
}

func values(n Normalized) map[string]float64 {
	out := map[string]float64{}
	for _, r := range n.Event.GetReadings() {
		out[r.GetMetric()] = r.GetValue()
	}
	return out
}

func TestNormalize(t *testing.T) {
	t.Parallel()
	changed := time.Date(2026, 11, 20, 7, 40, 0, 0, time.UTC)
	dayStart := time.Date(2026, 11, 19, 23, 0, 0, 0, time.UTC)
	tests := []struct {
		name     string
		dataType string
		doc      string
		want     map[string]float64
		observed time.Time
	}{
		{"sleep", Sleep, sleepJSON, map[string]float64{
			"sleep_duration_s": 25350, "deep_sleep_s": 4590, "light_sleep_s": 13740, "rem_sleep_s": 7020, "awake_s": 2820,
			"sleep_efficiency_pct": 91, "respiratory_rate_brpm": 14.75,
			"hrv_rmssd_ms":           48, // average_hrv is RMSSD and stays RMSSD
			"resting_heart_rate_bpm": 47,
		}, time.Date(2026, 11, 20, 6, 31, 2, 0, time.UTC)},
		{"daily readiness", DailyReadiness, readinessJSON, map[string]float64{"readiness_score": 82, "temperature_deviation_c": -0.12}, dayStart},
		{"daily sleep", DailySleep, dailySleepJSON, map[string]float64{"sleep_score": 77}, dayStart},
		{"daily spo2", DailySpO2, spo2JSON, map[string]float64{"spo2_pct": 96.8}, time.Date(2026, 11, 20, 0, 0, 0, 0, time.UTC)},
		{"daily spo2 not measured", DailySpO2, spo2NullJSON, map[string]float64{}, time.Time{}},
		{"daily activity", DailyActivity, activityJSON, map[string]float64{"steps": 10342, "active_energy_kcal": 512}, time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			d := decode(t, tt.doc)
			n, err := Normalize("user-1", tt.dataType, d, changed)
			require.NoError(t, err)
			ev := n.Event
			assert.Equal(t, biometricsv1.Source_SOURCE_OURA, ev.GetSource())
			assert.Equal(t, tt.dataType, ev.GetKind())
			assert.Equal(t, d.ID, ev.GetVendorRecordId(), "the document id is the record identity")
			assert.Equal(t, changed, ev.GetOccurredAt().AsTime())
			assert.InDeltaMapValues(t, tt.want, values(n), 1e-9)
			assert.Len(t, ev.GetReadings(), len(tt.want))
			for _, r := range ev.GetReadings() {
				m, _ := catalog.Lookup(r.GetMetric())
				assert.Equal(t, m.Unit, r.GetUnit())
				assert.True(t, tt.observed.Equal(r.GetObservedAt().AsTime()), "observed at %s, want %s", r.GetObservedAt().AsTime(), tt.observed)
			}
		})
	}
}

func TestNormalizeRejects(t *testing.T) {
	t.Parallel()
	_, err := Normalize("u", "heartrate", Document{ID: "x"}, time.Time{})
	require.ErrorIs(t, err, ErrUnsupported)
	_, err = Normalize("u", Sleep, Document{ID: "x", BedtimeStart: "2026-11-19T23:08:02+01:00"}, time.Time{})
	require.ErrorIs(t, err, ErrIncomplete)
	_, err = Normalize("u", DailyReadiness, Document{ID: "x", Day: "someday"}, time.Time{})
	require.ErrorIs(t, err, ErrIncomplete)

	bad := 400.0
	n, err := Normalize("u", DailySpO2, Document{ID: "x", Day: "2026-11-20", SpO2Percentage: &struct {
		Average *float64 `json:"average"`
	}{Average: &bad}}, time.Time{})
	require.NoError(t, err)
	assert.Empty(t, n.Event.GetReadings())
	require.Len(t, n.Skipped, 1)
	assert.Equal(t, catalog.ReasonOutOfRange, n.Skipped[0].Reason)
	assert.Nil(t, n.Event.GetOccurredAt(), "no change time, no occurred_at")
}

func TestSupported(t *testing.T) {
	t.Parallel()
	for _, dt := range []string{Sleep, DailySleep, DailyReadiness, DailySpO2, DailyActivity} {
		assert.True(t, Supported(dt), dt)
	}
	for _, dt := range []string{"heartrate", "tag", "session", "workout", ""} {
		assert.False(t, Supported(dt), dt)
	}
}
