// Package readings collects the catalog readings of one vendor record,
// validating each against the metric catalog as it is added. A value the
// catalog rejects is skipped with a stable reason (counted by the caller)
// instead of failing the record: one implausible figure must not cost the
// user the rest of the night's data, and persistence would reject it anyway.
package readings

import (
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	"github.com/biobridge/bridge/pkg/catalog"
)

// Skipped is one value that was not turned into a reading.
type Skipped struct {
	Metric string
	Reason string
}

// Set is the readings of one record.
type Set struct {
	device   *biometricsv1.Device
	Readings []*biometricsv1.Reading
	Skipped  []Skipped
}

// New returns an empty set whose readings carry device.
func New(device *biometricsv1.Device) *Set { return &Set{device: device} }

// Add adds metric = v observed at end (covering [start, end] when start is
// not zero), if the catalog accepts it.
func (s *Set) Add(metric string, v float64, end, start time.Time) {
	m, reason, _ := catalog.Validate(metric, v)
	if reason != "" {
		s.Skipped = append(s.Skipped, Skipped{Metric: metric, Reason: reason})
		return
	}
	r := &biometricsv1.Reading{Metric: metric, Value: v, Unit: m.Unit, ObservedAt: timestamppb.New(end), Device: s.device}
	if !start.IsZero() {
		r.StartTime = timestamppb.New(start)
	}
	s.Readings = append(s.Readings, r)
}

// AddPtr adds *v when v is not nil: vendors send null for figures a device
// did not measure, and null is not zero.
func (s *Set) AddPtr(metric string, v *float64, end, start time.Time) {
	if v != nil {
		s.Add(metric, *v, end, start)
	}
}

// Conversions into the catalog's canonical units.

// MillisToSeconds converts WHOOP's *_milli durations.
func MillisToSeconds(ms int64) float64 { return float64(ms) / 1000 }

// KilojoulesToKcal converts WHOOP's kilojoule figures (1 kcal = 4.184 kJ).
func KilojoulesToKcal(kj float64) float64 { return kj / 4.184 }
