package main

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/pkg/testpg"
	"github.com/biobridge/bridge/services/devstack/stack"
)

func startStack(t *testing.T) *stack.Stack {
	t.Helper()
	dbURL := testpg.New(t, "roundtrip-empty", func(context.Context, string) error { return nil })
	redisURL, prefix := testpg.NewRedis(t)
	env := map[string]string{"POSTGRES_URL": dbURL, "REDIS_URL": redisURL, "REDIS_KEY_PREFIX": prefix, "LOG_LEVEL": "warn"}
	ctx, cancel := context.WithCancel(context.Background())
	s, err := stack.Start(ctx, stack.Options{Getenv: func(k string) string { return env[k] }, Ephemeral: true})
	if err != nil {
		cancel()
		t.Fatalf("start stack: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("stack stopped with: %v", err)
		}
	})
	require.Eventually(t, func() bool {
		resp, err := http.Get(s.GatewayURL() + "/readyz")
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 30*time.Second, 50*time.Millisecond, "gateway never became ready")
	return s
}

// TestRoundTripThroughAStack: the pushed sample comes back from GetLatest,
// and a service token persistence does not accept fails the run instead of
// passing it.
func TestRoundTripThroughAStack(t *testing.T) {
	s := startStack(t)
	args := func(token string) []string {
		return []string{"roundtrip", "-gateway", s.GatewayURL(), "-persistence", s.Env("PERSISTENCE_GRPC_ADDR"),
			"-user-token-secret", s.Env("USER_TOKEN_SECRET"), "-service-token", token, "-timeout", "10s"}
	}
	var out bytes.Buffer
	require.NoError(t, run(context.Background(), args(s.AgentToken()), &out))
	require.Contains(t, out.String(), "GetLatest on "+s.Env("PERSISTENCE_GRPC_ADDR")+" returned heart_rate_bpm=")

	err := run(context.Background(), append(args("not-a-token"), "-timeout", "2s"), &bytes.Buffer{})
	require.Error(t, err)
	require.True(t, strings.Contains(err.Error(), "Unauthenticated"), "err: %v", err)
}
