package admin_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/pkg/admin"
)

// start runs s on a free port and stops it at the end of the test,
// checking that Serve returns nil on cancellation.
func start(t *testing.T, s *admin.Server) string {
	t.Helper()
	require.NoError(t, s.Listen())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	return "http://" + s.Addr()
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer func() { require.NoError(t, resp.Body.Close()) }()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(b)
}

func TestEndpoints(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	promauto.With(reg).NewCounter(prometheus.CounterOpts{Name: "biobridge_test_events_total", Help: "x"}).Add(3)

	var healthy atomic.Bool
	healthy.Store(true)
	s := admin.New("127.0.0.1:0", reg, nil,
		admin.Check{Name: "postgres", Fn: func(context.Context) error { return nil }},
		admin.Check{Name: "redis", Fn: func(context.Context) error {
			if healthy.Load() {
				return nil
			}
			return errors.New("dial tcp 10.1.2.3:6379: connection refused password=hunter2")
		}},
	)
	s.Handle("GET /debug/hello", http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "hello")
	}))
	base := start(t, s)

	code, body := get(t, base+"/healthz")
	assert.Equal(t, http.StatusOK, code)
	assert.JSONEq(t, `{"status":"ok"}`, body)

	code, body = get(t, base+"/metrics")
	assert.Equal(t, http.StatusOK, code)
	assert.Contains(t, body, "biobridge_test_events_total 3")

	code, body = get(t, base+"/readyz")
	assert.Equal(t, http.StatusOK, code)
	assert.JSONEq(t, `{"status":"ok"}`, body)

	code, body = get(t, base+"/debug/hello")
	assert.Equal(t, http.StatusOK, code)
	assert.Equal(t, "hello", body)

	healthy.Store(false)
	code, body = get(t, base+"/readyz")
	assert.Equal(t, http.StatusServiceUnavailable, code)
	var got struct {
		Status string `json:"status"`
		Failed []struct{ Name, Error string }
	}
	require.NoError(t, json.Unmarshal([]byte(body), &got))
	assert.Equal(t, "unavailable", got.Status)
	require.Len(t, got.Failed, 1)
	assert.Equal(t, "redis", got.Failed[0].Name)
	assert.NotContains(t, body, "hunter2", "driver errors are not exposed")
	assert.NotContains(t, body, "10.1.2.3")
}

// TestReadyzShowsPublicErrors: a check that returns a PublicError (wrapped
// or not) has its message on /readyz; other errors stay generic.
func TestReadyzShowsPublicErrors(t *testing.T) {
	t.Parallel()
	s := admin.New("127.0.0.1:0", nil, nil,
		admin.Check{Name: "kafka_topics", Fn: func(context.Context) error {
			return fmt.Errorf("durability: %w", admin.Public("topic t: min.insync.replicas is 1, want at least 2"))
		}},
		admin.Check{Name: "postgres", Fn: func(context.Context) error { return errors.New("password=hunter2") }},
	)
	base := start(t, s)
	code, body := get(t, base+"/readyz")
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.Contains(t, body, `"error":"topic t: min.insync.replicas is 1, want at least 2"`)
	assert.NotContains(t, body, "hunter2")
}

func TestReadyzTimesOutHangingCheck(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	s := admin.New("127.0.0.1:0", nil, nil, admin.Check{Name: "kafka", Fn: func(context.Context) error {
		<-release // ignores its context on purpose
		return nil
	}})
	base := start(t, s)
	code, body := get(t, base+"/readyz")
	assert.Equal(t, http.StatusServiceUnavailable, code)
	assert.True(t, strings.Contains(body, `"kafka"`) && strings.Contains(body, "timed out"), body)
}

func TestServeReturnsOnCancel(t *testing.T) {
	t.Parallel()
	s := admin.New("127.0.0.1:0", nil, nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Serve(ctx) }()
	require.Eventually(t, func() bool {
		resp, err := http.Get("http://" + s.Addr() + "/healthz")
		if err != nil {
			return false
		}
		_ = resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	}, 5*time.Second, 10*time.Millisecond)
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(10 * time.Second):
		t.Fatal("Serve did not return after cancel")
	}
	_, err := http.Get("http://" + s.Addr() + "/healthz")
	require.Error(t, err, "listener closed")
}

func TestReadinessIsExportedAsAMetric(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	admin.New("127.0.0.1:0", reg, nil,
		admin.Check{Name: "postgres", Fn: func(context.Context) error { return nil }},
		admin.Check{Name: "redis", Fn: func(context.Context) error { return errors.New("down") }},
	)
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, f := range families {
		if f.GetName() != "biobridge_readiness_check_success" {
			continue
		}
		for _, m := range f.GetMetric() {
			got[m.GetLabel()[0].GetValue()] = m.GetGauge().GetValue()
		}
	}
	if got["postgres"] != 1 || got["redis"] != 0 || len(got) != 2 {
		t.Fatalf("readiness metric = %v, want postgres=1 redis=0", got)
	}
}
