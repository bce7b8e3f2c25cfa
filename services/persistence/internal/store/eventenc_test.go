package store

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	"github.com/biobridge/bridge/services/persistence/internal/record"
)

// upsertEvent is the published form of a record version built the plain
// way (what persistence did before eventEncoder): the reference encode is
// held to.
func upsertEvent(ev *record.Event, id string, version int64, received time.Time) *biometricsv1.BiometricEvent {
	out := &biometricsv1.BiometricEvent{
		EventId:        id,
		UserId:         ev.UserID,
		Source:         ev.Source,
		Kind:           ev.Kind,
		VendorRecordId: ev.VendorRecordID,
		Operation:      biometricsv1.Operation_OPERATION_UPSERT,
		Version:        version,
		ReceivedAt:     timestamppb.New(received),
		Readings:       make([]*biometricsv1.Reading, len(ev.Readings)),
	}
	if !ev.OccurredAt.IsZero() {
		out.OccurredAt = timestamppb.New(ev.OccurredAt)
	}
	for i, r := range ev.Readings {
		pr := &biometricsv1.Reading{
			Metric:     r.Metric,
			Value:      r.Value,
			Unit:       r.Unit,
			ObservedAt: timestamppb.New(r.ObservedAt),
		}
		if !r.StartTime.IsZero() {
			pr.StartTime = timestamppb.New(r.StartTime)
		}
		if r.Device != (record.Device{}) {
			pr.Device = &biometricsv1.Device{Name: r.Device.Name, Model: r.Device.Model, BundleId: r.Device.BundleID}
		}
		out.Readings[i] = pr
	}
	return out
}

// TestEventEncoderWritesThePlainEncoding: the payloads of a batch, written
// with one set of refilled messages and cut from shared chunks, are the
// bytes of the plain encoding, and stay so while later events are encoded
// (fewer or more readings than the previous one, times and devices present
// or not, an event larger than what is left of a chunk).
func TestEventEncoderWritesThePlainEncoding(t *testing.T) {
	t.Parallel()
	at := time.Date(2026, 12, 5, 6, 0, 0, 123456789, time.UTC)
	watch := record.Device{Name: "Apple Watch", Model: "Watch7,1", BundleID: "com.apple.health"}
	reading := func(metric string, i int, start bool, dev record.Device) record.Reading {
		r := record.Reading{Metric: metric, Unit: "bpm", Value: 50 + float64(i)/3, ObservedAt: at.Add(time.Duration(i) * time.Second), Device: dev}
		if start {
			r.StartTime = r.ObservedAt.Add(-time.Minute)
		}
		return r
	}
	var events []*record.Event
	for i := range 400 {
		ev := &record.Event{UserID: "u" + strings.Repeat("x", i%3), Source: biometricsv1.Source(1 + i%3), Kind: "sample", VendorRecordID: "r" + string(rune('a'+i%26))}
		if i%4 != 0 {
			ev.OccurredAt = at.Add(time.Duration(i) * time.Minute)
		}
		n := []int{3, 1, 0, 2, 5}[i%5]
		if i == 200 {
			n = 300 // larger than a chunk's room
		}
		for k := range n {
			dev := watch
			if (i+k)%3 == 0 {
				dev = record.Device{}
			}
			ev.Readings = append(ev.Readings, reading([]string{"heart_rate_bpm", "steps", "hrv_rmssd_ms"}[k%3], k, (i+k)%2 == 0, dev))
		}
		events = append(events, ev)
	}
	var enc eventEncoder
	payloads := make([][]byte, len(events))
	for i, ev := range events {
		b, err := enc.encode(ev, "id-"+ev.VendorRecordID, int64(i), at)
		if err != nil {
			t.Fatal(err)
		}
		payloads[i] = b
	}
	for i, ev := range events {
		want, err := proto.Marshal(upsertEvent(ev, "id-"+ev.VendorRecordID, int64(i), at))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(payloads[i], want) {
			var got biometricsv1.BiometricEvent
			_ = proto.Unmarshal(payloads[i], &got)
			t.Fatalf("event %d: payload decodes as %v, want %v", i, &got, upsertEvent(ev, "id-"+ev.VendorRecordID, int64(i), at))
		}
	}
}
