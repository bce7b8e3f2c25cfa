// Package oura fetches Oura v2 usercollection documents and turns them
// into catalog readings. The record identity is the Oura document id; the
// record kind is the data type. Oura reports HRV as RMSSD (average_hrv, in
// ms), which stays hrv_rmssd_ms, durations in seconds and percentages as
// 0–100.
package oura

import (
	"context"
	"errors"
	"net/url"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	"github.com/biobridge/bridge/services/ingest/internal/readings"
	"github.com/biobridge/bridge/services/ingest/vendorhttp"
)

// The data types the bridge reads. Webhooks for others are acknowledged
// and ignored.
const (
	Sleep          = "sleep"
	DailySleep     = "daily_sleep"
	DailyReadiness = "daily_readiness"
	DailySpO2      = "daily_spo2"
	DailyActivity  = "daily_activity"
)

// DataTypes are the data types the bridge reads, in a stable order (the
// subscriptions it keeps and the collections it backfills).
var DataTypes = []string{Sleep, DailySleep, DailyReadiness, DailySpO2, DailyActivity}

// Supported reports whether the bridge reads dataType.
func Supported(dataType string) bool {
	switch dataType {
	case Sleep, DailySleep, DailyReadiness, DailySpO2, DailyActivity:
		return true
	}
	return false
}

// device is the provenance of every Oura reading (a fresh value each time:
// readings must not share mutable messages).
func device() *biometricsv1.Device { return &biometricsv1.Device{Name: "Oura Ring"} }

// Document is any of the supported documents; only the fields the bridge
// uses are decoded. Numbers are pointers because Oura sends null for what
// the ring did not measure.
type Document struct {
	ID        string `json:"id"`
	Day       string `json:"day"`
	Timestamp string `json:"timestamp"`

	// sleep
	BedtimeStart       string   `json:"bedtime_start"`
	BedtimeEnd         string   `json:"bedtime_end"`
	AverageHRV         *float64 `json:"average_hrv"`
	AverageHeartRate   *float64 `json:"average_heart_rate"`
	LowestHeartRate    *float64 `json:"lowest_heart_rate"`
	AverageBreath      *float64 `json:"average_breath"`
	Efficiency         *float64 `json:"efficiency"`
	TotalSleepDuration *float64 `json:"total_sleep_duration"`
	DeepSleepDuration  *float64 `json:"deep_sleep_duration"`
	LightSleepDuration *float64 `json:"light_sleep_duration"`
	RemSleepDuration   *float64 `json:"rem_sleep_duration"`
	AwakeTime          *float64 `json:"awake_time"`

	// daily_sleep, daily_readiness, daily_activity
	Score *float64 `json:"score"`
	// daily_readiness
	TemperatureDeviation *float64 `json:"temperature_deviation"`
	// daily_spo2
	SpO2Percentage *struct {
		Average *float64 `json:"average"`
	} `json:"spo2_percentage"`
	// daily_activity
	Steps          *float64 `json:"steps"`
	ActiveCalories *float64 `json:"active_calories"`
}

// API reads Oura documents through the vendor's pooled client.
type API struct {
	c *vendorhttp.Client
}

// NewAPI wraps c, whose BaseURL is OURA_API_URL.
func NewAPI(c *vendorhttp.Client) *API { return &API{c: c} }

// Document fetches one document of dataType.
func (a *API) Document(ctx context.Context, token, dataType, id string) (Document, error) {
	var d Document
	err := a.c.GetJSON(ctx, "usercollection/"+dataType,
		"/v2/usercollection/"+url.PathEscape(dataType)+"/"+url.PathEscape(id), token, &d)
	return d, err
}

// Page is one page of a usercollection.
type Page struct {
	Data      []Document `json:"data"`
	NextToken string     `json:"next_token"`
}

// Documents reads one page of the dataType collection for the days from
// start to end. Both days are padded by one: the API reference says both
// bounds are inclusive, but the live API has been seen leaving out the
// start day (sleep) or the end day (daily documents), and the days are the
// user's local ones, which may differ from UTC's. Documents outside the
// window cost nothing: persistence keeps one copy per document id.
func (a *API) Documents(ctx context.Context, token, dataType string, start, end time.Time, next string) (Page, error) {
	q := url.Values{}
	startDay, endDay := PaddedRange(start, end)
	q.Set("start_date", startDay)
	q.Set("end_date", endDay)
	if next != "" {
		q.Set("next_token", next)
	}
	var p Page
	err := a.c.GetJSON(ctx, "usercollection/"+dataType+"/list",
		"/v2/usercollection/"+url.PathEscape(dataType)+"?"+q.Encode(), token, &p)
	return p, err
}

// PaddedRange is the start_date and end_date asked for [start, end]: one
// day more on each side (see Documents).
func PaddedRange(start, end time.Time) (string, string) {
	return start.UTC().AddDate(0, 0, -1).Format(time.DateOnly), end.UTC().AddDate(0, 0, 1).Format(time.DateOnly)
}

// ErrIncomplete is a document that cannot be placed in time.
var ErrIncomplete = errors.New("document without a usable time")

// ErrUnsupported is a data type the bridge does not read.
var ErrUnsupported = errors.New("unsupported data type")

// Normalized is one record ready for WriteEvents, with what was skipped.
type Normalized struct {
	Event   *persistencev1.EventInput
	Skipped []readings.Skipped
}

// Normalize turns a document of dataType into readings. changedAt (the
// webhook's event_time; zero when unknown) becomes the event's occurred_at.
func Normalize(userID, dataType string, d Document, changedAt time.Time) (Normalized, error) {
	set := readings.New(device())
	switch dataType {
	case Sleep:
		start, okS := parseTime(d.BedtimeStart)
		end, okE := parseTime(d.BedtimeEnd)
		if !okS || !okE {
			return Normalized{}, ErrIncomplete
		}
		set.AddPtr("sleep_duration_s", d.TotalSleepDuration, end, start)
		set.AddPtr("deep_sleep_s", d.DeepSleepDuration, end, start)
		set.AddPtr("light_sleep_s", d.LightSleepDuration, end, start)
		set.AddPtr("rem_sleep_s", d.RemSleepDuration, end, start)
		set.AddPtr("awake_s", d.AwakeTime, end, start)
		set.AddPtr("sleep_efficiency_pct", d.Efficiency, end, start)
		set.AddPtr("respiratory_rate_brpm", d.AverageBreath, end, start)
		set.AddPtr("hrv_rmssd_ms", d.AverageHRV, end, start)
		// Oura's resting heart rate is the lowest heart rate of the night.
		set.AddPtr("resting_heart_rate_bpm", d.LowestHeartRate, end, start)
	case DailySleep, DailyReadiness, DailySpO2, DailyActivity:
		at, ok := dayTime(d)
		if !ok {
			return Normalized{}, ErrIncomplete
		}
		switch dataType {
		case DailySleep:
			set.AddPtr("sleep_score", d.Score, at, time.Time{})
		case DailyReadiness:
			set.AddPtr("readiness_score", d.Score, at, time.Time{})
			set.AddPtr("temperature_deviation_c", d.TemperatureDeviation, at, time.Time{})
		case DailySpO2:
			if d.SpO2Percentage != nil {
				set.AddPtr("spo2_pct", d.SpO2Percentage.Average, at, time.Time{})
			}
		case DailyActivity:
			set.AddPtr("steps", d.Steps, at, time.Time{})
			set.AddPtr("active_energy_kcal", d.ActiveCalories, at, time.Time{})
		}
	default:
		return Normalized{}, ErrUnsupported
	}
	ev := &persistencev1.EventInput{
		UserId: userID, Source: biometricsv1.Source_SOURCE_OURA, Kind: dataType, VendorRecordId: d.ID,
		Readings: set.Readings,
	}
	if !changedAt.IsZero() {
		ev.OccurredAt = timestamppb.New(changedAt)
	}
	return Normalized{Event: ev, Skipped: set.Skipped}, nil
}

// dayTime is when a daily document is observed: its timestamp (the start
// of the day in the user's zone) or, without one, the day at UTC midnight.
func dayTime(d Document) (time.Time, bool) {
	if t, ok := parseTime(d.Timestamp); ok {
		return t, true
	}
	t, err := time.Parse(time.DateOnly, d.Day)
	return t, err == nil
}

func parseTime(s string) (time.Time, bool) {
	if s == "" {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	return t, err == nil
}
