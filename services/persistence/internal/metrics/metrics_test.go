package metrics

import (
	"math"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
)

// TestValueHistogramHidesExactValues: the value histogram keeps its bucket
// counts but its _sum is made of bucket bounds, so the difference between
// two scrapes cannot reveal a reading.
func TestValueHistogramHidesExactValues(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	m, err := New(reg)
	if err != nil {
		t.Fatal(err)
	}
	m.ObserveValue("heart_rate_bpm", biometricsv1.Source_SOURCE_HEALTHKIT, 72.4)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != "biobridge_persistence_reading_value" {
			continue
		}
		for _, mt := range f.GetMetric() {
			h := mt.GetHistogram()
			if h.GetSampleCount() != 1 {
				continue
			}
			if sum := h.GetSampleSum(); sum == 72.4 || math.Abs(sum-72.4) < 1e-9 {
				t.Fatalf("_sum reveals the exact value %v", sum)
			}
			for _, b := range h.GetBucket() {
				if b.GetUpperBound() == h.GetSampleSum() {
					return
				}
			}
			t.Fatalf("_sum %v is not a bucket bound", h.GetSampleSum())
		}
	}
	t.Fatal("no observation recorded")
}
