// Package whoop fetches WHOOP v2 records and turns them into catalog
// readings. It owns the WHOOP quirks: a recovery webhook names the sleep,
// not the recovery (sleep → cycle_id → /v2/cycle/{id}/recovery), scores can
// be PENDING_SCORE for a while, durations are milliseconds and energy is in
// kilojoules.
//
// Record identities (the vendor_record_id persistence keys on): a sleep and
// a workout are their WHOOP UUIDs; a recovery is "recovery:<sleep UUID>".
// The sleep UUID is what every recovery webhook carries, including
// recovery.deleted, which arrives when the sleep (and so its cycle link)
// may already be gone: an id derived from the cycle could not be computed
// for the deletion.
package whoop

import (
	"context"
	"errors"
	"net/url"
	"strconv"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	"github.com/biobridge/bridge/services/ingest/internal/readings"
	"github.com/biobridge/bridge/services/ingest/vendorhttp"
)

// APIPath is appended to WHOOP_API_URL (the host root).
const APIPath = "/developer"

// Score states.
const (
	Scored       = "SCORED"
	PendingScore = "PENDING_SCORE"
	Unscorable   = "UNSCORABLE"
)

// Record kinds (EventInput.kind).
const (
	KindSleep    = "sleep"
	KindRecovery = "recovery"
	KindWorkout  = "workout"
)

// RecoveryRecordID is the record identity of the recovery of a sleep.
func RecoveryRecordID(sleepID string) string { return "recovery:" + sleepID }

// device is the provenance of every WHOOP reading (a fresh value each time:
// readings must not share mutable messages).
func device() *biometricsv1.Device { return &biometricsv1.Device{Name: "WHOOP"} }

// Sleep is a v2 sleep.
type Sleep struct {
	ID         string      `json:"id"`
	CycleID    int64       `json:"cycle_id"`
	UserID     int64       `json:"user_id"`
	UpdatedAt  time.Time   `json:"updated_at"`
	Start      time.Time   `json:"start"`
	End        time.Time   `json:"end"`
	Nap        bool        `json:"nap"`
	ScoreState string      `json:"score_state"`
	Score      *SleepScore `json:"score"`
}

// SleepScore is a scored sleep's figures.
type SleepScore struct {
	StageSummary struct {
		TotalInBedTimeMilli         int64 `json:"total_in_bed_time_milli"`
		TotalAwakeTimeMilli         int64 `json:"total_awake_time_milli"`
		TotalLightSleepTimeMilli    int64 `json:"total_light_sleep_time_milli"`
		TotalSlowWaveSleepTimeMilli int64 `json:"total_slow_wave_sleep_time_milli"`
		TotalRemSleepTimeMilli      int64 `json:"total_rem_sleep_time_milli"`
	} `json:"stage_summary"`
	RespiratoryRate            *float64 `json:"respiratory_rate"`
	SleepPerformancePercentage *float64 `json:"sleep_performance_percentage"`
	SleepEfficiencyPercentage  *float64 `json:"sleep_efficiency_percentage"`
}

// Recovery is a v2 recovery.
type Recovery struct {
	CycleID    int64          `json:"cycle_id"`
	SleepID    string         `json:"sleep_id"`
	UserID     int64          `json:"user_id"`
	UpdatedAt  time.Time      `json:"updated_at"`
	ScoreState string         `json:"score_state"`
	Score      *RecoveryScore `json:"score"`
}

// RecoveryScore is a scored recovery's figures.
type RecoveryScore struct {
	RecoveryScore    *float64 `json:"recovery_score"`
	RestingHeartRate *float64 `json:"resting_heart_rate"`
	HrvRmssdMilli    *float64 `json:"hrv_rmssd_milli"`
	Spo2Percentage   *float64 `json:"spo2_percentage"`
	SkinTempCelsius  *float64 `json:"skin_temp_celsius"`
}

// Workout is a v2 workout.
type Workout struct {
	ID         string        `json:"id"`
	UserID     int64         `json:"user_id"`
	UpdatedAt  time.Time     `json:"updated_at"`
	Start      time.Time     `json:"start"`
	End        time.Time     `json:"end"`
	SportName  string        `json:"sport_name"`
	ScoreState string        `json:"score_state"`
	Score      *WorkoutScore `json:"score"`
}

// WorkoutScore is a scored workout's figures.
type WorkoutScore struct {
	Strain        *float64 `json:"strain"`
	Kilojoule     *float64 `json:"kilojoule"`
	DistanceMeter *float64 `json:"distance_meter"`
}

// API reads WHOOP records through the vendor's pooled client.
type API struct {
	c *vendorhttp.Client
}

// NewAPI wraps c, whose BaseURL is WHOOP_API_URL + APIPath.
func NewAPI(c *vendorhttp.Client) *API { return &API{c: c} }

// Sleep fetches a sleep by UUID.
func (a *API) Sleep(ctx context.Context, token, id string) (Sleep, error) {
	var s Sleep
	err := a.c.GetJSON(ctx, "sleep", "/v2/activity/sleep/"+url.PathEscape(id), token, &s)
	return s, err
}

// Workout fetches a workout by UUID.
func (a *API) Workout(ctx context.Context, token, id string) (Workout, error) {
	var w Workout
	err := a.c.GetJSON(ctx, "workout", "/v2/activity/workout/"+url.PathEscape(id), token, &w)
	return w, err
}

// CycleRecovery fetches the recovery of a cycle: the only way v2 reads one
// recovery.
func (a *API) CycleRecovery(ctx context.Context, token string, cycleID int64) (Recovery, error) {
	var r Recovery
	err := a.c.GetJSON(ctx, "cycle_recovery", "/v2/cycle/"+strconv.FormatInt(cycleID, 10)+"/recovery", token, &r)
	return r, err
}

// MaxPageSize is the largest page WHOOP's collections serve.
const MaxPageSize = 25

// Page is one page of a WHOOP collection: its records and the token of the
// next page ("" on the last).
type Page[T any] struct {
	Records   []T    `json:"records"`
	NextToken string `json:"next_token"`
}

// Collections WHOOP serves with start/end/limit/nextToken paging.
const (
	CollectionSleep    = "/v2/activity/sleep"
	CollectionWorkout  = "/v2/activity/workout"
	CollectionRecovery = "/v2/recovery"
)

// collection reads one page of path: records overlapping [start, end).
func collection[T any](ctx context.Context, a *API, endpoint, path, token string, start, end time.Time, next string) (Page[T], error) {
	q := url.Values{}
	q.Set("limit", strconv.Itoa(MaxPageSize))
	q.Set("start", start.UTC().Format(time.RFC3339Nano))
	q.Set("end", end.UTC().Format(time.RFC3339Nano))
	if next != "" {
		q.Set("nextToken", next)
	}
	var p Page[T]
	err := a.c.GetJSON(ctx, endpoint, path+"?"+q.Encode(), token, &p)
	return p, err
}

// Sleeps reads one page of the sleep collection.
func (a *API) Sleeps(ctx context.Context, token string, start, end time.Time, next string) (Page[Sleep], error) {
	return collection[Sleep](ctx, a, "sleep_collection", CollectionSleep, token, start, end, next)
}

// Workouts reads one page of the workout collection.
func (a *API) Workouts(ctx context.Context, token string, start, end time.Time, next string) (Page[Workout], error) {
	return collection[Workout](ctx, a, "workout_collection", CollectionWorkout, token, start, end, next)
}

// Recoveries reads one page of the recovery collection (recoveries whose
// cycle overlaps [start, end)).
func (a *API) Recoveries(ctx context.Context, token string, start, end time.Time, next string) (Page[Recovery], error) {
	return collection[Recovery](ctx, a, "recovery_collection", CollectionRecovery, token, start, end, next)
}

// ErrIncomplete is a record that cannot be placed in time (no start or
// end): it is reported, not retried.
var ErrIncomplete = errors.New("record without start or end time")

// Normalized is one record ready for WriteEvents, with what was skipped.
type Normalized struct {
	Event   *persistencev1.EventInput
	Skipped []readings.Skipped
}

func event(userID, kind, id string, updated time.Time, set *readings.Set) Normalized {
	ev := &persistencev1.EventInput{
		UserId: userID, Source: biometricsv1.Source_SOURCE_WHOOP, Kind: kind, VendorRecordId: id,
		Readings: set.Readings,
	}
	if !updated.IsZero() {
		ev.OccurredAt = timestamppb.New(updated)
	}
	return Normalized{Event: ev, Skipped: set.Skipped}
}

// NormalizeSleep turns a SCORED sleep into readings: time asleep (light +
// deep + REM), the stages and time awake in seconds, efficiency and
// performance (as sleep_score) in percent, respiratory rate. Every reading
// is observed at the sleep's end and covers the sleep.
func NormalizeSleep(userID string, s Sleep) (Normalized, error) {
	if s.Start.IsZero() || s.End.IsZero() {
		return Normalized{}, ErrIncomplete
	}
	set := readings.New(device())
	if sc := s.Score; sc != nil {
		st := sc.StageSummary
		asleep := st.TotalLightSleepTimeMilli + st.TotalSlowWaveSleepTimeMilli + st.TotalRemSleepTimeMilli
		set.Add("sleep_duration_s", readings.MillisToSeconds(asleep), s.End, s.Start)
		set.Add("light_sleep_s", readings.MillisToSeconds(st.TotalLightSleepTimeMilli), s.End, s.Start)
		set.Add("deep_sleep_s", readings.MillisToSeconds(st.TotalSlowWaveSleepTimeMilli), s.End, s.Start)
		set.Add("rem_sleep_s", readings.MillisToSeconds(st.TotalRemSleepTimeMilli), s.End, s.Start)
		set.Add("awake_s", readings.MillisToSeconds(st.TotalAwakeTimeMilli), s.End, s.Start)
		set.AddPtr("sleep_efficiency_pct", sc.SleepEfficiencyPercentage, s.End, s.Start)
		set.AddPtr("sleep_score", sc.SleepPerformancePercentage, s.End, s.Start)
		set.AddPtr("respiratory_rate_brpm", sc.RespiratoryRate, s.End, s.Start)
	}
	return event(userID, KindSleep, s.ID, s.UpdatedAt, set), nil
}

// NormalizeRecovery turns a SCORED recovery into readings observed at the
// end of the sleep it follows. HRV is RMSSD in milliseconds and stays
// hrv_rmssd_ms; SpO2 and skin temperature are absent on older devices.
func NormalizeRecovery(userID string, sleep Sleep, r Recovery) (Normalized, error) {
	if sleep.End.IsZero() {
		return Normalized{}, ErrIncomplete
	}
	set := readings.New(device())
	if sc := r.Score; sc != nil {
		set.AddPtr("recovery_score", sc.RecoveryScore, sleep.End, time.Time{})
		set.AddPtr("resting_heart_rate_bpm", sc.RestingHeartRate, sleep.End, time.Time{})
		set.AddPtr("hrv_rmssd_ms", sc.HrvRmssdMilli, sleep.End, time.Time{})
		if sc.Spo2Percentage != nil && *sc.Spo2Percentage > 0 {
			set.Add("spo2_pct", *sc.Spo2Percentage, sleep.End, time.Time{})
		}
		if sc.SkinTempCelsius != nil && *sc.SkinTempCelsius > 0 {
			set.Add("skin_temp_c", *sc.SkinTempCelsius, sleep.End, time.Time{})
		}
	}
	return event(userID, KindRecovery, RecoveryRecordID(sleep.ID), r.UpdatedAt, set), nil
}

// NormalizeWorkout turns a SCORED workout into strain, active energy (kJ
// → kcal) and distance, observed at its end and covering it.
func NormalizeWorkout(userID string, w Workout) (Normalized, error) {
	if w.Start.IsZero() || w.End.IsZero() {
		return Normalized{}, ErrIncomplete
	}
	set := readings.New(device())
	if sc := w.Score; sc != nil {
		set.AddPtr("strain", sc.Strain, w.End, w.Start)
		if sc.Kilojoule != nil {
			set.Add("active_energy_kcal", readings.KilojoulesToKcal(*sc.Kilojoule), w.End, w.Start)
		}
		set.AddPtr("distance_m", sc.DistanceMeter, w.End, w.Start)
	}
	return event(userID, KindWorkout, w.ID, w.UpdatedAt, set), nil
}
