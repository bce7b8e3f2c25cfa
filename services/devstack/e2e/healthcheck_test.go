package e2e

import (
	"context"
	"net"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/services/devstack/stack"
)

// TestHealthCheckAsksEveryService: `devstack healthcheck` (the devstack
// image's HEALTHCHECK) passes against a running stack and fails, naming the
// service, when one of them does not answer.
func TestHealthCheckAsksEveryService(t *testing.T) {
	s := startStack(t)
	ctx := context.Background()
	require.Eventually(t, func() bool { return stack.HealthCheck(ctx, s.Env) == nil },
		30*time.Second, 100*time.Millisecond, "healthcheck never passed: %v", stack.HealthCheck(ctx, s.Env))

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	gone := ln.Addr().String()
	require.NoError(t, ln.Close())
	err = stack.HealthCheck(ctx, func(k string) string {
		if k == "PUBLISHER_ADMIN_ADDR" {
			return gone
		}
		return s.Env(k)
	})
	require.ErrorContains(t, err, "publisher (PUBLISHER_ADMIN_ADDR)")
}
