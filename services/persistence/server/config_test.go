package server_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/services/persistence/server"
)

func TestLoadConfig(t *testing.T) {
	t.Parallel()
	valid := map[string]string{
		"POSTGRES_URL":      "postgres://postgres@127.0.0.1:5432/biobridge",
		"REDIS_URL":         "redis://127.0.0.1:6379/0",
		"SERVICE_TOKENS":    "ingest:abc,publisher:def",
		"SERVICE_ACL":       "ingest=/biobridge.persistence.v1.PersistenceService/WriteEvents",
		"LOG_PSEUDONYM_KEY": "0123456789abcdef",
	}
	getenv := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

	cfg, err := server.LoadConfig(getenv(valid))
	require.NoError(t, err)
	require.Equal(t, ":9103", cfg.GRPCAddr)
	require.Equal(t, ":9203", cfg.AdminAddr)
	require.Equal(t, 2*time.Millisecond, cfg.GroupCommitWindow)
	require.Equal(t, 1000, cfg.GroupCommitMaxEvents)
	require.Equal(t, 10_000, cfg.AuditBuffer)
	require.Zero(t, cfg.RetentionReadings, "readings are kept until a policy is set")
	require.Zero(t, cfg.RetentionEvents)
	require.Equal(t, 52596*time.Hour, cfg.RetentionAudit, "the audit log is kept six years")
	require.False(t, cfg.LatestNearCacheOff, "the near-cache is on unless turned off")
	require.Equal(t, 32, cfg.LatestNearCacheMiB)
	require.Equal(t, time.Minute, cfg.LatestNearCacheTTL)
	require.Zero(t, cfg.LatestNearCacheMaxStaleness, "strict")

	withRetention := map[string]string{"RETENTION_READINGS": "4380h", "RETENTION_EVENTS": "0", "RETENTION_AUDIT": "70000h"}
	for k, v := range valid {
		withRetention[k] = v
	}
	cfg, err = server.LoadConfig(getenv(withRetention))
	require.NoError(t, err)
	require.Equal(t, 4380*time.Hour, cfg.RetentionReadings)
	require.Equal(t, 70000*time.Hour, cfg.RetentionAudit)

	for _, tc := range []struct {
		name string
		env  map[string]string
		want []string
	}{
		{"everything missing", map[string]string{}, []string{"POSTGRES_URL", "REDIS_URL", "SERVICE_TOKENS", "LOG_PSEUDONYM_KEY"}},
		{"every bad value at once", map[string]string{
			"POSTGRES_URL": "mysql://x", "REDIS_URL": "http://x", "SERVICE_TOKENS": "nocolon",
			"LOG_PSEUDONYM_KEY": "short", "GROUP_COMMIT_MAX_EVENTS": "0", "GROUP_COMMIT_WINDOW": "5s",
			"AUDIT_FLUSH_INTERVAL": "banana", "PARTITION_MONTHS_AHEAD": "99", "SERVICE_ACL": "agents=GetLatest",
			"RETENTION_READINGS": "24h", "RETENTION_EVENTS": "6 months", "RETENTION_AUDIT": "100h",
			"LATEST_NEAR_CACHE_MIB": "0", "LATEST_NEAR_CACHE_TTL": "10ms", "LATEST_NEAR_CACHE_MAX_STALENESS": "1ms",
			"LATEST_NEAR_CACHE_ENABLED": "maybe",
		}, []string{"POSTGRES_URL", "REDIS_URL", "SERVICE_TOKENS", "LOG_PSEUDONYM_KEY", "GROUP_COMMIT_MAX_EVENTS",
			"GROUP_COMMIT_WINDOW", "AUDIT_FLUSH_INTERVAL", "PARTITION_MONTHS_AHEAD", "SERVICE_ACL",
			"RETENTION_READINGS", "RETENTION_EVENTS", "RETENTION_AUDIT",
			"LATEST_NEAR_CACHE_MIB", "LATEST_NEAR_CACHE_TTL", "LATEST_NEAR_CACHE_MAX_STALENESS", "LATEST_NEAR_CACHE_ENABLED"}},
	} {
		_, err := server.LoadConfig(getenv(tc.env))
		require.Error(t, err, tc.name)
		for _, name := range tc.want {
			require.Contains(t, err.Error(), name+":", tc.name)
		}
		require.NotContains(t, err.Error(), "nocolon", "tokens are never echoed")
	}
}
