// Package e2e drives the whole suite through its public surfaces: the REST
// gateway, gRPC and Kafka, started in process by the devstack.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/emulator"
	"github.com/biobridge/bridge/pkg/testpg"
	"github.com/biobridge/bridge/services/devstack/stack"
)

// startStack runs a private stack (own database, Redis prefix, ports and
// embedded Kafka) for one test.
func startStack(t *testing.T) *stack.Stack {
	t.Helper()
	return startStackWith(t, nil, emulator.Config{})
}

// startStackWith is startStack with extra environment and emulator settings.
// The stack's ports are picked free before it starts (services need each
// other's addresses up front), so another test process can take one in
// between: such a start is retried with new ports.
func startStackWith(t *testing.T, extra map[string]string, emu emulator.Config) *stack.Stack {
	t.Helper()
	return startStackOptions(t, extra, stack.Options{EmulatorConfig: emu})
}

// startStackOptions is startStackWith with further stack options (its
// environment, ports and emulator settings are the test's).
func startStackOptions(t *testing.T, extra map[string]string, opts stack.Options) *stack.Stack {
	t.Helper()
	dbURL := testpg.New(t, "e2e-empty", func(context.Context, string) error { return nil })
	redisURL, prefix := testpg.NewRedis(t)
	env := map[string]string{
		"POSTGRES_URL":     dbURL,
		"REDIS_URL":        redisURL,
		"REDIS_KEY_PREFIX": prefix,
		"LOG_LEVEL":        "warn",
	}
	for k, v := range extra {
		env[k] = v
	}
	ctx, cancel := context.WithCancel(context.Background())
	var s *stack.Stack
	var err error
	for attempt := 0; attempt < 3; attempt++ {
		opts.Getenv, opts.Ephemeral = func(k string) string { return env[k] }, true
		s, err = stack.Start(ctx, opts)
		if err == nil || !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	if err != nil {
		cancel()
		t.Fatalf("start stack: %v", err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("stack stopped with: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Errorf("stack did not stop within 30s")
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

type httpResult struct {
	Code   int
	Header http.Header
	Body   []byte
}

func (r httpResult) JSON(t *testing.T, v any) {
	t.Helper()
	require.NoError(t, json.Unmarshal(r.Body, v), "body: %s", r.Body)
}

func do(t *testing.T, method, url, bearer string, body []byte) httpResult {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	require.NoError(t, err)
	if bearer != "" {
		req.Header.Set("Authorization", "Bearer "+bearer)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return httpResult{Code: resp.StatusCode, Header: resp.Header, Body: b}
}

// topicEndOffsets sums the end offsets of every partition of topic: the
// number of messages ever written to it.
func topicEndOffsets(t *testing.T, brokers, topic string) int64 {
	t.Helper()
	cfg := sarama.NewConfig()
	cfg.Version = sarama.V3_6_0_0
	client, err := sarama.NewClient([]string{brokers}, cfg)
	require.NoError(t, err)
	defer func() { _ = client.Close() }()
	parts, err := client.Partitions(topic)
	if err != nil {
		return 0
	}
	var total int64
	for _, p := range parts {
		off, err := client.GetOffset(topic, p, sarama.OffsetNewest)
		require.NoError(t, err)
		total += off
	}
	return total
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	require.NoError(t, err, fmt.Sprintf("%T", v))
	return b
}
