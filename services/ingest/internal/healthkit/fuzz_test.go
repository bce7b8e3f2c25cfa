package healthkit

import (
	"strings"
	"testing"
	"unicode"

	ingestv1 "github.com/biobridge/bridge/gen/go/biobridge/ingest/v1"
	"github.com/biobridge/bridge/pkg/catalog"
	"google.golang.org/protobuf/encoding/protojson"
)

// FuzzDecodeAndNormalize feeds arbitrary push bodies through the same JSON
// decoding the gateway uses and the normalizer. Whatever the app sends, the
// normalizer must not panic, must answer every sample, and must only ever hand
// catalog-valid values to persistence.
func FuzzDecodeAndNormalize(f *testing.F) {
	f.Add([]byte(`{"samples":[{"uuid":"5A1E","type":"HKQuantityTypeIdentifierHeartRate","value":72,"unit":"count/min","start_date":"2026-11-20T08:00:00Z","end_date":"2026-11-20T08:00:00Z","source":{"name":"Apple Watch","bundle_id":"com.apple.health","device_model":"Watch7,1"}}],"deleted":["OLD"]}`))
	f.Add([]byte(`{"samples":[{"uuid":"S","type":"HKQuantityTypeIdentifierOxygenSaturation","value":0.97,"unit":"%","end_date":"2026-11-20T08:00:00Z"}]}`))
	f.Add([]byte(`{"samples":[{"uuid":"C","type":"HKCategoryTypeIdentifierSleepAnalysis","value":5,"start_date":"2026-11-20T01:00:00Z","end_date":"2026-11-20T02:00:00Z"}]}`))
	f.Add([]byte(`{"samples":[{"uuid":"F","type":"HKQuantityTypeIdentifierBodyTemperature","value":1e308,"unit":"degF","end_date":"2026-11-20T08:00:00Z"}]}`))
	f.Add([]byte(`{"samples":[{"uuid":"N","type":"HKQuantityTypeIdentifierHeartRate","value":"NaN","unit":"count/min","end_date":"2026-11-20T08:00:00Z"}]}`))
	f.Add([]byte(`{"samples":[{},{"uuid":""},{"start_date":"0001-01-01T00:00:00Z"}]}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var req ingestv1.PushHealthKitSamplesRequest
		if err := (protojson.UnmarshalOptions{DiscardUnknown: true}).Unmarshal(body, &req); err != nil {
			return
		}
		b := Normalize("fuzz-user", req.Samples)
		if len(b.Results) != len(req.Samples) {
			t.Fatalf("%d results for %d samples", len(b.Results), len(req.Samples))
		}
		if len(b.Events) != len(b.EventIndex) {
			t.Fatalf("events and index disagree")
		}
		for i, ev := range b.Events {
			if b.Results[b.EventIndex[i]].Status != ingestv1.SampleStatus_SAMPLE_STATUS_ACCEPTED {
				t.Fatalf("event for a sample that was not accepted")
			}
			for _, r := range ev.Readings {
				if _, reason, _ := catalog.Validate(r.Metric, r.Value); reason != "" {
					t.Fatalf("invalid reading handed to persistence: %s (%s)", r.Metric, reason)
				}
			}
		}
		for _, r := range b.Results {
			if r.Status == ingestv1.SampleStatus_SAMPLE_STATUS_UNSPECIFIED {
				t.Fatalf("sample without a result")
			}
		}
	})
}

// FuzzDeletedIDs: whatever deleted list an app sends, the check never
// panics, and what it accepts persistence accepts as record ids (trimmed,
// bounded, free of control characters).
func FuzzDeletedIDs(f *testing.F) {
	f.Add("ABC-123", " padded ")
	f.Add("", "x")
	f.Add("bad\x00uuid", "ok")
	f.Add(string(make([]byte, 200)), "\xff\xfe")
	f.Fuzz(func(t *testing.T, a, b string) {
		ids, idx, msg := DeletedIDs([]string{a, b})
		if msg != "" {
			if idx < 0 || idx > 1 || ids != nil {
				t.Fatalf("refusal at %d with ids %v", idx, ids)
			}
			return
		}
		for _, id := range ids {
			if id == "" || len(id) > maxUUIDLen || strings.TrimSpace(id) != id || strings.IndexFunc(id, unicode.IsControl) >= 0 {
				t.Fatalf("accepted %q", id)
			}
		}
	})
}
