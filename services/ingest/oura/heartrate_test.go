package oura_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/pkg/catalog"
	"github.com/biobridge/bridge/services/ingest/oura"
)

func bpm(v float64) *float64 { return &v }

func TestNormalizeHeartRate(t *testing.T) {
	t.Parallel()
	samples := []oura.HeartRateSample{
		{BPM: bpm(58), Source: "rest", Timestamp: "2026-11-20T08:00:00+00:00"},
		{BPM: bpm(60), Source: "awake", Timestamp: "2026-11-20T09:05:00+01:00"}, // 08:05 UTC
		{BPM: bpm(99), Source: "awake", Timestamp: "2026-11-20T08:00:00Z"},      // same instant: dropped
		{BPM: bpm(400), Source: "workout", Timestamp: "2026-11-20T08:10:00Z"},   // implausible: skipped
		{BPM: nil, Source: "rest", Timestamp: "2026-11-20T08:15:00Z"},           // no value: skipped
		{BPM: bpm(61), Source: "rest", Timestamp: "yesterday"},                  // no time: skipped
	}
	events, skipped := oura.NormalizeHeartRate("u1", samples)
	require.Len(t, events, 2)
	assert.Equal(t, "heartrate:2026-11-20T08:00:00Z", events[0].GetVendorRecordId())
	assert.Equal(t, 58.0, events[0].GetReadings()[0].GetValue())
	assert.Equal(t, "heartrate:2026-11-20T08:05:00Z", events[1].GetVendorRecordId())
	assert.True(t, events[1].GetOccurredAt().AsTime().Equal(time.Date(2026, 11, 20, 8, 5, 0, 0, time.UTC)))
	assert.Len(t, skipped, 3)
	for _, ev := range events {
		assert.Equal(t, oura.HeartRate, ev.GetKind())
		assert.Equal(t, "heart_rate_bpm", ev.GetReadings()[0].GetMetric())
	}
}

// FuzzNormalizeHeartRate feeds arbitrary heartrate pages (vendor JSON):
// normalization never panics, and what it keeps is one valid heart rate
// per distinct instant.
func FuzzNormalizeHeartRate(f *testing.F) {
	f.Add([]byte(`{"data":[{"bpm":58,"source":"rest","timestamp":"2026-11-20T08:00:00+00:00"}],"next_token":null}`))
	f.Add([]byte(`{"data":[{"bpm":-1,"timestamp":"2026-11-20T08:00:00Z"},{"bpm":1e308,"timestamp":"0001-01-01T00:00:00Z"}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var page oura.HeartRatePage
		if json.Unmarshal(body, &page) != nil {
			return
		}
		events, _ := oura.NormalizeHeartRate("u", page.Data)
		ids := map[string]bool{}
		for _, ev := range events {
			require.False(t, ids[ev.GetVendorRecordId()], "duplicate record %s", ev.GetVendorRecordId())
			ids[ev.GetVendorRecordId()] = true
			require.Len(t, ev.GetReadings(), 1)
			r := ev.GetReadings()[0]
			_, reason, _ := catalog.Validate(r.GetMetric(), r.GetValue())
			require.Empty(t, reason)
		}
	})
}
