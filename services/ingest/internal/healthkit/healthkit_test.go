package healthkit

import (
	"testing"
	"time"

	ingestv1 "github.com/biobridge/bridge/gen/go/biobridge/ingest/v1"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/types/known/timestamppb"
)

func sample(uuid, typ string, v float64, unit string) *ingestv1.HealthKitSample {
	at := timestamppb.New(time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC))
	return &ingestv1.HealthKitSample{Uuid: uuid, Type: typ, Value: v, Unit: unit, StartDate: at, EndDate: at,
		Source: &ingestv1.HealthKitSource{Name: "Apple Watch", BundleId: "com.apple.health", DeviceModel: "Watch7,1"}}
}

func TestNormalize(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		in     *ingestv1.HealthKitSample
		status ingestv1.SampleStatus
		reason string
		metric string
		value  float64
	}{
		{"heart rate", sample("a", "HKQuantityTypeIdentifierHeartRate", 72, "count/min"), ingestv1.SampleStatus_SAMPLE_STATUS_ACCEPTED, "", "heart_rate_bpm", 72},
		{"spo2 fraction becomes percent", sample("b", "HKQuantityTypeIdentifierOxygenSaturation", 0.97, "%"), ingestv1.SampleStatus_SAMPLE_STATUS_ACCEPTED, "", "spo2_pct", 97},
		{"fahrenheit becomes celsius", sample("c", "HKQuantityTypeIdentifierBodyTemperature", 98.6, "degF"), ingestv1.SampleStatus_SAMPLE_STATUS_ACCEPTED, "", "body_temp_c", 37},
		{"sdnn stays sdnn", sample("d", "HKQuantityTypeIdentifierHeartRateVariabilitySDNN", 48, "ms"), ingestv1.SampleStatus_SAMPLE_STATUS_ACCEPTED, "", "hrv_sdnn_ms", 48},
		{"sleep category", sample("e", SleepAnalysis, 4, ""), ingestv1.SampleStatus_SAMPLE_STATUS_ACCEPTED, "", "sleep_stage", 4},
		{"kilometres become metres", sample("f", "HKQuantityTypeIdentifierDistanceWalkingRunning", 1.5, "km"), ingestv1.SampleStatus_SAMPLE_STATUS_ACCEPTED, "", "distance_m", 1500},
		{"heart rate out of range", sample("g", "HKQuantityTypeIdentifierHeartRate", 400, "count/min"), ingestv1.SampleStatus_SAMPLE_STATUS_REJECTED, "out_of_range", "", 0},
		{"spo2 sent as percent is out of range", sample("h", "HKQuantityTypeIdentifierOxygenSaturation", 97, "%"), ingestv1.SampleStatus_SAMPLE_STATUS_REJECTED, "out_of_range", "", 0},
		{"unknown type skipped", sample("i", "HKQuantityTypeIdentifierDietaryWater", 1, "L"), ingestv1.SampleStatus_SAMPLE_STATUS_SKIPPED, ReasonUnknownType, "", 0},
		{"bad unit", sample("j", "HKQuantityTypeIdentifierHeartRate", 72, "Hz"), ingestv1.SampleStatus_SAMPLE_STATUS_REJECTED, ReasonBadUnit, "", 0},
		{"sleep stage out of range", sample("k", SleepAnalysis, 9, ""), ingestv1.SampleStatus_SAMPLE_STATUS_REJECTED, "out_of_range", "", 0},
		{"missing uuid", sample("", "HKQuantityTypeIdentifierHeartRate", 72, "count/min"), ingestv1.SampleStatus_SAMPLE_STATUS_REJECTED, ReasonMissingUUID, "", 0},
		{"missing dates", &ingestv1.HealthKitSample{Uuid: "l", Type: "HKQuantityTypeIdentifierHeartRate", Value: 60, Unit: "count/min"}, ingestv1.SampleStatus_SAMPLE_STATUS_REJECTED, ReasonMissingDate, "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := Normalize("user-1", []*ingestv1.HealthKitSample{tt.in})
			require.Len(t, b.Results, 1)
			assert.Equal(t, tt.status, b.Results[0].Status)
			assert.Equal(t, tt.reason, b.Results[0].Reason)
			if tt.status != ingestv1.SampleStatus_SAMPLE_STATUS_ACCEPTED {
				assert.Empty(t, b.Events)
				return
			}
			require.Len(t, b.Events, 1)
			ev := b.Events[0]
			assert.Equal(t, "user-1", ev.UserId)
			assert.Equal(t, tt.in.Uuid, ev.VendorRecordId, "the sample uuid is the record identity")
			assert.Equal(t, tt.metric, ev.Readings[0].Metric)
			assert.InDelta(t, tt.value, ev.Readings[0].Value, 1e-6)
			assert.Equal(t, "Watch7,1", ev.Readings[0].Device.Model)
		})
	}
}

func TestDuplicateUUIDInOnePush(t *testing.T) {
	t.Parallel()
	b := Normalize("u", []*ingestv1.HealthKitSample{
		sample("x", "HKQuantityTypeIdentifierHeartRate", 60, "count/min"),
		sample("x", "HKQuantityTypeIdentifierHeartRate", 61, "count/min"),
	})
	require.Len(t, b.Events, 1)
	assert.Equal(t, ReasonDuplicateInPush, b.Results[1].Reason)
	assert.Equal(t, []int{0}, b.EventIndex)
}

func TestConversionIsStableAcrossRedeliveries(t *testing.T) {
	t.Parallel()
	a := Normalize("u", []*ingestv1.HealthKitSample{sample("t", "HKQuantityTypeIdentifierBodyTemperature", 99.1, "degF")})
	b := Normalize("u", []*ingestv1.HealthKitSample{sample("t", "HKQuantityTypeIdentifierBodyTemperature", 99.1, "degF")})
	assert.Equal(t, a.Events[0].Readings[0].Value, b.Events[0].Readings[0].Value)
}
