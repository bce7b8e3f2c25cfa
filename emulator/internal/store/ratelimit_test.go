package store

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestWindowRollsOverAndReportsItsReset(t *testing.T) {
	t.Parallel()
	t0 := time.Unix(1_700_000_000, 0)
	var w Window
	w.Roll(t0, time.Minute)
	w.Count = 5
	w.Roll(t0.Add(59*time.Second), time.Minute)
	require.Equal(t, 5, w.Count, "still inside the window")
	require.Equal(t, 1, w.ResetIn(t0.Add(59*time.Second+500*time.Millisecond), time.Minute), "rounded up")
	w.Roll(t0.Add(time.Minute), time.Minute)
	require.Zero(t, w.Count, "a new window starts when the old one has passed")
}

func TestSliderKeepsTheBusiestInterval(t *testing.T) {
	t.Parallel()
	t0 := time.Unix(1_700_000_000, 0)
	var s Slider
	for _, off := range []time.Duration{0, 10 * time.Second, 20 * time.Second, 70 * time.Second, 75 * time.Second} {
		s.Observe(t0.Add(off), time.Minute)
	}
	require.Equal(t, 3, s.Max(), "0s, 10s and 20s fall within one minute; 70s and 75s with 20s only")
}

func TestFaultsLatencyIsADurationStringOrNanoseconds(t *testing.T) {
	t.Parallel()
	b, err := json.Marshal(Faults{Latency: 250 * time.Millisecond, ErrorRate: 0.5})
	require.NoError(t, err)
	require.Contains(t, string(b), `"latency":"250ms"`)
	var f Faults
	require.NoError(t, json.Unmarshal(b, &f))
	require.Equal(t, Faults{Latency: 250 * time.Millisecond, ErrorRate: 0.5}, f)
	require.NoError(t, json.Unmarshal([]byte(`{"latency":1000}`), &f))
	require.Equal(t, time.Microsecond, f.Latency)
	require.Error(t, json.Unmarshal([]byte(`{"latency":"soon"}`), &f))
	require.Error(t, Faults{ErrorRate: 2, Latency: -1}.Validate())
}
