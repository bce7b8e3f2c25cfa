package record

import (
	"cmp"
	"strings"
	"time"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
)

// Latest is the newest stored reading of one metric for one user.
type Latest struct {
	Metric         string
	Value          float64
	ObservedAt     time.Time
	StartTime      time.Time
	Source         biometricsv1.Source
	VendorRecordID string
	// Seq is the reading's index in its record's sorted readings.
	Seq    int32
	Device Device
}

// CompareLatest orders two readings of the same metric: observed_at first,
// then source, vendor record id (bytewise) and seq, so that two readings
// observed at the same instant still have one winner. PostgreSQL uses the
// same order (the readings index, COLLATE "C"), which is what lets the
// cache and the database agree on ties.
func CompareLatest(a, b Latest) int {
	return cmp.Or(
		a.ObservedAt.Compare(b.ObservedAt),
		cmp.Compare(a.Source, b.Source),
		strings.Compare(a.VendorRecordID, b.VendorRecordID),
		cmp.Compare(a.Seq, b.Seq),
	)
}

// LatestOf returns the reading at seq of e as a Latest.
func (e *Event) LatestOf(seq int) Latest {
	r := e.Readings[seq]
	return Latest{
		Metric:         r.Metric,
		Value:          r.Value,
		ObservedAt:     r.ObservedAt,
		StartTime:      r.StartTime,
		Source:         e.Source,
		VendorRecordID: e.VendorRecordID,
		Seq:            int32(seq),
		Device:         r.Device,
	}
}

// Metrics returns the distinct metrics of e's readings, sorted.
func (e *Event) Metrics() []string {
	var out []string
	for _, r := range e.Readings {
		if len(out) == 0 || out[len(out)-1] != r.Metric {
			out = append(out, r.Metric)
		}
	}
	return out
}

// UserChange is what one committed transaction did to one user's latest
// values, in the order the cache must apply it: Seq is the user's commit
// counter after the transaction, Prev the value before it.
type UserChange struct {
	UserID    string
	Seq, Prev int64
	// Set holds metrics whose latest value changed, with the new value.
	Set []Latest
	// Removed holds metrics that no longer have any value.
	Removed []string
}
