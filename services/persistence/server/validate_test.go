package server_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/services/persistence/server"
)

// TestNewValidatesAHandBuiltConfig: New checks a Config built by hand with
// the same Validate LoadConfig uses, before it connects to anything, and
// names every problem by its variable.
func TestNewValidatesAHandBuiltConfig(t *testing.T) {
	t.Parallel()
	_, err := server.New(context.Background(), server.Config{RedisURL: "http://not-redis", ServiceTokens: "ingest:a-token"}, nil)
	require.Error(t, err)
	for _, name := range []string{"POSTGRES_URL", "REDIS_URL"} {
		assert.Contains(t, err.Error(), name+":")
	}
}
