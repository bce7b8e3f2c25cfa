package record_test

import (
	"encoding/hex"
	"math"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/timestamppb"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	"github.com/biobridge/bridge/services/persistence/internal/record"
)

func in(rs ...*biometricsv1.Reading) *persistencev1.EventInput {
	return &persistencev1.EventInput{UserId: "u", Source: biometricsv1.Source_SOURCE_WHOOP, Kind: "sleep", VendorRecordId: "r", Readings: rs}
}

func rd(metric string, v float64, at time.Time) *biometricsv1.Reading {
	return &biometricsv1.Reading{Metric: metric, Value: v, ObservedAt: timestamppb.New(at)}
}

func TestContentHash(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 11, 1, 7, 0, 0, 123456789, time.UTC)
	hash := func(e *persistencev1.EventInput) [32]byte {
		t.Helper()
		ev, _, reason, _ := record.Normalize(e)
		require.Empty(t, reason)
		return ev.Hash
	}
	base := hash(in(rd("sleep_score", 80, at), rd("deep_sleep_s", 3600, at)))
	for _, tc := range []struct {
		name string
		ev   *persistencev1.EventInput
		same bool
	}{
		{"readings reordered", in(rd("deep_sleep_s", 3600, at), rd("sleep_score", 80, at)), true},
		{"sub-microsecond difference", in(rd("sleep_score", 80, at.Add(1)), rd("deep_sleep_s", 3600, at)), true},
		{"invalid reading dropped", in(rd("sleep_score", 80, at), rd("deep_sleep_s", 3600, at), rd("mood", 1, at)), true},
		{"occurred_at bumped", func() *persistencev1.EventInput {
			e := in(rd("sleep_score", 80, at), rd("deep_sleep_s", 3600, at))
			e.OccurredAt = timestamppb.Now()
			return e
		}(), true},
		{"value changed", in(rd("sleep_score", 81, at), rd("deep_sleep_s", 3600, at)), false},
		{"time changed", in(rd("sleep_score", 80, at.Add(time.Second)), rd("deep_sleep_s", 3600, at)), false},
		{"reading added", in(rd("sleep_score", 80, at), rd("deep_sleep_s", 3600, at), rd("rem_sleep_s", 60, at)), false},
		{"device added", func() *persistencev1.EventInput {
			e := in(rd("sleep_score", 80, at), rd("deep_sleep_s", 3600, at))
			e.Readings[0].Device = &biometricsv1.Device{Name: "WHOOP 4.0"}
			return e
		}(), false},
	} {
		require.Equal(t, tc.same, hash(tc.ev) == base, tc.name)
	}
}

func TestNormalizeRejections(t *testing.T) {
	t.Parallel()
	at := time.Now()
	bad := rd("heart_rate_bpm", 60, at)
	bad.StartTime = timestamppb.New(at.Add(time.Hour))
	ev, rejected, reason, _ := record.Normalize(in(
		rd("heart_rate_bpm", math.NaN(), at), rd("heart_rate_bpm", 5, at), bad, rd("sleep_stage", 2.5, at), rd("heart_rate_bpm", 61, at)))
	require.Empty(t, reason)
	var reasons []string
	for _, r := range rejected {
		reasons = append(reasons, r.Reason)
	}
	require.Equal(t, []string{"not_finite", "out_of_range", "invalid_time", "out_of_range"}, reasons)
	require.Len(t, ev.Readings, 1)
	require.Equal(t, "bpm", ev.Readings[0].Unit)

	for name, e := range map[string]*persistencev1.EventInput{
		"no user":       {Source: biometricsv1.Source_SOURCE_WHOOP, VendorRecordId: "r", Readings: []*biometricsv1.Reading{rd("heart_rate_bpm", 60, at)}},
		"no source":     {UserId: "u", VendorRecordId: "r", Readings: []*biometricsv1.Reading{rd("heart_rate_bpm", 60, at)}},
		"no record id":  {UserId: "u", Source: biometricsv1.Source_SOURCE_WHOOP, Readings: []*biometricsv1.Reading{rd("heart_rate_bpm", 60, at)}},
		"NUL in id":     {UserId: "u", Source: biometricsv1.Source_SOURCE_WHOOP, VendorRecordId: "a\x00b", Readings: []*biometricsv1.Reading{rd("heart_rate_bpm", 60, at)}},
		"brace in user": {UserId: "u}", Source: biometricsv1.Source_SOURCE_WHOOP, VendorRecordId: "r", Readings: []*biometricsv1.Reading{rd("heart_rate_bpm", 60, at)}},
	} {
		_, _, reason, msg := record.Normalize(e)
		require.Equal(t, record.ReasonInvalidEvent, reason, name)
		require.NotEmpty(t, msg, name)
	}
	_, _, reason, _ = record.Normalize(in())
	require.Equal(t, record.ReasonNoValidReadings, reason)
}

// The content hash is stored with every record and compared with every
// redelivery: its encoding may never change, or every stored record would
// look changed to the next delivery of the same content. This pins it.
func TestContentHashEncodingIsStable(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 11, 1, 7, 0, 0, 123456789, time.UTC)
	withStart := rd("heart_rate_bpm", 61.5, at)
	withStart.StartTime = timestamppb.New(at.Add(-time.Minute))
	withStart.Device = &biometricsv1.Device{Name: "Apple Watch", Model: "Watch7,1", BundleId: "com.apple.health"}
	ev, _, reason, _ := record.Normalize(in(rd("sleep_score", 80, at), withStart, rd("deep_sleep_s", 3600, at)))
	require.Empty(t, reason)
	require.Equal(t, "e55a9897bf9621a235e72108dcbff7c2ede989c8b374f4057749df1dede038cd", hex.EncodeToString(ev.Hash[:]))
}

func BenchmarkNormalizeOneReading(b *testing.B) {
	at := time.Date(2026, 11, 1, 7, 0, 0, 0, time.UTC)
	r := rd("heart_rate_bpm", 61, at)
	r.Device = &biometricsv1.Device{Name: "Apple Watch", Model: "Watch7,1", BundleId: "com.apple.health"}
	e := &persistencev1.EventInput{UserId: "u", Source: biometricsv1.Source_SOURCE_HEALTHKIT, Kind: "heart_rate",
		VendorRecordId: "5D5C2A8E-8B2D-4F61-9C57-0C5E1F6B7A10", Readings: []*biometricsv1.Reading{r}}
	b.ReportAllocs()
	for b.Loop() {
		if _, _, reason, _ := record.Normalize(e); reason != "" {
			b.Fatal(reason)
		}
	}
}
