package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/pkg/testpg"
	"github.com/biobridge/bridge/services/ingest/internal/store"
)

func newStore(t *testing.T) *store.Store {
	t.Helper()
	url := testpg.New(t, "ingest_jobs_"+store.Migrations.Version(), store.Migrations.Migrate)
	pool, err := pgxpool.New(context.Background(), url)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return store.New(pool)
}

// handlerFunc adapts a function to Handler.
type handlerFunc func(ctx context.Context, j store.Job) (string, error)

func (f handlerFunc) Handle(ctx context.Context, j store.Job) (string, error) { return f(ctx, j) }

func enqueue(t *testing.T, s *store.Store, key string) int64 {
	t.Helper()
	id, _, err := s.Enqueue(context.Background(), store.NewJob{Vendor: "whoop", Kind: "test", DedupeKey: key, Payload: []byte(`{}`), Priority: store.PriorityLive})
	require.NoError(t, err)
	return id
}

// run starts the pool and returns a stop function that waits for Run.
func run(t *testing.T, p *Pool) func() {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx) }()
	var once sync.Once
	stop := func() {
		once.Do(func() {
			cancel()
			require.NoError(t, <-done)
		})
	}
	t.Cleanup(stop)
	return stop
}

func waitState(t *testing.T, s *store.Store, id int64, want store.State) store.Job {
	t.Helper()
	var j store.Job
	require.Eventually(t, func() bool {
		var err error
		j, err = s.Get(context.Background(), id)
		return err == nil && j.State == want
	}, 10*time.Second, 10*time.Millisecond, "job %d never became %s", id, want)
	return j
}

var fast = Config{Owner: "test", Workers: 2, Lease: 2 * time.Second, PollInterval: 20 * time.Millisecond,
	RetryBase: 10 * time.Millisecond, RetryMax: 50 * time.Millisecond, MaxAttempts: 3, ShutdownGrace: time.Second}

func TestOutcomes(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		handler  func(calls int) (string, error)
		state    store.State
		attempts int
		outcome  string
		lastErr  string
		calls    int
	}{
		{"done at once", func(int) (string, error) { return "stored", nil }, store.Done, 1, "stored", "", 1},
		{"transient errors until success", func(calls int) (string, error) {
			if calls < 3 {
				return "", errors.New("vendor down")
			}
			return "stored", nil
		}, store.Done, 3, "stored", "vendor down", 3},
		{"dead after the last attempt", func(int) (string, error) { return "", errors.New("vendor down") }, store.Dead, 3, "", "vendor down", 3},
		{"counted retries die too", func(int) (string, error) {
			return "", &Retry{Count: true, Reason: "vendor_unavailable", Detail: "whoop sleep: unavailable (HTTP 500)"}
		}, store.Dead, 3, "", "whoop sleep: unavailable (HTTP 500)", 3},
		{"uncounted waits never kill", func(calls int) (string, error) {
			if calls < 6 {
				return "", &Retry{After: time.Millisecond, Reason: "rate_limited"}
			}
			return "stored", nil
		}, store.Done, 1, "stored", "rate_limited", 6},
		{"permanent is dead at once", func(int) (string, error) { return "", &Permanent{Reason: "unreadable payload"} }, store.Dead, 1, "", "unreadable payload", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s := newStore(t)
			var calls atomic.Int32
			reg := prometheus.NewRegistry()
			p := NewPool(s, map[string]Handler{"test": handlerFunc(func(context.Context, store.Job) (string, error) {
				return tt.handler(int(calls.Add(1)))
			})}, fast, reg, slog.New(slog.DiscardHandler))
			id := enqueue(t, s, "k")
			stop := run(t, p)
			p.Wake()
			j := waitState(t, s, id, tt.state)
			// The worker counts the outcome after the store has it: wait
			// for the pool to stop before reading the counters.
			stop()
			assert.Equal(t, tt.attempts, j.Attempts)
			assert.Equal(t, tt.outcome, j.Outcome)
			assert.Equal(t, tt.lastErr, j.LastError)
			assert.Equal(t, tt.calls, int(calls.Load()))
			if tt.state == store.Dead {
				assert.Equal(t, 1.0, testutil.ToFloat64(p.m.dead.WithLabelValues("whoop", "test")))
			} else {
				assert.Equal(t, 1.0, testutil.ToFloat64(p.m.done.WithLabelValues("whoop", "test", tt.outcome)))
			}
		})
	}
}

// A long job keeps its lease: nobody else runs it meanwhile.
func TestLeaseIsRenewedWhileRunning(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	var running atomic.Int32
	var runs atomic.Int32
	h := handlerFunc(func(ctx context.Context, j store.Job) (string, error) {
		runs.Add(1)
		if running.Add(1) > 1 {
			t.Error("two workers run the job at once")
		}
		defer running.Add(-1)
		select {
		case <-time.After(1200 * time.Millisecond): // three times the lease
		case <-ctx.Done():
			return "", ctx.Err()
		}
		return "stored", nil
	})
	cfg := fast
	cfg.Lease = 400 * time.Millisecond
	// Two pools, as two replicas.
	a := NewPool(s, map[string]Handler{"test": h}, cfg, nil, slog.New(slog.DiscardHandler))
	b := NewPool(s, map[string]Handler{"test": h}, cfg, nil, slog.New(slog.DiscardHandler))
	id := enqueue(t, s, "long")
	run(t, a)
	run(t, b)
	j := waitState(t, s, id, store.Done)
	assert.Equal(t, 1, j.Attempts)
	assert.Equal(t, int32(1), runs.Load())
}

// At shutdown a running job gets the grace period; one that outlives it is
// cancelled and handed back without losing an attempt.
func TestShutdownReleasesUnfinishedJobs(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	started := make(chan struct{})
	h := handlerFunc(func(ctx context.Context, j store.Job) (string, error) {
		close(started)
		<-ctx.Done()
		return "", ctx.Err()
	})
	cfg := fast
	cfg.ShutdownGrace = 100 * time.Millisecond
	p := NewPool(s, map[string]Handler{"test": h}, cfg, nil, slog.New(slog.DiscardHandler))
	id := enqueue(t, s, "stuck")
	stop := run(t, p)
	<-started
	stop()
	j, err := s.Get(context.Background(), id)
	require.NoError(t, err)
	assert.Equal(t, store.Queued, j.State, "released, due at once for the next process")
	assert.Equal(t, 0, j.Attempts, "the cut attempt does not count")

	finished := make(chan struct{})
	p2 := NewPool(s, map[string]Handler{"test": handlerFunc(func(context.Context, store.Job) (string, error) {
		close(finished)
		return "stored", nil
	})}, fast, nil, slog.New(slog.DiscardHandler))
	run(t, p2)
	<-finished
	waitState(t, s, id, store.Done)
}

// A job that its workers keep abandoning (it crashes them, or outlives
// its lease) is buried instead of taking more workers down.
func TestAbandonedJobIsBuried(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	id := enqueue(t, s, "poison")
	for range fast.MaxAttempts {
		got, err := s.Lease(context.Background(), "crashing", 1, time.Millisecond)
		require.NoError(t, err)
		require.Len(t, got, 1)
		time.Sleep(5 * time.Millisecond) // let the lease expire
	}
	var calls atomic.Int32
	p := NewPool(s, map[string]Handler{"test": handlerFunc(func(context.Context, store.Job) (string, error) {
		calls.Add(1)
		return "stored", nil
	})}, fast, nil, slog.New(slog.DiscardHandler))
	run(t, p)
	j := waitState(t, s, id, store.Dead)
	assert.Contains(t, j.LastError, "abandoned")
	assert.Zero(t, calls.Load(), "the handler is not run again")
}

func TestUnknownKindIsDead(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	id, _, err := s.Enqueue(context.Background(), store.NewJob{Vendor: "oura", Kind: "mystery", DedupeKey: "m", Payload: []byte(`{}`)})
	require.NoError(t, err)
	p := NewPool(s, map[string]Handler{}, fast, nil, slog.New(slog.DiscardHandler))
	run(t, p)
	j := waitState(t, s, id, store.Dead)
	assert.Contains(t, j.LastError, "no handler")
}

func TestBackoff(t *testing.T) {
	t.Parallel()
	p := NewPool(nil, nil, Config{RetryBase: time.Second, RetryMax: 10 * time.Second}, nil, slog.New(slog.DiscardHandler))
	for attempt := 1; attempt <= 10; attempt++ {
		ceil := min(time.Second<<(attempt-1), 10*time.Second)
		for range 50 {
			d := p.backoff(attempt)
			require.GreaterOrEqual(t, d, 500*time.Millisecond, "attempt %d", attempt)
			require.LessOrEqual(t, d, ceil, "attempt %d", attempt)
		}
	}
	seen := map[time.Duration]bool{}
	for range 20 {
		seen[p.backoff(5)] = true
	}
	assert.Greater(t, len(seen), 10, "the wait is jittered")
}

func TestQueueDepthGauge(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	for i := range 3 {
		enqueue(t, s, fmt.Sprint("d", i))
	}
	cfg := fast
	cfg.MaintenanceInterval = 10 * time.Millisecond
	p := NewPool(s, map[string]Handler{}, cfg, nil, slog.New(slog.DiscardHandler))
	p.cfg.Workers = 1
	// Run only the maintenance loop: no workers take the jobs.
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { p.maintain(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	require.Eventually(t, func() bool {
		return testutil.ToFloat64(p.m.depth.WithLabelValues("whoop", "queued")) == 3
	}, 5*time.Second, 10*time.Millisecond)
}

// Background jobs never take the workers kept for live work: with three
// workers and one background slot, a live job runs at once although
// background jobs are queued ahead of it and one is stuck.
func TestLiveWorkKeepsItsWorkers(t *testing.T) {
	t.Parallel()
	s := newStore(t)
	ctx := context.Background()
	release := make(chan struct{})
	var running, peak atomic.Int32
	bg := handlerFunc(func(ctx context.Context, j store.Job) (string, error) {
		n := running.Add(1)
		defer running.Add(-1)
		for {
			p := peak.Load()
			if n <= p || peak.CompareAndSwap(p, n) {
				break
			}
		}
		select {
		case <-release:
		case <-ctx.Done():
		}
		return "done", nil
	})
	for i := range 5 {
		_, _, err := s.Enqueue(ctx, store.NewJob{Vendor: "whoop", Kind: "bg", DedupeKey: fmt.Sprint("bg-", i), Payload: []byte(`{}`),
			Priority: store.PriorityBackground})
		require.NoError(t, err)
	}
	cfg := fast
	cfg.Workers, cfg.MaxBackground = 3, 1
	p := NewPool(s, map[string]Handler{
		"bg":   bg,
		"test": handlerFunc(func(context.Context, store.Job) (string, error) { return "stored", nil }),
	}, cfg, nil, slog.New(slog.DiscardHandler))
	stop := run(t, p)
	require.Eventually(t, func() bool { return running.Load() == 1 }, 5*time.Second, 10*time.Millisecond)
	live := enqueue(t, s, "live")
	p.Wake()
	waitState(t, s, live, store.Done)
	assert.EqualValues(t, 1, peak.Load(), "one background slot")
	close(release)
	require.Eventually(t, func() bool {
		list, err := s.List(ctx, store.Done, 10)
		return err == nil && len(list) == 6
	}, 10*time.Second, 10*time.Millisecond)
	assert.EqualValues(t, 1, peak.Load(), "never more than one background job at a time")
	stop()
}
