package main

import (
	"bytes"
	"context"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// syncBuffer is a bytes.Buffer safe for the logger and the test to share.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestRunReportsEveryBadVariable(t *testing.T) {
	t.Parallel()
	env := map[string]string{
		"VENDOREMU_SEED": "nope", "VENDOREMU_DEMO_INTERVAL": "often", "VENDOREMU_HISTORY_DAYS": "9999",
	}
	err := run(context.Background(), []string{"vendoremu"}, func(k string) string { return env[k] }, &syncBuffer{})
	require.Error(t, err)
	for _, name := range []string{"VENDOREMU_SEED", "VENDOREMU_DEMO_INTERVAL", "VENDOREMU_HISTORY_DAYS"} {
		require.ErrorContains(t, err, name)
	}
}

func TestRunServesUntilCancelled(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())

	env := map[string]string{"VENDOREMU_USERS": "alice,bob", "VENDOREMU_HISTORY_DAYS": "2", "VENDOREMU_SEED": "3"}
	ctx, cancel := context.WithCancel(context.Background())
	out := &syncBuffer{}
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"vendoremu", "-addr", addr, "-demo", "1h"}, func(k string) string { return env[k] }, out)
	}()
	require.Eventually(t, func() bool {
		resp, err := http.Get("http://" + addr + "/_admin/users")
		if err != nil {
			return false
		}
		defer func() { _ = resp.Body.Close() }()
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		return resp.StatusCode == http.StatusOK && strings.Contains(b.String(), `"bob"`)
	}, 10*time.Second, 20*time.Millisecond)
	cancel()
	require.NoError(t, <-done)
	require.Contains(t, out.String(), `"seed":3`)
}
