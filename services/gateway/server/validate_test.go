package server

import (
	"context"
	"log/slog"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestNewValidatesAHandBuiltConfig: New checks a Config built by hand with
// the Validate LoadConfig runs, before it dials or binds anything, and
// names the problem by its variable.
func TestNewValidatesAHandBuiltConfig(t *testing.T) {
	t.Parallel()
	cfg := Config{HTTPAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", MaxBodyBytes: 1 << 20, MaxWebhookBodyBytes: 1 << 10, MaxInflightBodyBytes: 1 << 10}
	s, err := New(context.Background(), cfg, slog.New(slog.DiscardHandler))
	if err == nil { // without the check: release what New bound
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_ = s.Serve(ctx)
	}
	require.Error(t, err)
	assert.Contains(t, err.Error(), "GATEWAY_MAX_INFLIGHT_BODY_BYTES:")
}
