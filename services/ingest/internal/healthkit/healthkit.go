// Package healthkit turns Apple HealthKit samples pushed by the iOS app into
// catalog readings. It owns every HealthKit-specific rule: which type
// identifier is which metric, unit conversion (SpO2 arrives as a 0.0–1.0
// fraction, temperatures may be Fahrenheit), sleep analysis categories, and
// the sample UUID as the record identity.
package healthkit

import (
	"fmt"
	"math"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	ingestv1 "github.com/biobridge/bridge/gen/go/biobridge/ingest/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	"github.com/biobridge/bridge/pkg/catalog"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// Stable reasons for samples that are not stored.
const (
	ReasonMissingUUID     = "missing_uuid"
	ReasonMissingDate     = "missing_date"
	ReasonUnknownType     = "unknown_type"
	ReasonBadUnit         = "bad_unit"
	ReasonDuplicateInPush = "duplicate_in_push"
	ReasonBadDates        = "bad_dates"
)

// SleepAnalysis is the category type of sleep samples.
const SleepAnalysis = "HKCategoryTypeIdentifierSleepAnalysis"

// mapping describes how one HealthKit type becomes one catalog metric.
type mapping struct {
	metric string
	// units maps each accepted HealthKit unit string to a conversion into the
	// metric's canonical unit. Category types have no unit.
	units map[string]func(float64) float64
}

func same(v float64) float64 { return v }

func scale(f float64) func(float64) float64 { return func(v float64) float64 { return v * f } }

var perMinute = map[string]func(float64) float64{"count/min": same, "bpm": same, "/min": same}

var temperature = map[string]func(float64) float64{
	"degC": same,
	"degF": func(v float64) float64 { return (v - 32) * 5 / 9 },
}

var mappings = map[string]mapping{
	"HKQuantityTypeIdentifierHeartRate":        {"heart_rate_bpm", perMinute},
	"HKQuantityTypeIdentifierRestingHeartRate": {"resting_heart_rate_bpm", perMinute},
	// SDNN stays SDNN: it is a different measure from the RMSSD that WHOOP and Oura report.
	"HKQuantityTypeIdentifierHeartRateVariabilitySDNN": {"hrv_sdnn_ms", map[string]func(float64) float64{"ms": same, "s": scale(1000)}},
	// HealthKit reports oxygen saturation as a fraction with the unit "%".
	"HKQuantityTypeIdentifierOxygenSaturation":              {"spo2_pct", map[string]func(float64) float64{"%": scale(100)}},
	"HKQuantityTypeIdentifierRespiratoryRate":               {"respiratory_rate_brpm", perMinute},
	"HKQuantityTypeIdentifierBodyTemperature":               {"body_temp_c", temperature},
	"HKQuantityTypeIdentifierAppleSleepingWristTemperature": {"skin_temp_c", temperature},
	"HKQuantityTypeIdentifierStepCount":                     {"steps", map[string]func(float64) float64{"count": same}},
	"HKQuantityTypeIdentifierDistanceWalkingRunning": {"distance_m", map[string]func(float64) float64{
		"m": same, "km": scale(1000), "mi": scale(1609.344), "ft": scale(0.3048), "yd": scale(0.9144)}},
	"HKQuantityTypeIdentifierActiveEnergyBurned": {"active_energy_kcal", map[string]func(float64) float64{
		"kcal": same, "Cal": same, "kJ": scale(1 / 4.184), "cal": scale(0.001)}},
	"HKQuantityTypeIdentifierBloodPressureSystolic":  {"blood_pressure_systolic_mmhg", map[string]func(float64) float64{"mmHg": same}},
	"HKQuantityTypeIdentifierBloodPressureDiastolic": {"blood_pressure_diastolic_mmhg", map[string]func(float64) float64{"mmHg": same}},
	"HKQuantityTypeIdentifierVO2Max": {"vo2max_ml_kg_min", map[string]func(float64) float64{
		"ml/(kg*min)": same, "mL/(kg*min)": same, "ml/(kg·min)": same, "mL/min·kg": same}},
	SleepAnalysis: {"sleep_stage", nil},
}

// Metric returns the catalog metric a HealthKit type identifier maps to.
func Metric(typeID string) (string, bool) {
	m, ok := mappings[typeID]
	return m.metric, ok
}

// Batch is a push split into what to write and what was decided locally.
type Batch struct {
	// Events to write, one per stored sample.
	Events []*persistencev1.EventInput
	// EventIndex[i] is the index in Results of Events[i].
	EventIndex []int
	// Results has one entry per sample, in request order. Samples that go to
	// persistence are ACCEPTED here until the write result replaces them.
	Results []*ingestv1.SampleResult
}

// Normalize validates and converts the samples of one push for one user.
// It never fails as a whole: each sample gets its own result, so one bad sample
// cannot block the rest of a push made after days offline.
func Normalize(userID string, samples []*ingestv1.HealthKitSample) Batch {
	b := Batch{Results: make([]*ingestv1.SampleResult, len(samples))}
	seen := make(map[string]bool, len(samples))
	for i, s := range samples {
		res := &ingestv1.SampleResult{Uuid: s.GetUuid()}
		b.Results[i] = res
		ev, reason, msg := normalizeOne(userID, s)
		if reason == "" && seen[s.GetUuid()] {
			reason, msg = ReasonDuplicateInPush, "the same uuid appears earlier in this push"
		}
		switch {
		case reason == ReasonUnknownType:
			res.Status, res.Reason, res.Message = ingestv1.SampleStatus_SAMPLE_STATUS_SKIPPED, reason, msg
		case reason != "":
			res.Status, res.Reason, res.Message = ingestv1.SampleStatus_SAMPLE_STATUS_REJECTED, reason, msg
		default:
			seen[s.GetUuid()] = true
			res.Status = ingestv1.SampleStatus_SAMPLE_STATUS_ACCEPTED
			b.Events = append(b.Events, ev)
			b.EventIndex = append(b.EventIndex, i)
		}
	}
	return b
}

func normalizeOne(userID string, s *ingestv1.HealthKitSample) (*persistencev1.EventInput, string, string) {
	uuid := strings.TrimSpace(s.GetUuid())
	if uuid == "" || len(uuid) > maxUUIDLen {
		return nil, ReasonMissingUUID, "sample uuid is missing or longer than 128 characters"
	}
	m, ok := mappings[s.GetType()]
	if !ok {
		return nil, ReasonUnknownType, fmt.Sprintf("type %.100q is not mapped to a catalog metric", s.GetType())
	}
	start, end := s.GetStartDate(), s.GetEndDate()
	if end == nil {
		end = start
	}
	if start == nil {
		start = end
	}
	if end == nil {
		return nil, ReasonMissingDate, "sample has neither start_date nor end_date"
	}
	if err := end.CheckValid(); err != nil {
		return nil, ReasonBadDates, "end_date is not a valid time"
	}
	if err := start.CheckValid(); err != nil {
		return nil, ReasonBadDates, "start_date is not a valid time"
	}
	if end.AsTime().Before(start.AsTime()) {
		return nil, ReasonBadDates, "end_date is before start_date"
	}
	if end.AsTime().After(time.Now().Add(24 * time.Hour)) {
		return nil, ReasonBadDates, "end_date is in the future"
	}
	value := s.GetValue()
	if m.units != nil {
		conv, ok := m.units[s.GetUnit()]
		if !ok {
			return nil, ReasonBadUnit, fmt.Sprintf("unit %.40q is not accepted for %s", s.GetUnit(), s.GetType())
		}
		value = conv(value)
	}
	// Validate here too (persistence validates again) so the reason names the
	// sample the app sent, and a rejected sample costs no write.
	if _, reason, msg := catalog.Validate(m.metric, value); reason != "" {
		return nil, reason, msg
	}
	value = round(value)
	src := s.GetSource()
	return &persistencev1.EventInput{
		UserId:         userID,
		Source:         biometricsv1.Source_SOURCE_HEALTHKIT,
		Kind:           s.GetType(),
		VendorRecordId: uuid,
		OccurredAt:     end,
		Readings: []*biometricsv1.Reading{{
			Metric:     m.metric,
			Value:      value,
			ObservedAt: timestamppb.New(end.AsTime()),
			StartTime:  timestamppb.New(start.AsTime()),
			Device: &biometricsv1.Device{
				Name:     src.GetName(),
				Model:    src.GetDeviceModel(),
				BundleId: src.GetBundleId(),
			},
		}},
	}, "", ""
}

// round keeps converted values stable across redeliveries (a Fahrenheit
// conversion must not produce a "changed" value from float noise).
func round(v float64) float64 {
	return math.Round(v*1e6) / 1e6
}

// maxUUIDLen bounds a sample or deletion uuid.
const maxUUIDLen = 128

// DeletedIDs checks every uuid of a push's deleted list and returns them
// as record ids (trimmed, as sample uuids are). A malformed one fails the
// whole push before anything is written: index is its position and msg
// says what is wrong with it.
func DeletedIDs(deleted []string) (ids []string, index int, msg string) {
	ids = make([]string, len(deleted))
	for i, raw := range deleted {
		id := strings.TrimSpace(raw)
		switch {
		case id == "":
			return nil, i, "uuid is empty"
		case len(id) > maxUUIDLen:
			return nil, i, fmt.Sprintf("uuid is longer than %d characters", maxUUIDLen)
		case strings.IndexFunc(id, unicode.IsControl) >= 0 || !utf8.ValidString(id):
			return nil, i, "uuid contains control characters or invalid UTF-8"
		}
		ids[i] = id
	}
	return ids, 0, ""
}
