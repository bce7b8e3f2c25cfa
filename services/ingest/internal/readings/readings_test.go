package readings

import (
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	"github.com/biobridge/bridge/pkg/catalog"
)

func TestSet(t *testing.T) {
	t.Parallel()
	end := time.Date(2026, 11, 20, 7, 0, 0, 0, time.UTC)
	start := end.Add(-8 * time.Hour)
	s := New(&biometricsv1.Device{Name: "WHOOP"})
	s.Add("hrv_rmssd_ms", 42, end, time.Time{})
	s.Add("sleep_duration_s", MillisToSeconds(27_000_000), end, start)
	s.Add("heart_rate_bpm", 900, end, time.Time{})
	s.Add("made_up_metric", 1, end, time.Time{})
	s.Add("spo2_pct", math.NaN(), end, time.Time{})
	s.AddPtr("recovery_score", nil, end, time.Time{})

	require.Len(t, s.Readings, 2)
	assert.Equal(t, "ms", s.Readings[0].GetUnit())
	assert.Nil(t, s.Readings[0].GetStartTime(), "a point reading has no interval")
	assert.Equal(t, 27000.0, s.Readings[1].GetValue())
	assert.Equal(t, start, s.Readings[1].GetStartTime().AsTime())
	assert.Equal(t, "WHOOP", s.Readings[1].GetDevice().GetName())
	assert.Equal(t, []Skipped{
		{"heart_rate_bpm", catalog.ReasonOutOfRange},
		{"made_up_metric", catalog.ReasonUnknownMetric},
		{"spo2_pct", catalog.ReasonNotFinite},
	}, s.Skipped, "nil figures are absent, not skipped")
	assert.InDelta(t, 1000/4.184, KilojoulesToKcal(1000), 1e-12)
}
