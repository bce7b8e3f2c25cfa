package testenv

import (
	"testing"

	"github.com/stretchr/testify/require"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
)

func TestCheckOrder(t *testing.T) {
	t.Parallel()
	msg := func(user string, seq int) Received {
		id := RecordID(user, seq)
		return Received{EventID: id, Key: user, Event: &biometricsv1.BiometricEvent{EventId: id, UserId: user, VendorRecordId: id}}
	}
	tests := []struct {
		name string
		msgs []Received
		want map[string]int
		ok   bool
	}{
		{"in order", []Received{msg("a", 1), msg("b", 1), msg("a", 2)}, map[string]int{"a": 2, "b": 1}, true},
		{"duplicates after the first copy", []Received{msg("a", 1), msg("a", 2), msg("a", 1), msg("a", 2), msg("a", 3)}, map[string]int{"a": 3}, true},
		{"overtaken", []Received{msg("a", 2), msg("a", 1)}, nil, false},
		{"gap", []Received{msg("a", 1), msg("a", 3)}, nil, false},
		{"missing at the end", []Received{msg("a", 1)}, map[string]int{"a": 2}, false},
		{"wrong key", []Received{{EventID: "x", Key: "b", Event: &biometricsv1.BiometricEvent{EventId: "x", UserId: "a", VendorRecordId: RecordID("a", 1)}}}, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := CheckOrder(tt.msgs, tt.want)
			if tt.ok {
				require.NoError(t, err)
			} else {
				require.Error(t, err)
			}
		})
	}
}
