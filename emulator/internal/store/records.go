package store

import (
	"encoding/json"
	"fmt"
	"math"
	"sort"
	"strings"
	"time"
)

// WHOOP score states.
const (
	ScoreStateScored     = "SCORED"
	ScoreStatePending    = "PENDING_SCORE"
	ScoreStateUnscorable = "UNSCORABLE"
)

// Person is one emulated user, who wears both a WHOOP and an Oura ring,
// with every record the two vendors hold for them.
type Person struct {
	Name, Email         string
	FirstName, LastName string
	WhoopID             int64
	OuraID              string
	Offset              time.Duration
	Base                Baseline

	Cycles     map[int64]*WhoopCycle
	Sleeps     map[string]*WhoopSleep
	Recoveries map[int64]*WhoopRecovery // by cycle id: one recovery per cycle
	Workouts   map[string]*WhoopWorkout

	Oura      map[string]map[string]*OuraDoc // data_type -> document id -> document
	Heartrate []*OuraHR                      // sorted by time, one sample per timestamp
}

// Zone is the user's fixed UTC offset as a location.
func (u *Person) Zone() *time.Location { return time.FixedZone("", int(u.Offset.Seconds())) }

// FieldSet maps a vendor JSON field name to a setter, so admin callers can
// pin exact values ("recovery_score": 87) on top of the synthetic ones.
type FieldSet map[string]func(float64)

// Merge adds o's setters to fs.
func (fs FieldSet) Merge(o FieldSet) {
	for k, v := range o {
		fs[k] = v
	}
}

// Apply sets vals through fs. It checks every key before setting any, so a bad request changes
// nothing.
func (fs FieldSet) Apply(vals map[string]float64) error {
	for k, v := range vals {
		if _, ok := fs[k]; !ok {
			keys := make([]string, 0, len(fs))
			for name := range fs {
				keys = append(keys, name)
			}
			sort.Strings(keys)
			return fmt.Errorf("%w: unknown value %q (allowed: %s)", ErrInvalid, k, strings.Join(keys, ", "))
		}
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("%w: value %q is not a finite number", ErrInvalid, k)
		}
	}
	for k, v := range vals {
		fs[k](v)
	}
	return nil
}

// SetF, SetInt, SetI64, SetBool and SetFPtr make the setters of a
// FieldSet; the integer ones round.
func SetF(p *float64) func(float64) { return func(v float64) { *p = v } }
func SetInt(p *int) func(float64)   { return func(v float64) { *p = int(math.Round(v)) } }
func SetI64(p *int64) func(float64) { return func(v float64) { *p = int64(math.Round(v)) } }
func SetBool(p *bool) func(float64) { return func(v float64) { *p = v != 0 } }
func SetFPtr(p **float64) func(float64) {
	return func(v float64) { x := v; *p = &x }
}

// MustJSON marshals v, which holds only plain structs of numbers and
// strings; it returns null if that ever fails.
func MustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		// Only plain structs of numbers and strings are marshalled here.
		return json.RawMessage(`null`)
	}
	return b
}

// WHOOP v2 documents, field for field as the API serves them. Each scored
// record keeps its score in Prepared; the Score pointer is set only while
// score_state is SCORED, so PENDING_SCORE records are served without a
// score and reveal the prepared one when scored.

type WhoopCycle struct {
	ID             int64            `json:"id"`
	UserID         int64            `json:"user_id"`
	CreatedAt      time.Time        `json:"created_at"`
	UpdatedAt      time.Time        `json:"updated_at"`
	Start          time.Time        `json:"start"`
	End            *time.Time       `json:"end"`
	TimezoneOffset string           `json:"timezone_offset"`
	ScoreState     string           `json:"score_state"`
	Score          *WhoopCycleScore `json:"score,omitempty"`
	Prepared       WhoopCycleScore  `json:"-"` // the score served once SCORED
}

type WhoopCycleScore struct {
	Strain           float64 `json:"strain"`
	Kilojoule        float64 `json:"kilojoule"`
	AverageHeartRate int     `json:"average_heart_rate"`
	MaxHeartRate     int     `json:"max_heart_rate"`
}

type WhoopSleep struct {
	ID             string           `json:"id"`
	CycleID        int64            `json:"cycle_id"`
	UserID         int64            `json:"user_id"`
	CreatedAt      time.Time        `json:"created_at"`
	UpdatedAt      time.Time        `json:"updated_at"`
	Start          time.Time        `json:"start"`
	End            time.Time        `json:"end"`
	TimezoneOffset string           `json:"timezone_offset"`
	Nap            bool             `json:"nap"`
	ScoreState     string           `json:"score_state"`
	Score          *WhoopSleepScore `json:"score,omitempty"`
	Prepared       WhoopSleepScore  `json:"-"` // the score served once SCORED
}

type WhoopSleepScore struct {
	StageSummary               WhoopStageSummary `json:"stage_summary"`
	SleepNeeded                WhoopSleepNeeded  `json:"sleep_needed"`
	RespiratoryRate            float64           `json:"respiratory_rate"`
	SleepPerformancePercentage float64           `json:"sleep_performance_percentage"`
	SleepConsistencyPercentage float64           `json:"sleep_consistency_percentage"`
	SleepEfficiencyPercentage  float64           `json:"sleep_efficiency_percentage"`
}

type WhoopStageSummary struct {
	TotalInBedTimeMilli         int64 `json:"total_in_bed_time_milli"`
	TotalAwakeTimeMilli         int64 `json:"total_awake_time_milli"`
	TotalNoDataTimeMilli        int64 `json:"total_no_data_time_milli"`
	TotalLightSleepTimeMilli    int64 `json:"total_light_sleep_time_milli"`
	TotalSlowWaveSleepTimeMilli int64 `json:"total_slow_wave_sleep_time_milli"`
	TotalRemSleepTimeMilli      int64 `json:"total_rem_sleep_time_milli"`
	SleepCycleCount             int   `json:"sleep_cycle_count"`
	DisturbanceCount            int   `json:"disturbance_count"`
}

type WhoopSleepNeeded struct {
	BaselineMilli             int64 `json:"baseline_milli"`
	NeedFromSleepDebtMilli    int64 `json:"need_from_sleep_debt_milli"`
	NeedFromRecentStrainMilli int64 `json:"need_from_recent_strain_milli"`
	NeedFromRecentNapMilli    int64 `json:"need_from_recent_nap_milli"`
}

type WhoopRecovery struct {
	CycleID    int64               `json:"cycle_id"`
	SleepID    string              `json:"sleep_id"`
	UserID     int64               `json:"user_id"`
	CreatedAt  time.Time           `json:"created_at"`
	UpdatedAt  time.Time           `json:"updated_at"`
	ScoreState string              `json:"score_state"`
	Score      *WhoopRecoveryScore `json:"score,omitempty"`
	Prepared   WhoopRecoveryScore  `json:"-"` // the score served once SCORED
}

type WhoopRecoveryScore struct {
	UserCalibrating  bool    `json:"user_calibrating"`
	RecoveryScore    float64 `json:"recovery_score"`
	RestingHeartRate float64 `json:"resting_heart_rate"`
	HrvRmssdMilli    float64 `json:"hrv_rmssd_milli"`
	Spo2Percentage   float64 `json:"spo2_percentage"`
	SkinTempCelsius  float64 `json:"skin_temp_celsius"`
}

type WhoopWorkout struct {
	ID             string             `json:"id"`
	UserID         int64              `json:"user_id"`
	CreatedAt      time.Time          `json:"created_at"`
	UpdatedAt      time.Time          `json:"updated_at"`
	Start          time.Time          `json:"start"`
	End            time.Time          `json:"end"`
	TimezoneOffset string             `json:"timezone_offset"`
	SportName      string             `json:"sport_name"`
	SportID        int                `json:"sport_id"`
	ScoreState     string             `json:"score_state"`
	Score          *WhoopWorkoutScore `json:"score,omitempty"`
	Prepared       WhoopWorkoutScore  `json:"-"` // the score served once SCORED
}

type WhoopWorkoutScore struct {
	Strain              float64            `json:"strain"`
	AverageHeartRate    int                `json:"average_heart_rate"`
	MaxHeartRate        int                `json:"max_heart_rate"`
	Kilojoule           float64            `json:"kilojoule"`
	PercentRecorded     float64            `json:"percent_recorded"`
	DistanceMeter       *float64           `json:"distance_meter,omitempty"`
	AltitudeGainMeter   *float64           `json:"altitude_gain_meter,omitempty"`
	AltitudeChangeMeter *float64           `json:"altitude_change_meter,omitempty"`
	ZoneDurations       WhoopZoneDurations `json:"zone_durations"`
}

type WhoopZoneDurations struct {
	ZoneZeroMilli  int64 `json:"zone_zero_milli"`
	ZoneOneMilli   int64 `json:"zone_one_milli"`
	ZoneTwoMilli   int64 `json:"zone_two_milli"`
	ZoneThreeMilli int64 `json:"zone_three_milli"`
	ZoneFourMilli  int64 `json:"zone_four_milli"`
	ZoneFiveMilli  int64 `json:"zone_five_milli"`
}

// SetScoreState switches what is served; the prepared score is kept.
func (c *WhoopCycle) SetScoreState(s string) {
	c.ScoreState, c.Score = s, nil
	if s == ScoreStateScored {
		c.Score = &c.Prepared
	}
}

// SetScoreState switches what is served; the prepared score is kept.
func (s *WhoopSleep) SetScoreState(st string) {
	s.ScoreState, s.Score = st, nil
	if st == ScoreStateScored {
		s.Score = &s.Prepared
	}
}

// SetScoreState switches what is served; the prepared score is kept.
func (r *WhoopRecovery) SetScoreState(s string) {
	r.ScoreState, r.Score = s, nil
	if s == ScoreStateScored {
		r.Score = &r.Prepared
	}
}

// SetScoreState switches what is served; the prepared score is kept.
func (w *WhoopWorkout) SetScoreState(s string) {
	w.ScoreState, w.Score = s, nil
	if s == ScoreStateScored {
		w.Score = &w.Prepared
	}
}

// Fields are the values of a WhoopCycle a caller may set, by JSON name.
func (c *WhoopCycle) Fields() FieldSet {
	return FieldSet{
		"strain":             SetF(&c.Prepared.Strain),
		"kilojoule":          SetF(&c.Prepared.Kilojoule),
		"average_heart_rate": SetInt(&c.Prepared.AverageHeartRate),
		"max_heart_rate":     SetInt(&c.Prepared.MaxHeartRate),
	}
}

// Fields are the values of a WhoopSleep a caller may set, by JSON name.
func (s *WhoopSleep) Fields() FieldSet {
	sc := &s.Prepared
	return FieldSet{
		"respiratory_rate":                 SetF(&sc.RespiratoryRate),
		"sleep_performance_percentage":     SetF(&sc.SleepPerformancePercentage),
		"sleep_consistency_percentage":     SetF(&sc.SleepConsistencyPercentage),
		"sleep_efficiency_percentage":      SetF(&sc.SleepEfficiencyPercentage),
		"total_in_bed_time_milli":          SetI64(&sc.StageSummary.TotalInBedTimeMilli),
		"total_awake_time_milli":           SetI64(&sc.StageSummary.TotalAwakeTimeMilli),
		"total_no_data_time_milli":         SetI64(&sc.StageSummary.TotalNoDataTimeMilli),
		"total_light_sleep_time_milli":     SetI64(&sc.StageSummary.TotalLightSleepTimeMilli),
		"total_slow_wave_sleep_time_milli": SetI64(&sc.StageSummary.TotalSlowWaveSleepTimeMilli),
		"total_rem_sleep_time_milli":       SetI64(&sc.StageSummary.TotalRemSleepTimeMilli),
		"sleep_cycle_count":                SetInt(&sc.StageSummary.SleepCycleCount),
		"disturbance_count":                SetInt(&sc.StageSummary.DisturbanceCount),
	}
}

// Fields are the values of a WhoopRecovery a caller may set, by JSON name.
func (r *WhoopRecovery) Fields() FieldSet {
	sc := &r.Prepared
	return FieldSet{
		"recovery_score":     SetF(&sc.RecoveryScore),
		"resting_heart_rate": SetF(&sc.RestingHeartRate),
		"hrv_rmssd_milli":    SetF(&sc.HrvRmssdMilli),
		"spo2_percentage":    SetF(&sc.Spo2Percentage),
		"skin_temp_celsius":  SetF(&sc.SkinTempCelsius),
		"user_calibrating":   SetBool(&sc.UserCalibrating),
	}
}

// Fields are the values of a WhoopWorkout a caller may set, by JSON name.
func (w *WhoopWorkout) Fields() FieldSet {
	sc := &w.Prepared
	return FieldSet{
		"strain":                SetF(&sc.Strain),
		"average_heart_rate":    SetInt(&sc.AverageHeartRate),
		"max_heart_rate":        SetInt(&sc.MaxHeartRate),
		"kilojoule":             SetF(&sc.Kilojoule),
		"percent_recorded":      SetF(&sc.PercentRecorded),
		"distance_meter":        SetFPtr(&sc.DistanceMeter),
		"altitude_gain_meter":   SetFPtr(&sc.AltitudeGainMeter),
		"altitude_change_meter": SetFPtr(&sc.AltitudeChangeMeter),
		"zone_zero_milli":       SetI64(&sc.ZoneDurations.ZoneZeroMilli),
		"zone_one_milli":        SetI64(&sc.ZoneDurations.ZoneOneMilli),
		"zone_two_milli":        SetI64(&sc.ZoneDurations.ZoneTwoMilli),
		"zone_three_milli":      SetI64(&sc.ZoneDurations.ZoneThreeMilli),
		"zone_four_milli":       SetI64(&sc.ZoneDurations.ZoneFourMilli),
		"zone_five_milli":       SetI64(&sc.ZoneDurations.ZoneFiveMilli),
	}
}

// Oura v2 documents, field for field as the API serves them.

type OuraSleep struct {
	ID                    string              `json:"id"`
	AverageBreath         float64             `json:"average_breath"`
	AverageHeartRate      float64             `json:"average_heart_rate"`
	AverageHrv            int                 `json:"average_hrv"`
	AwakeTime             int                 `json:"awake_time"`
	BedtimeEnd            string              `json:"bedtime_end"`
	BedtimeStart          string              `json:"bedtime_start"`
	Day                   string              `json:"day"`
	DeepSleepDuration     int                 `json:"deep_sleep_duration"`
	Efficiency            int                 `json:"efficiency"`
	HeartRate             *OuraSample         `json:"heart_rate"`
	Hrv                   *OuraSample         `json:"hrv"`
	Latency               int                 `json:"latency"`
	LightSleepDuration    int                 `json:"light_sleep_duration"`
	LowBatteryAlert       bool                `json:"low_battery_alert"`
	LowestHeartRate       int                 `json:"lowest_heart_rate"`
	Period                int                 `json:"period"`
	Readiness             *OuraSleepReadiness `json:"readiness"`
	ReadinessScoreDelta   *float64            `json:"readiness_score_delta"`
	RemSleepDuration      int                 `json:"rem_sleep_duration"`
	RestlessPeriods       int                 `json:"restless_periods"`
	SleepAlgorithmVersion string              `json:"sleep_algorithm_version"`
	SleepPhase5Min        string              `json:"sleep_phase_5_min"`
	SleepScoreDelta       *float64            `json:"sleep_score_delta"`
	TimeInBed             int                 `json:"time_in_bed"`
	TotalSleepDuration    int                 `json:"total_sleep_duration"`
	Type                  string              `json:"type"`
}

type OuraSample struct {
	Interval  float64    `json:"interval"`
	Items     []*float64 `json:"items"`
	Timestamp string     `json:"timestamp"`
}

type OuraSleepReadiness struct {
	Contributors              OuraReadinessContributors `json:"contributors"`
	Score                     int                       `json:"score"`
	TemperatureDeviation      float64                   `json:"temperature_deviation"`
	TemperatureTrendDeviation float64                   `json:"temperature_trend_deviation"`
}

type OuraReadinessContributors struct {
	ActivityBalance     int `json:"activity_balance"`
	BodyTemperature     int `json:"body_temperature"`
	HrvBalance          int `json:"hrv_balance"`
	PreviousDayActivity int `json:"previous_day_activity"`
	PreviousNight       int `json:"previous_night"`
	RecoveryIndex       int `json:"recovery_index"`
	RestingHeartRate    int `json:"resting_heart_rate"`
	SleepBalance        int `json:"sleep_balance"`
}

type OuraDailySleep struct {
	ID           string                `json:"id"`
	Contributors OuraSleepContributors `json:"contributors"`
	Day          string                `json:"day"`
	Score        int                   `json:"score"`
	Timestamp    string                `json:"timestamp"`
}

type OuraSleepContributors struct {
	DeepSleep   int `json:"deep_sleep"`
	Efficiency  int `json:"efficiency"`
	Latency     int `json:"latency"`
	RemSleep    int `json:"rem_sleep"`
	Restfulness int `json:"restfulness"`
	Timing      int `json:"timing"`
	TotalSleep  int `json:"total_sleep"`
}

type OuraDailyReadiness struct {
	ID                        string                    `json:"id"`
	Contributors              OuraReadinessContributors `json:"contributors"`
	Day                       string                    `json:"day"`
	Score                     int                       `json:"score"`
	TemperatureDeviation      float64                   `json:"temperature_deviation"`
	TemperatureTrendDeviation float64                   `json:"temperature_trend_deviation"`
	Timestamp                 string                    `json:"timestamp"`
}

type OuraDailySpo2 struct {
	ID                        string          `json:"id"`
	Day                       string          `json:"day"`
	Spo2Percentage            *OuraSpo2Figure `json:"spo2_percentage"`
	BreathingDisturbanceIndex int             `json:"breathing_disturbance_index"`
}

type OuraSpo2Figure struct {
	Average float64 `json:"average"`
}

// OuraHR is one heartrate sample; T is the parsed timestamp for filtering.
type OuraHR struct {
	BPM       int       `json:"bpm"`
	Source    string    `json:"source"`
	Timestamp string    `json:"timestamp"`
	T         time.Time `json:"-"`
}

// Fields are the values of a OuraSleep a caller may set, by JSON name.
func (s *OuraSleep) Fields() FieldSet {
	return FieldSet{
		"average_breath":              SetF(&s.AverageBreath),
		"average_heart_rate":          SetF(&s.AverageHeartRate),
		"average_hrv":                 SetInt(&s.AverageHrv),
		"awake_time":                  SetInt(&s.AwakeTime),
		"deep_sleep_duration":         SetInt(&s.DeepSleepDuration),
		"efficiency":                  SetInt(&s.Efficiency),
		"latency":                     SetInt(&s.Latency),
		"light_sleep_duration":        SetInt(&s.LightSleepDuration),
		"lowest_heart_rate":           SetInt(&s.LowestHeartRate),
		"rem_sleep_duration":          SetInt(&s.RemSleepDuration),
		"time_in_bed":                 SetInt(&s.TimeInBed),
		"total_sleep_duration":        SetInt(&s.TotalSleepDuration),
		"readiness_score":             SetInt(&s.Readiness.Score),
		"temperature_deviation":       SetF(&s.Readiness.TemperatureDeviation),
		"temperature_trend_deviation": SetF(&s.Readiness.TemperatureTrendDeviation),
	}
}

// Fields are the values of a OuraReadinessContributors a caller may set, by JSON name.
func (c *OuraReadinessContributors) Fields() FieldSet {
	return FieldSet{
		"activity_balance": SetInt(&c.ActivityBalance), "body_temperature": SetInt(&c.BodyTemperature),
		"hrv_balance": SetInt(&c.HrvBalance), "previous_day_activity": SetInt(&c.PreviousDayActivity),
		"previous_night": SetInt(&c.PreviousNight), "recovery_index": SetInt(&c.RecoveryIndex),
		"resting_heart_rate": SetInt(&c.RestingHeartRate), "sleep_balance": SetInt(&c.SleepBalance),
	}
}

// Fields are the values of a OuraDailySleep a caller may set, by JSON name.
func (d *OuraDailySleep) Fields() FieldSet {
	c := &d.Contributors
	return FieldSet{
		"score": SetInt(&d.Score), "deep_sleep": SetInt(&c.DeepSleep), "efficiency": SetInt(&c.Efficiency),
		"latency": SetInt(&c.Latency), "rem_sleep": SetInt(&c.RemSleep), "restfulness": SetInt(&c.Restfulness),
		"timing": SetInt(&c.Timing), "total_sleep": SetInt(&c.TotalSleep),
	}
}

// Fields are the values of a OuraDailyReadiness a caller may set, by JSON name.
func (d *OuraDailyReadiness) Fields() FieldSet {
	fs := d.Contributors.Fields()
	fs.Merge(FieldSet{
		"score":                       SetInt(&d.Score),
		"temperature_deviation":       SetF(&d.TemperatureDeviation),
		"temperature_trend_deviation": SetF(&d.TemperatureTrendDeviation),
	})
	return fs
}

// Fields are the values of a OuraDailySpo2 a caller may set, by JSON name.
func (d *OuraDailySpo2) Fields() FieldSet {
	return FieldSet{
		"spo2_percentage":             SetF(&d.Spo2Percentage.Average),
		"breathing_disturbance_index": SetInt(&d.BreathingDisturbanceIndex),
	}
}

// OuraValue is a stored Oura document.
type OuraValue interface{ Fields() FieldSet }

// OuraDoc is a stored Oura document with its sort key (TS).
type OuraDoc struct {
	ID, DataType, Day string
	TS                time.Time
	V                 OuraValue
}

// Record is the document as the Go API reports it.
func (d *OuraDoc) Record(u *Person) Record {
	return Record{Vendor: Oura, Type: d.DataType, ID: d.ID, User: u.Name, Data: MustJSON(d.V)}
}

// Baseline is one emulated person's physiology. Every generated night and
// day varies around it, so a user's WHOOP and Oura numbers agree with each
// other and stay plausible over weeks of history.
type Baseline struct {
	RestingHR   float64 // bpm
	HRV         float64 // RMSSD, ms
	RespRate    float64 // breaths/min
	SpO2        float64 // %
	SkinTemp    float64 // °C (WHOOP wrist skin temperature)
	SleepNeed   float64 // hours
	MaxHR       float64 // bpm
	WeightKg    float64
	HeightM     float64
	Age         int
	Female      bool
	BedtimeHour float64 // local hour of sleep onset, e.g. 23.2
}
