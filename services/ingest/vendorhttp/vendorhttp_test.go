package vendorhttp

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

type fakeBudget struct {
	mu     sync.Mutex
	wait   time.Duration
	taken  int
	paused time.Duration
	shares []float64
}

func (b *fakeBudget) Take(ctx context.Context) (time.Duration, error) { return b.TakeShare(ctx, 1) }

func (b *fakeBudget) TakeShare(_ context.Context, share float64) (time.Duration, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.shares = append(b.shares, share)
	if b.wait > 0 {
		return b.wait, nil
	}
	b.taken++
	return 0, nil
}

func (b *fakeBudget) Utilization(context.Context) (float64, error) { return 0.25, nil }

func (b *fakeBudget) Pause(_ context.Context, d time.Duration) error {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.paused = d
	return nil
}

func newClient(t *testing.T, h http.Handler, mod func(*Config)) (*Client, *Metrics) {
	t.Helper()
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	m := NewMetrics(prometheus.NewRegistry())
	cfg := Config{Vendor: "whoop", BaseURL: srv.URL + "/", RequestTimeout: 2 * time.Second, Metrics: m}
	if mod != nil {
		mod(&cfg)
	}
	c, err := New(cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c, m
}

func TestStatusClassification(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		status int
		header map[string]string
		body   string
		kind   Kind
		retry  time.Duration
	}{
		{"ok", 200, nil, `{"id":"x"}`, 0, 0},
		{"429 with retry-after", 429, map[string]string{"Retry-After": "7"}, `{}`, RateLimited, 7 * time.Second},
		{"429 with whoop reset", 429, map[string]string{"X-RateLimit-Reset": "42", "X-RateLimit-Remaining": "0"}, `{}`, RateLimited, 42 * time.Second},
		{"429 takes the longer of both", 429, map[string]string{"Retry-After": "3", "X-RateLimit-Reset": "9"}, `{}`, RateLimited, 9 * time.Second},
		{"429 without headers", 429, nil, `{}`, RateLimited, 5 * time.Second},
		{"500", 500, nil, `{"error":"x"}`, Unavailable, 0},
		{"503 with retry-after", 503, map[string]string{"Retry-After": "2"}, ``, Unavailable, 2 * time.Second},
		{"500 ignores the rate-limit reset", 500, map[string]string{"X-RateLimit-Reset": "55"}, ``, Unavailable, 0},
		{"404", 404, nil, `{}`, NotFound, 0},
		{"401", 401, nil, `{}`, Unauthorized, 0},
		{"403", 403, nil, `{}`, Unauthorized, 0},
		{"400", 400, nil, `{}`, Permanent, 0},
		{"not json", 200, nil, `<html>`, Permanent, 0},
		{"redirect not followed", 302, map[string]string{"Location": "https://elsewhere.example/"}, ``, Permanent, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			var gotAuth string
			c, _ := newClient(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				gotAuth = r.Header.Get("Authorization")
				assert.Equal(t, "/v2/activity/sleep/abc", r.URL.Path)
				for k, v := range tt.header {
					w.Header().Set(k, v)
				}
				w.WriteHeader(tt.status)
				_, _ = w.Write([]byte(tt.body))
			}), nil)
			var dst struct{ ID string }
			err := c.GetJSON(context.Background(), "sleep", "/v2/activity/sleep/abc", "secret-token", &dst)
			assert.Equal(t, "Bearer secret-token", gotAuth)
			if tt.kind == 0 {
				require.NoError(t, err)
				assert.Equal(t, "x", dst.ID)
				return
			}
			require.Error(t, err)
			assert.Equal(t, tt.kind, KindOf(err))
			var ve *Error
			require.ErrorAs(t, err, &ve)
			assert.Equal(t, tt.retry, ve.RetryAfter)
			assert.NotContains(t, err.Error(), "secret-token", "errors never carry the token")
		})
	}
}

func TestRateLimitPausesTheSharedBudget(t *testing.T) {
	t.Parallel()
	b := &fakeBudget{}
	c, m := newClient(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("X-RateLimit-Reset", "30")
		w.WriteHeader(429)
	}), func(c *Config) { c.Budget, c.PauseOn429 = b, true })
	err := c.GetJSON(context.Background(), "sleep", "/x", "t", &struct{}{})
	require.Equal(t, RateLimited, KindOf(err))
	assert.Equal(t, 30*time.Second, b.paused, "every replica stops until the vendor's reset")
	assert.Equal(t, 1.0, testutil.ToFloat64(m.rateLimited.WithLabelValues("whoop", "vendor")))
}

func TestSpentBudgetMakesNoCall(t *testing.T) {
	t.Parallel()
	var calls atomic.Int32
	b := &fakeBudget{wait: time.Minute}
	c, m := newClient(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		calls.Add(1)
		_, _ = w.Write([]byte(`{}`))
	}), func(c *Config) { c.Budget, c.BudgetWait = b, 50*time.Millisecond })
	err := c.GetJSON(context.Background(), "sleep", "/x", "t", &struct{}{})
	require.Equal(t, RateLimited, KindOf(err))
	var ve *Error
	require.ErrorAs(t, err, &ve)
	assert.Equal(t, time.Minute, ve.RetryAfter)
	assert.Zero(t, calls.Load(), "over budget, the vendor is not called")
	assert.Equal(t, 1.0, testutil.ToFloat64(m.rateLimited.WithLabelValues("whoop", "budget")))

	b.mu.Lock()
	b.wait = 0
	b.mu.Unlock()
	require.NoError(t, c.GetJSON(context.Background(), "sleep", "/x", "t", &struct{}{}))
	assert.Equal(t, 1, b.taken, "each call takes one unit of budget")
}

func TestTimeoutIsUnavailable(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	c, _ := newClient(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}), func(c *Config) { c.RequestTimeout = 100 * time.Millisecond })
	defer close(release)
	err := c.GetJSON(context.Background(), "sleep", "/x", "t", &struct{}{})
	require.Equal(t, Unavailable, KindOf(err))
	assert.Contains(t, err.Error(), "timeout")
}

func TestConnectionCap(t *testing.T) {
	t.Parallel()
	var cur, peak atomic.Int32
	c, _ := newClient(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		n := cur.Add(1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		time.Sleep(50 * time.Millisecond)
		cur.Add(-1)
		_, _ = w.Write([]byte(`{}`))
	}), func(c *Config) { c.MaxConns = 2 })
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			assert.NoError(t, c.GetJSON(context.Background(), "sleep", "/x", "t", &struct{}{}))
		}()
	}
	wg.Wait()
	assert.LessOrEqual(t, peak.Load(), int32(2), "never more connections than configured")
}

func TestCloseWaitsForCallsInFlight(t *testing.T) {
	t.Parallel()
	started := make(chan struct{})
	release := make(chan struct{})
	c, _ := newClient(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		close(started)
		<-release
		_, _ = w.Write([]byte(`{"id":"late"}`))
	}), nil)
	var dst struct{ ID string }
	callDone := make(chan error, 1)
	go func() { callDone <- c.GetJSON(context.Background(), "sleep", "/x", "t", &dst) }()
	<-started

	closed := make(chan error, 1)
	go func() { closed <- c.Close(context.Background()) }()
	require.Never(t, func() bool { return len(closed) > 0 }, 100*time.Millisecond, 10*time.Millisecond,
		"Close returns only after the call in flight")
	close(release)
	require.NoError(t, <-callDone, "the call in flight completes")
	assert.Equal(t, "late", dst.ID)
	require.NoError(t, <-closed)

	err := c.GetJSON(context.Background(), "sleep", "/x", "t", &dst)
	assert.Equal(t, Unavailable, KindOf(err), "no calls after Close")

	// A bounded Close gives up on calls that never end.
	c2, _ := newClient(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { <-r.Context().Done() }),
		func(c *Config) { c.RequestTimeout = 500 * time.Millisecond })
	go func() { _ = c2.GetJSON(context.Background(), "sleep", "/x", "t", &dst) }()
	require.Eventually(t, func() bool { return testutil.ToFloat64(c2.cfg.Metrics.inFlight.WithLabelValues("whoop")) == 1 },
		2*time.Second, 5*time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	assert.Error(t, c2.Close(ctx))
}

func TestRetryAfterParsing(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)
	h := http.Header{}
	h.Set("Retry-After", now.Add(90*time.Second).Format(http.TimeFormat))
	assert.Equal(t, 90*time.Second, retryAfter(h, now))
	h = http.Header{}
	h.Set("Retry-After", "100000")
	assert.Equal(t, 15*time.Minute, retryAfter(h, now), "capped")
	h = http.Header{}
	h.Set("Retry-After", "soon")
	assert.Zero(t, retryAfter(h, now))
}

// Background calls take their share of the budget and never wait for it;
// live calls take the whole budget. The series exist before the first call.
func TestBackgroundCallsTakeTheirShareWithoutWaiting(t *testing.T) {
	t.Parallel()
	b := &fakeBudget{wait: 20 * time.Millisecond}
	c, m := newClient(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = w.Write([]byte(`{}`))
	}), func(c *Config) { c.Budget, c.BudgetWait, c.BackgroundShare = b, time.Second, 0.3 })
	assert.Equal(t, 0.0, testutil.ToFloat64(m.requests.WithLabelValues("whoop", "429")), "initialized at zero")

	start := time.Now()
	err := c.GetJSON(Background(context.Background()), "sleep", "/x", "t", &struct{}{})
	require.Equal(t, RateLimited, KindOf(err), "a background call gives up at once")
	assert.Less(t, time.Since(start), 500*time.Millisecond)

	b.mu.Lock()
	b.wait = 0
	b.mu.Unlock()
	require.NoError(t, c.GetJSON(Background(context.Background()), "sleep", "/x", "t", &struct{}{}))
	require.NoError(t, c.GetJSON(context.Background(), "sleep", "/x", "t", &struct{}{}))
	b.mu.Lock()
	assert.Equal(t, []float64{0.3, 0.3, 1}, b.shares)
	b.mu.Unlock()
	assert.Equal(t, 2.0, testutil.ToFloat64(m.requests.WithLabelValues("whoop", "200")))

	require.NoError(t, c.MeasureBudget(context.Background()))
	assert.Equal(t, 0.25, testutil.ToFloat64(m.utilization.WithLabelValues("whoop")))
}
