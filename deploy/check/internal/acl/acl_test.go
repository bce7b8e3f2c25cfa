package acl

import (
	"strings"
	"testing"
)

func TestReadersOnlyRead(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, acl, wantErr string
	}{
		{"readers read", "ingest=/biobridge.persistence.v1.PersistenceService/WriteEvents;gateway=/biobridge.biometrics.v1.BiometricsService/*;agents=/biobridge.biometrics.v1.BiometricsService/GetLatest", ""},
		{"gateway may lease the outbox", "gateway=/biobridge.biometrics.v1.BiometricsService/*|/biobridge.persistence.v1.PersistenceService/LeaseOutbox", "gateway=/biobridge.persistence.v1.PersistenceService/LeaseOutbox"},
		{"agents may do anything", "agents=*", "agents=*"},
		{"gateway may fetch vendor tokens", " gateway = /biobridge.tokens.v1.TokenBrokerService/GetAccessToken ", "gateway=/biobridge.tokens.v1.TokenBrokerService/GetAccessToken"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := ReadersOnlyRead(tt.acl)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("want an error naming %q, got %v", tt.wantErr, err)
			}
		})
	}
}
