package oura

import (
	"context"
	"net/url"
	"sort"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	"github.com/biobridge/bridge/services/ingest/internal/readings"
)

// HeartRate is the heart-rate time series (5-minute samples, each with the
// context it was taken in: "awake", "rest", "sleep", "workout", ...). It
// is read by backfill and reconciliation only: Oura sends no webhook for
// it, so it is not among DataTypes (which the subscriptions follow).
const HeartRate = "heartrate"

// MaxHeartRateRange is the longest datetime range the heartrate collection
// accepts in one request; longer windows are read in slices of it.
const MaxHeartRateRange = 30 * 24 * time.Hour

// HeartRateSample is one sample of the series.
type HeartRateSample struct {
	BPM       *float64 `json:"bpm"`
	Source    string   `json:"source"`
	Timestamp string   `json:"timestamp"`
}

// HeartRatePage is one page of the series.
type HeartRatePage struct {
	Data      []HeartRateSample `json:"data"`
	NextToken string            `json:"next_token"`
}

// HeartRateSamples reads one page of samples with start <= timestamp < end
// (start_datetime and end_datetime: the series is addressed by instant,
// not by day like the documents).
func (a *API) HeartRateSamples(ctx context.Context, token string, start, end time.Time, next string) (HeartRatePage, error) {
	q := url.Values{}
	q.Set("start_datetime", start.UTC().Format(time.RFC3339))
	q.Set("end_datetime", end.UTC().Format(time.RFC3339))
	if next != "" {
		q.Set("next_token", next)
	}
	var p HeartRatePage
	err := a.c.GetJSON(ctx, "usercollection/heartrate/list", "/v2/usercollection/heartrate?"+q.Encode(), token, &p)
	return p, err
}

// HeartRateRecordID is the record identity of the sample taken at t. A
// sample has no id of its own; its instant is its identity (the series has
// one value per instant), so the same sample read again by a later
// backfill or reconciliation page is the same record, stored once.
func HeartRateRecordID(t time.Time) string { return HeartRate + ":" + t.UTC().Format(time.RFC3339) }

// NormalizeHeartRate turns samples into one heart_rate_bpm record each.
// Samples without a usable time or value are skipped; of several samples
// at one instant (the same sample on two pages, or two contexts at once)
// the first is kept.
func NormalizeHeartRate(userID string, samples []HeartRateSample) ([]*persistencev1.EventInput, []readings.Skipped) {
	seen := make(map[int64]bool, len(samples))
	var events []*persistencev1.EventInput
	var skipped []readings.Skipped
	for _, s := range samples {
		t, ok := parseTime(s.Timestamp)
		if !ok || s.BPM == nil {
			skipped = append(skipped, readings.Skipped{Metric: "heart_rate_bpm", Reason: "missing_time_or_value"})
			continue
		}
		t = t.UTC().Truncate(time.Second)
		if seen[t.Unix()] {
			continue
		}
		seen[t.Unix()] = true
		set := readings.New(device())
		set.Add("heart_rate_bpm", *s.BPM, t, time.Time{})
		skipped = append(skipped, set.Skipped...)
		if len(set.Readings) == 0 {
			continue
		}
		events = append(events, &persistencev1.EventInput{
			UserId: userID, Source: biometricsv1.Source_SOURCE_OURA, Kind: HeartRate, VendorRecordId: HeartRateRecordID(t),
			// A sample never changes once taken: its own time is when
			// its content was last changed at the source.
			OccurredAt: timestamppb.New(t),
			Readings:   set.Readings,
		})
	}
	sort.SliceStable(events, func(i, j int) bool { return events[i].GetVendorRecordId() < events[j].GetVendorRecordId() })
	return events, skipped
}
