package e2e

import (
	"fmt"
	"math/rand/v2"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/pkg/topics"
)

type hkSample struct {
	UUID      string         `json:"uuid"`
	Type      string         `json:"type"`
	Value     float64        `json:"value"`
	Unit      string         `json:"unit,omitempty"`
	StartDate string         `json:"start_date"`
	EndDate   string         `json:"end_date"`
	Source    map[string]any `json:"source"`
}

type pushResponse struct {
	Results []struct {
		UUID   string `json:"uuid"`
		Status string `json:"status"`
		Reason string `json:"reason"`
	} `json:"results"`
	Accepted   int `json:"accepted"`
	Duplicates int `json:"duplicates"`
	Rejected   int `json:"rejected"`
	Skipped    int `json:"skipped"`
}

type latestResponse struct {
	Values []struct {
		Metric         string  `json:"metric"`
		Value          float64 `json:"value"`
		Unit           string  `json:"unit"`
		ObservedAt     string  `json:"observed_at"`
		VendorRecordID string  `json:"vendor_record_id"`
	} `json:"values"`
}

// kinds are ten HealthKit types with a value generator in HealthKit units and
// the catalog metric they become.
var kinds = []struct {
	typ, unit, metric string
	value             func(i int) float64
}{
	{"HKQuantityTypeIdentifierHeartRate", "count/min", "heart_rate_bpm", func(i int) float64 { return float64(50 + i%100) }},
	{"HKQuantityTypeIdentifierRestingHeartRate", "count/min", "resting_heart_rate_bpm", func(i int) float64 { return float64(45 + i%30) }},
	{"HKQuantityTypeIdentifierHeartRateVariabilitySDNN", "ms", "hrv_sdnn_ms", func(i int) float64 { return float64(20 + i%80) }},
	{"HKQuantityTypeIdentifierOxygenSaturation", "%", "spo2_pct", func(i int) float64 { return 0.9 + float64(i%10)/100 }},
	{"HKQuantityTypeIdentifierRespiratoryRate", "count/min", "respiratory_rate_brpm", func(i int) float64 { return float64(10 + i%10) }},
	{"HKQuantityTypeIdentifierBodyTemperature", "degC", "body_temp_c", func(i int) float64 { return 36 + float64(i%10)/10 }},
	{"HKQuantityTypeIdentifierStepCount", "count", "steps", func(i int) float64 { return float64(100 + i) }},
	{"HKQuantityTypeIdentifierDistanceWalkingRunning", "m", "distance_m", func(i int) float64 { return float64(10 + i) }},
	{"HKQuantityTypeIdentifierActiveEnergyBurned", "kcal", "active_energy_kcal", func(i int) float64 { return float64(1 + i%500) }},
	{"HKCategoryTypeIdentifierSleepAnalysis", "", "sleep_stage", func(i int) float64 { return float64(i % 6) }},
}

var watch = map[string]any{"name": "Apple Watch", "bundle_id": "com.apple.health", "device_model": "Watch7,1"}

// TestHealthKitPushEndToEnd walks the acceptance list through the
// REST gateway of a running suite.
func TestHealthKitPushEndToEnd(t *testing.T) {
	s := startStack(t)
	user := "hk-user-1"
	token, err := s.UserToken(user, time.Hour)
	require.NoError(t, err)
	gw := s.GatewayURL()
	agent := s.AgentToken()

	// 5,000 samples across ten metrics, shuffled; per metric the newest
	// observation is known.
	base := time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
	type want struct {
		value float64
		at    time.Time
		uuid  string
	}
	newest := map[string]want{}
	var samples []hkSample
	for k, kind := range kinds {
		for i := 0; i < 500; i++ {
			at := base.Add(time.Duration(i) * time.Minute)
			sm := hkSample{UUID: fmt.Sprintf("hk-%d-%d", k, i), Type: kind.typ, Value: kind.value(i), Unit: kind.unit,
				StartDate: at.Format(time.RFC3339), EndDate: at.Format(time.RFC3339), Source: watch}
			samples = append(samples, sm)
			if w, ok := newest[kind.metric]; !ok || at.After(w.at) {
				v := kind.value(i)
				if kind.metric == "spo2_pct" {
					v *= 100
				}
				newest[kind.metric] = want{value: v, at: at, uuid: sm.UUID}
			}
		}
	}
	rng := rand.New(rand.NewPCG(1, 2))
	rng.Shuffle(len(samples), func(i, j int) { samples[i], samples[j] = samples[j], samples[i] })

	push := func(batch []hkSample) pushResponse {
		t.Helper()
		r := do(t, http.MethodPost, gw+"/v1/healthkit/samples", token, mustJSON(t, map[string]any{"samples": batch}))
		require.Equal(t, http.StatusOK, r.Code, "body: %s", r.Body)
		var out pushResponse
		r.JSON(t, &out)
		return out
	}
	// Pushed in five requests of 1,000 so the order across requests is shuffled too.
	for i := 0; i < len(samples); i += 1000 {
		out := push(samples[i : i+1000])
		require.Equal(t, 1000, out.Accepted, "every sample of a valid push is accepted")
	}

	latest := func() map[string]float64 {
		t.Helper()
		r := do(t, http.MethodGet, gw+"/v1/users/"+user+"/biometrics/latest", agent, nil)
		require.Equal(t, http.StatusOK, r.Code, "body: %s", r.Body)
		var out latestResponse
		r.JSON(t, &out)
		got := map[string]float64{}
		for _, v := range out.Values {
			got[v.Metric] = v.Value
		}
		return got
	}
	got := latest()
	for metric, w := range newest {
		assert.InDelta(t, w.value, got[metric], 1e-6, "latest %s must be the newest observation", metric)
	}
	assert.InDelta(t, 99.0, got["spo2_pct"], 1e-6, "SpO2 fractions are stored as percentages")

	// The same push again: all duplicates, and nothing new reaches Kafka.
	brokers := s.Env("KAFKA_BROKERS")
	require.Eventually(t, func() bool { return topicEndOffsets(t, brokers, topics.Events) >= 5000 },
		60*time.Second, 200*time.Millisecond, "the first push is published")
	before := topicEndOffsets(t, brokers, topics.Events)
	for i := 0; i < len(samples); i += 1000 {
		out := push(samples[i : i+1000])
		require.Equal(t, 1000, out.Duplicates, "a redelivered push is all duplicates")
		require.Zero(t, out.Accepted)
	}
	// A marker write proves the publisher is still relaying: once it is on
	// Kafka, any event from the duplicate pushes would be there too.
	marker := push([]hkSample{{UUID: "marker", Type: kinds[0].typ, Value: 60, Unit: "count/min",
		StartDate: base.Format(time.RFC3339), EndDate: base.Format(time.RFC3339), Source: watch}})
	require.Equal(t, 1, marker.Accepted)
	require.Eventually(t, func() bool { return topicEndOffsets(t, brokers, topics.Events) >= before+1 },
		30*time.Second, 100*time.Millisecond)
	assert.Equal(t, before+1, topicEndOffsets(t, brokers, topics.Events), "duplicates publish nothing")

	// One out-of-range sample: rejected with its reason, the rest stored.
	late := base.Add(48 * time.Hour)
	mixed := push([]hkSample{
		{UUID: "ok-1", Type: kinds[0].typ, Value: 70, Unit: "count/min", StartDate: late.Format(time.RFC3339), EndDate: late.Format(time.RFC3339), Source: watch},
		{UUID: "bad-1", Type: kinds[0].typ, Value: 400, Unit: "count/min", StartDate: late.Format(time.RFC3339), EndDate: late.Format(time.RFC3339), Source: watch},
		{UUID: "ok-2", Type: kinds[6].typ, Value: 12, Unit: "count", StartDate: late.Format(time.RFC3339), EndDate: late.Format(time.RFC3339), Source: watch},
	})
	assert.Equal(t, 2, mixed.Accepted)
	require.Equal(t, 1, mixed.Rejected)
	assert.Equal(t, "out_of_range", mixed.Results[1].Reason)
	assert.InDelta(t, 70, latest()["heart_rate_bpm"], 1e-6)

	// Deleting the newest heart-rate sample rolls latest back to the previous one.
	r := do(t, http.MethodPost, gw+"/v1/healthkit/samples", token, mustJSON(t, map[string]any{"deleted": []string{"ok-1"}}))
	require.Equal(t, http.StatusOK, r.Code, "body: %s", r.Body)
	assert.InDelta(t, newest["heart_rate_bpm"].value, latest()["heart_rate_bpm"], 1e-6, "latest rolls back after the delete")
}

// TestHealthKitBadRequestsStoreNothing: bad token 401, malformed JSON 400,
// oversized body 413, and none of them stores anything.
func TestHealthKitBadRequestsStoreNothing(t *testing.T) {
	s := startStack(t)
	user := "hk-user-2"
	gw := s.GatewayURL()
	good, err := s.UserToken(user, time.Hour)
	require.NoError(t, err)
	expired, err := s.UserToken(user, -time.Hour)
	require.NoError(t, err)
	at := time.Now().UTC().Add(-time.Minute).Format(time.RFC3339)
	body := mustJSON(t, map[string]any{"samples": []hkSample{{UUID: "x", Type: kinds[0].typ, Value: 60, Unit: "count/min", StartDate: at, EndDate: at, Source: watch}}})

	tests := []struct {
		name  string
		token string
		body  []byte
		code  int
	}{
		{"no token", "", body, http.StatusUnauthorized},
		{"expired token", expired, body, http.StatusUnauthorized},
		{"wrongly signed token", good[:len(good)-4] + "AAAA", body, http.StatusUnauthorized},
		{"garbage token", "not-a-jwt", body, http.StatusUnauthorized},
		{"malformed json", good, []byte(`{"samples": [`), http.StatusBadRequest},
		{"oversized body", good, []byte(`{"samples":[],"pad":"` + strings.Repeat("x", 33<<20) + `"}`), http.StatusRequestEntityTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := do(t, http.MethodPost, gw+"/v1/healthkit/samples", tt.token, tt.body)
			assert.Equal(t, tt.code, r.Code, "body: %.300s", r.Body)
			assert.Contains(t, string(r.Body), `"message"`, "errors are JSON with a message")
		})
	}
	r := do(t, http.MethodGet, gw+"/v1/users/"+user+"/biometrics/latest", s.AgentToken(), nil)
	require.Equal(t, http.StatusOK, r.Code, "body: %s", r.Body)
	var out latestResponse
	r.JSON(t, &out)
	assert.Empty(t, out.Values, "nothing was stored by the rejected requests")
}
