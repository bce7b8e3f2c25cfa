package server_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/services/ingest/server"
)

func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

func minimalEnv() map[string]string {
	return map[string]string{
		"POSTGRES_URL": "postgres://postgres@127.0.0.1:5432/biobridge", "REDIS_URL": "redis://127.0.0.1:6379/0",
		"SERVICE_TOKEN": "t", "SERVICE_TOKENS": "ops:o", "SERVICE_ACL": "ops=/biobridge.ingest.v1.IngestService/ListJobs",
		"USER_TOKEN_SECRET":   "0123456789abcdef0123456789abcdef",
		"WHOOP_CLIENT_SECRET": "w", "OURA_CLIENT_SECRET": "o", "LOG_PSEUDONYM_KEY": "0123456789abcdef",
	}
}

func TestLoadConfigDefaults(t *testing.T) {
	t.Parallel()
	c, err := server.LoadConfig(envOf(minimalEnv()))
	require.NoError(t, err)
	assert.Equal(t, ":9101", c.GRPCAddr)
	assert.Equal(t, "127.0.0.1:9102", c.TokenBrokerTarget)
	assert.Equal(t, "https://api.prod.whoop.com", c.WhoopAPIURL)
	assert.Equal(t, "https://api.ouraring.com", c.OuraAPIURL)
	assert.Equal(t, 5*time.Minute, c.WebhookTolerance)
	assert.Equal(t, 50, c.MaxConcurrentWebhooks)
	assert.Equal(t, 100, c.WhoopRateLimit)
	assert.Equal(t, time.Minute, c.WhoopRateWindow)
	assert.Equal(t, 10000, c.WhoopDailyLimit)
	assert.Equal(t, 8, c.Workers)
	assert.Equal(t, 8, c.JobMaxAttempts)
	assert.Equal(t, time.Minute, c.JobLease)
	assert.Equal(t, 30, c.BackfillDays)
	assert.Equal(t, 6*time.Hour, c.ReconcileInterval)
	assert.Equal(t, 72*time.Hour, c.ReconcileWindow)
	assert.Equal(t, 48*time.Hour, c.StaleAfter)
	assert.Equal(t, 50, c.BackgroundRatePercent)
	assert.Equal(t, 7*24*time.Hour, c.OuraSubscriptionRenewBefore)
	assert.Empty(t, c.OuraClientID, "without a client id no subscriptions are kept")

	// 0 turns each part of data completeness off.
	env := minimalEnv()
	env["INGEST_BACKFILL_DAYS"], env["INGEST_RECONCILE_INTERVAL"], env["INGEST_STALE_AFTER"] = "0", "0", "0"
	c, err = server.LoadConfig(envOf(env))
	require.NoError(t, err)
	assert.Zero(t, c.BackfillDays)
	assert.Zero(t, c.ReconcileInterval)
	assert.Zero(t, c.StaleAfter)
}

// Every problem is reported at once, each with its variable's name.
func TestLoadConfigReportsEverything(t *testing.T) {
	t.Parallel()
	_, err := server.LoadConfig(envOf(map[string]string{
		"MAX_CONCURRENT_WEBHOOKS":     "0",
		"WEBHOOK_TIMESTAMP_TOLERANCE": "2h",
		"INGEST_WORKERS":              "many",
		"WHOOP_API_URL":               "api.prod.whoop.com",
		"INGEST_RETRY_BASE":           "5s",
		"INGEST_RETRY_MAX":            "1s",
		"INGEST_JOB_RETENTION":        "10m",
		"USER_TOKEN_SECRET":           "short",
		"INGEST_BACKFILL_DAYS":        "1000",
		"INGEST_RECONCILE_INTERVAL":   "10ms",
		"INGEST_STALE_AFTER":          "1ms",
		"INGEST_BACKGROUND_WORKERS":   "20",
		"PUBLIC_BASE_URL":             "gateway",
		"SERVICE_ACL":                 "ops=ListJobs",
	}))
	require.Error(t, err)
	for _, name := range []string{
		"POSTGRES_URL", "REDIS_URL", "SERVICE_TOKEN:", "SERVICE_TOKENS", "WHOOP_CLIENT_SECRET", "OURA_CLIENT_SECRET",
		"LOG_PSEUDONYM_KEY", "MAX_CONCURRENT_WEBHOOKS", "WEBHOOK_TIMESTAMP_TOLERANCE", "INGEST_WORKERS", "WHOOP_API_URL",
		"INGEST_RETRY_MAX", "INGEST_JOB_RETENTION", "USER_TOKEN_SECRET", "INGEST_BACKFILL_DAYS", "INGEST_RECONCILE_INTERVAL",
		"INGEST_STALE_AFTER", "INGEST_BACKGROUND_WORKERS", "PUBLIC_BASE_URL", "SERVICE_ACL",
	} {
		assert.Contains(t, err.Error(), name)
	}
}
