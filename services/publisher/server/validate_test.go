package server_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/services/publisher/server"
)

// TestNewValidatesAHandBuiltConfig: New checks a Config built by hand with
// the same Validate LoadConfig uses, before it connects to anything, and
// names every problem by its variable.
func TestNewValidatesAHandBuiltConfig(t *testing.T) {
	t.Parallel()
	_, err := server.New(context.Background(), server.Config{KafkaBrokers: []string{"127.0.0.1:1"}, LeaseDuration: time.Second}, nil)
	require.Error(t, err)
	for _, name := range []string{"SERVICE_TOKENS", "PUBLISH_LEASE_DURATION", "PUBLISH_POLL_INTERVAL"} {
		assert.Contains(t, err.Error(), name+":")
	}
}
