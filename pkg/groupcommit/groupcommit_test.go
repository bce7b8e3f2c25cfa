package groupcommit_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/pkg/groupcommit"
)

// fake applies ops by echoing each op as its result, and fails any
// transaction containing a "poison" op.
type fake struct {
	mu    sync.Mutex
	sizes []int
	txs   atomic.Int64
	// mergedFailures counts failed transactions of more than one op.
	mergedFailures atomic.Int64
}

func (f *fake) apply(_ context.Context, ops []string) ([]string, error) {
	f.mu.Lock()
	f.sizes = append(f.sizes, len(ops))
	f.mu.Unlock()
	for _, op := range ops {
		if op == "poison" {
			if len(ops) > 1 {
				f.mergedFailures.Add(1)
			}
			return nil, errors.New("poisoned")
		}
	}
	f.txs.Add(1)
	return append([]string(nil), ops...), nil
}

func ops(ids ...string) []string { return ids }

func TestEachCallGetsItsOwnResults(t *testing.T) {
	t.Parallel()
	f := &fake{}
	c := groupcommit.New(groupcommit.Config{Window: 20 * time.Millisecond, Concurrency: 1, MaxOps: 100}, f.apply, groupcommit.Metrics{})
	defer c.Close()
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			id := string(rune('a' + i))
			res, err := c.Do(context.Background(), ops(id, id+"2"))
			if err != nil || len(res) != 2 || res[0] != id || res[1] != id+"2" {
				t.Errorf("call %d: %v %v", i, res, err)
			}
		})
	}
	wg.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	require.Less(t, len(f.sizes), 20, "calls were merged")
	for _, n := range f.sizes {
		require.LessOrEqual(t, n, 100)
	}
	require.EqualValues(t, len(f.sizes), f.txs.Load(), "every transaction committed")
}

func TestAFailingCallFailsAlone(t *testing.T) {
	t.Parallel()
	f := &fake{}
	isolations := prometheus.NewCounter(prometheus.CounterOpts{Name: "isolations_total"})
	c := groupcommit.New(groupcommit.Config{Window: 50 * time.Millisecond, Concurrency: 1}, f.apply, groupcommit.Metrics{Isolations: isolations})
	defer c.Close()
	var wg sync.WaitGroup
	errs := make([]error, 5)
	for i := range 5 {
		wg.Go(func() {
			id := "ok"
			if i == 2 {
				id = "poison"
			}
			_, errs[i] = c.Do(context.Background(), ops(id))
		})
	}
	wg.Wait()
	for i, err := range errs {
		if i == 2 {
			require.Error(t, err)
		} else {
			require.NoError(t, err)
		}
	}
	require.Equal(t, float64(f.mergedFailures.Load()), testutil.ToFloat64(isolations), "each failed merged transaction is counted")
}

func TestAnApplyThatLosesResultsFailsItsCallers(t *testing.T) {
	t.Parallel()
	short := func(_ context.Context, ops []string) ([]string, error) { return ops[:len(ops)-1], nil }
	c := groupcommit.New(groupcommit.Config{Concurrency: 1}, short, groupcommit.Metrics{})
	defer c.Close()
	_, err := c.Do(context.Background(), ops("a", "b"))
	require.ErrorContains(t, err, "1 results for 2 ops")
}

func TestBigCallsAreNotMergedPastTheLimit(t *testing.T) {
	t.Parallel()
	f := &fake{}
	c := groupcommit.New(groupcommit.Config{Window: 20 * time.Millisecond, Concurrency: 1, MaxOps: 10}, f.apply, groupcommit.Metrics{})
	defer c.Close()
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if _, err := c.Do(context.Background(), ops("a", "b", "c", "d", "e", "f", "g")); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Go(func() {
		if _, err := c.Do(context.Background(), ops(make([]string, 25)...)); err != nil {
			t.Error(err)
		}
	})
	wg.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	require.Contains(t, f.sizes, 25, "an oversized call runs alone")
	for _, n := range f.sizes {
		require.True(t, n == 7 || n == 25, "sizes %v", f.sizes)
	}
}

func TestCloseAnswersEveryone(t *testing.T) {
	t.Parallel()
	block := make(chan struct{})
	apply := func(ctx context.Context, o []string) ([]string, error) {
		<-block
		return o, nil
	}
	c := groupcommit.New(groupcommit.Config{Concurrency: 1}, apply, groupcommit.Metrics{})
	results := make(chan error, 3)
	for range 3 {
		go func() {
			_, err := c.Do(context.Background(), ops("x"))
			results <- err
		}()
	}
	time.Sleep(50 * time.Millisecond) // let the calls queue
	closed := make(chan struct{})
	go func() {
		c.Close()
		close(closed)
	}()
	close(block) // the transaction in flight finishes
	<-closed
	var ok, closedErrs int
	for range 3 {
		switch err := <-results; {
		case err == nil:
			ok++
		case errors.Is(err, groupcommit.ErrClosed):
			closedErrs++
		default:
			t.Fatalf("unexpected error %v", err)
		}
	}
	require.Equal(t, 3, ok+closedErrs)
	require.GreaterOrEqual(t, ok, 1, "the transaction in flight completed")
	_, err := c.Do(context.Background(), ops("late"))
	require.ErrorIs(t, err, groupcommit.ErrClosed)
}
