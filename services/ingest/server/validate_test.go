package server_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/services/ingest/server"
)

// TestNewValidatesAHandBuiltConfig: New checks a Config built by hand with
// the same Validate LoadConfig uses, before it connects to anything, and
// names every problem by its variable.
func TestNewValidatesAHandBuiltConfig(t *testing.T) {
	t.Parallel()
	cfg := server.Config{
		PostgresURL: "postgres://127.0.0.1:1/none", RedisURL: "redis://127.0.0.1:1/0",
		RetryBase: time.Minute, RetryMax: time.Second,
	}
	_, err := server.New(context.Background(), cfg, nil)
	require.Error(t, err)
	for _, name := range []string{"WHOOP_CLIENT_SECRET", "OURA_CLIENT_SECRET", "INGEST_RETRY_MAX"} {
		assert.Contains(t, err.Error(), name+":")
	}
}
