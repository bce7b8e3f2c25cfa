package catalog

import (
	"math"
	"strings"
	"testing"
)

func TestValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		metric string
		value  float64
		reason string
	}{
		{"in range", "heart_rate_bpm", 72, ""},
		{"lower bound inclusive", "spo2_pct", 50, ""},
		{"above range", "heart_rate_bpm", 251, ReasonOutOfRange},
		{"fraction spo2 is out of range", "spo2_pct", 0.97, ReasonOutOfRange},
		{"unknown metric", "mood", 3, ReasonUnknownMetric},
		{"nan", "steps", math.NaN(), ReasonNotFinite},
		{"inf", "steps", math.Inf(1), ReasonNotFinite},
		{"category must be whole", "sleep_stage", 2.5, ReasonOutOfRange},
		{"category code", "sleep_stage", SleepStageREM, ""},
		{"negative deviation", "temperature_deviation_c", -0.4, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			_, reason, msg := Validate(tt.metric, tt.value)
			if reason != tt.reason {
				t.Fatalf("Validate(%q, %v) reason = %q, want %q", tt.metric, tt.value, reason, tt.reason)
			}
			if reason != "" && msg == "" {
				t.Fatalf("rejection without a message")
			}
		})
	}
}

func TestMessagesNeverCarryTheValue(t *testing.T) {
	t.Parallel()
	_, _, msg := Validate("heart_rate_bpm", 987.654)
	if strings.Contains(msg, "987") {
		t.Fatalf("message leaks the value: %q", msg)
	}
}

func TestCatalogIsConsistent(t *testing.T) {
	t.Parallel()
	required := []string{"heart_rate_bpm", "resting_heart_rate_bpm", "hrv_rmssd_ms", "hrv_sdnn_ms",
		"respiratory_rate_brpm", "spo2_pct", "skin_temp_c", "body_temp_c", "temperature_deviation_c",
		"recovery_score", "readiness_score", "sleep_score", "sleep_duration_s", "sleep_efficiency_pct",
		"deep_sleep_s", "rem_sleep_s", "light_sleep_s", "awake_s", "strain", "active_energy_kcal", "steps",
		"distance_m", "vo2max_ml_kg_min", "blood_pressure_systolic_mmhg", "blood_pressure_diastolic_mmhg", "sleep_stage"}
	for _, name := range required {
		if _, ok := Lookup(name); !ok {
			t.Errorf("catalog lacks %s", name)
		}
	}
	seen := map[string]bool{}
	for _, m := range All() {
		if seen[m.Name] {
			t.Errorf("duplicate metric %s", m.Name)
		}
		seen[m.Name] = true
		if m.Min > m.Max || m.Unit == "" || m.Description == "" || m.Kind == 0 {
			t.Errorf("metric %s is incomplete: %+v", m.Name, m)
		}
	}
}
