package limiter_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"

	"github.com/biobridge/bridge/pkg/apperr"
	"github.com/biobridge/bridge/pkg/limiter"
)

func TestShedsPastWaitBudget(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	l := limiter.New("webhooks", 2, 20*time.Millisecond, reg)
	ctx := context.Background()

	r1, err := l.Acquire(ctx)
	require.NoError(t, err)
	r2, err := l.Acquire(ctx)
	require.NoError(t, err)
	assert.Equal(t, 2.0, value(t, reg, "biobridge_limiter_in_use"))

	_, err = l.Acquire(ctx)
	require.Error(t, err)
	var ae *apperr.Error
	require.ErrorAs(t, err, &ae)
	assert.Equal(t, apperr.ResourceExhausted, ae.Code)
	assert.Equal(t, "overloaded", ae.Reason)
	assert.Equal(t, time.Second, ae.RetryAfter)

	// A released slot is reusable; double release does not free two slots.
	r1()
	r1()
	r3, err := l.Acquire(ctx)
	require.NoError(t, err)
	_, err = l.Acquire(ctx)
	require.Error(t, err, "still full: the double release freed only one slot")
	r2()
	r3()

	// Every series the dashboards rely on is exported.
	families, err := reg.Gather()
	require.NoError(t, err)
	byName := map[string]bool{}
	for _, f := range families {
		byName[f.GetName()] = true
		for _, m := range f.GetMetric() {
			require.Len(t, m.GetLabel(), 1)
			assert.Equal(t, "webhooks", m.GetLabel()[0].GetValue())
		}
	}
	for _, name := range []string{"biobridge_limiter_in_use", "biobridge_limiter_waiting", "biobridge_limiter_wait_seconds", "biobridge_limiter_shed_total"} {
		assert.True(t, byName[name], name)
	}
	assert.Equal(t, 2.0, value(t, reg, "biobridge_limiter_shed_total"))
	assert.Equal(t, 0.0, value(t, reg, "biobridge_limiter_in_use"))
	assert.Equal(t, 0.0, value(t, reg, "biobridge_limiter_waiting"))
	assert.Equal(t, 5.0, value(t, reg, "biobridge_limiter_wait_seconds"), "every acquire attempt observed")
}

func TestWaiterGetsFreedSlot(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	l := limiter.New("w", 1, time.Minute, reg)
	release, err := l.Acquire(context.Background())
	require.NoError(t, err)

	got := make(chan error, 1)
	go func() {
		r, err := l.Acquire(context.Background())
		if err == nil {
			r()
		}
		got <- err
	}()
	require.Eventually(t, func() bool {
		return value(t, reg, "biobridge_limiter_waiting") == 1
	}, 5*time.Second, 5*time.Millisecond, "waiting gauge shows the queued request")
	release()
	require.NoError(t, <-got)
}

func TestContextEndsWait(t *testing.T) {
	t.Parallel()
	l := limiter.New("ctx", 1, time.Minute, nil)
	release, err := l.Acquire(context.Background())
	require.NoError(t, err)
	defer release()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	_, err = l.Acquire(ctx)
	require.ErrorIs(t, err, context.Canceled)
}

func TestLimitersShareRegistry(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	a := limiter.New("a", 1, time.Millisecond, reg)
	b := limiter.New("b", 1, time.Millisecond, reg)
	ra, err := a.Acquire(context.Background())
	require.NoError(t, err)
	defer ra()
	rb, err := b.Acquire(context.Background())
	require.NoError(t, err, "limiters are independent")
	defer rb()
	n, err := testutil.GatherAndCount(reg, "biobridge_limiter_in_use")
	require.NoError(t, err)
	assert.Equal(t, 2, n)
}

func TestUnaryInterceptor(t *testing.T) {
	t.Parallel()
	l := limiter.New("rpc", 1, 10*time.Millisecond, nil)
	icpt := l.UnaryInterceptor("/svc/Limited")

	block := make(chan struct{})
	entered := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		_, err := icpt(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/svc/Limited"}, func(context.Context, any) (any, error) {
			close(entered)
			<-block
			return "ok", nil
		})
		assert.NoError(t, err)
	})
	<-entered

	_, err := icpt(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/svc/Limited"}, func(context.Context, any) (any, error) {
		return "ok", nil
	})
	assert.Equal(t, apperr.ResourceExhausted, apperr.CodeOf(err))

	resp, err := icpt(context.Background(), nil, &grpc.UnaryServerInfo{FullMethod: "/svc/Other"}, func(context.Context, any) (any, error) {
		return "other", nil
	})
	require.NoError(t, err, "unlisted methods are not limited")
	assert.Equal(t, "other", resp)
	close(block)
	wg.Wait()
}

// value gathers reg and returns the single sample of family name.
func value(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	families, err := reg.Gather()
	require.NoError(t, err)
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		require.Len(t, f.GetMetric(), 1, name)
		m := f.GetMetric()[0]
		switch {
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue()
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue()
		case m.GetHistogram() != nil:
			return float64(m.GetHistogram().GetSampleCount())
		}
	}
	t.Fatalf("metric %s not found", name)
	return 0
}
