// Package catalog is the metric catalog: the one table that names every
// biometric the bridge stores, its canonical unit and its plausible range.
// Validation in persistence, normalization in ingest, the ListMetrics API and
// the docs all read this table, so a metric is added here and nowhere else.
package catalog

import (
	"fmt"
	"math"
	"slices"
	"strings"
)

// Kind says how a metric's numbers are to be read.
type Kind int

const (
	// Quantity is a measured amount in the metric's unit.
	Quantity Kind = iota + 1
	// Category is a code from a fixed set (see the sleep stage constants).
	Category
)

// Metric describes one catalog entry.
type Metric struct {
	Name        string
	Unit        string
	Min, Max    float64 // inclusive plausible range
	Kind        Kind
	Description string
}

// Stable rejection reasons, shared by every API that reports them.
const (
	ReasonUnknownMetric = "unknown_metric"
	ReasonOutOfRange    = "out_of_range"
	ReasonNotFinite     = "not_finite"
)

// Sleep stage codes of the sleep_stage category metric. They follow
// HealthKit's HKCategoryValueSleepAnalysis raw values, so HealthKit samples
// map one to one and other vendors map onto the same codes.
const (
	SleepStageInBed             = 0
	SleepStageAsleepUnspecified = 1
	SleepStageAwake             = 2
	SleepStageLight             = 3 // HealthKit "asleepCore"
	SleepStageDeep              = 4
	SleepStageREM               = 5
)

const day = 24 * 60 * 60

// metrics is the catalog. Keep distinct measures distinct: RMSSD is not SDNN.
// Percentages are 0–100.
var metrics = []Metric{
	{"heart_rate_bpm", "bpm", 20, 250, Quantity, "Heart rate."},
	{"resting_heart_rate_bpm", "bpm", 20, 200, Quantity, "Resting heart rate."},
	{"hrv_rmssd_ms", "ms", 1, 300, Quantity, "Heart rate variability, RMSSD (WHOOP, Oura)."},
	{"hrv_sdnn_ms", "ms", 1, 300, Quantity, "Heart rate variability, SDNN (Apple)."},
	{"respiratory_rate_brpm", "brpm", 4, 60, Quantity, "Respiratory rate, breaths per minute."},
	{"spo2_pct", "%", 50, 100, Quantity, "Blood oxygen saturation."},
	{"skin_temp_c", "degC", 20, 45, Quantity, "Skin temperature."},
	{"body_temp_c", "degC", 30, 45, Quantity, "Body temperature."},
	{"temperature_deviation_c", "degC", -10, 10, Quantity, "Deviation from the personal temperature baseline."},
	{"recovery_score", "score", 0, 100, Quantity, "WHOOP recovery score."},
	{"readiness_score", "score", 0, 100, Quantity, "Oura readiness score."},
	{"sleep_score", "score", 0, 100, Quantity, "Sleep score or sleep performance."},
	{"sleep_duration_s", "s", 0, day, Quantity, "Time asleep in a sleep period."},
	{"sleep_efficiency_pct", "%", 0, 100, Quantity, "Share of time in bed spent asleep."},
	{"deep_sleep_s", "s", 0, day, Quantity, "Deep (slow wave) sleep."},
	{"rem_sleep_s", "s", 0, day, Quantity, "REM sleep."},
	{"light_sleep_s", "s", 0, day, Quantity, "Light (core) sleep."},
	{"awake_s", "s", 0, day, Quantity, "Time awake during a sleep period."},
	{"strain", "score", 0, 21, Quantity, "WHOOP strain (day or workout)."},
	{"active_energy_kcal", "kcal", 0, 20000, Quantity, "Active energy burned."},
	{"steps", "count", 0, 200000, Quantity, "Steps."},
	{"distance_m", "m", 0, 500000, Quantity, "Distance walked, run or covered in a workout."},
	{"vo2max_ml_kg_min", "ml/kg/min", 10, 100, Quantity, "Estimated VO2 max."},
	{"blood_pressure_systolic_mmhg", "mmHg", 50, 260, Quantity, "Systolic blood pressure."},
	{"blood_pressure_diastolic_mmhg", "mmHg", 30, 160, Quantity, "Diastolic blood pressure."},
	{"sleep_stage", "stage", 0, 5, Category, "Sleep stage: 0 in bed, 1 asleep (unspecified), 2 awake, 3 light/core, 4 deep, 5 REM."},
}

var byName = func() map[string]Metric {
	m := make(map[string]Metric, len(metrics))
	for _, x := range metrics {
		m[x.Name] = x
	}
	return m
}()

// Lookup returns the metric with the given name.
func Lookup(name string) (Metric, bool) {
	m, ok := byName[name]
	return m, ok
}

// All returns every metric, ordered by name.
func All() []Metric {
	out := slices.Clone(metrics)
	slices.SortFunc(out, func(a, b Metric) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Names returns every metric name, ordered.
func Names() []string {
	all := All()
	names := make([]string, len(all))
	for i, m := range all {
		names[i] = m.Name
	}
	return names
}

// Validate checks a value in canonical units against the catalog. It returns
// the metric, or a stable reason and a message that never contains the value
// (values are health data and messages end up in logs).
func Validate(name string, value float64) (m Metric, reason, message string) {
	m, ok := byName[name]
	if !ok {
		return Metric{}, ReasonUnknownMetric, fmt.Sprintf("metric %q is not in the catalog", name)
	}
	if math.IsNaN(value) || math.IsInf(value, 0) {
		return m, ReasonNotFinite, fmt.Sprintf("%s value is not a finite number", name)
	}
	if value < m.Min || value > m.Max {
		return m, ReasonOutOfRange, fmt.Sprintf("%s must be between %g and %g %s", name, m.Min, m.Max, m.Unit)
	}
	if m.Kind == Category && value != math.Trunc(value) {
		return m, ReasonOutOfRange, fmt.Sprintf("%s must be a whole category code", name)
	}
	return m, "", ""
}
