package groupcommit_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	"github.com/biobridge/bridge/services/persistence/internal/groupcommit"
	"github.com/biobridge/bridge/services/persistence/internal/metrics"
	"github.com/biobridge/bridge/services/persistence/internal/record"
	"github.com/biobridge/bridge/services/persistence/internal/store"
)

// fake applies ops by echoing each op's trace parent as its event id, and
// fails any transaction containing a "poison" op.
type fake struct {
	mu    sync.Mutex
	sizes []int
	after atomic.Int64
}

func (f *fake) apply(_ context.Context, ops []store.Op) ([]store.OpResult, []record.UserChange, error) {
	f.mu.Lock()
	f.sizes = append(f.sizes, len(ops))
	f.mu.Unlock()
	out := make([]store.OpResult, len(ops))
	for i, op := range ops {
		if op.TraceParent == "poison" {
			return nil, nil, errors.New("poisoned")
		}
		out[i] = store.OpResult{Status: persistencev1.WriteStatus_WRITE_STATUS_INSERTED, EventID: op.TraceParent}
	}
	return out, []record.UserChange{{UserID: "u"}}, nil
}

func ops(ids ...string) []store.Op {
	out := make([]store.Op, len(ids))
	for i, id := range ids {
		out[i] = store.Op{TraceParent: id}
	}
	return out
}

func TestEachCallGetsItsOwnResults(t *testing.T) {
	t.Parallel()
	f := &fake{}
	c := groupcommit.New(groupcommit.Config{Window: 20 * time.Millisecond, Concurrency: 1, MaxOps: 100}, f.apply,
		func(context.Context, []record.UserChange) { f.after.Add(1) }, metrics.Nop())
	defer c.Close()
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			id := string(rune('a' + i))
			res, err := c.Do(context.Background(), ops(id, id+"2"))
			if err != nil || len(res) != 2 || res[0].EventID != id || res[1].EventID != id+"2" {
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
	require.EqualValues(t, len(f.sizes), f.after.Load(), "the cache hook runs once per committed transaction")
}

func TestAFailingCallFailsAlone(t *testing.T) {
	t.Parallel()
	f := &fake{}
	c := groupcommit.New(groupcommit.Config{Window: 50 * time.Millisecond, Concurrency: 1}, f.apply, nil, metrics.Nop())
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
}

func TestBigCallsAreNotMergedPastTheLimit(t *testing.T) {
	t.Parallel()
	f := &fake{}
	c := groupcommit.New(groupcommit.Config{Window: 20 * time.Millisecond, Concurrency: 1, MaxOps: 10}, f.apply, nil, metrics.Nop())
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
	apply := func(ctx context.Context, o []store.Op) ([]store.OpResult, []record.UserChange, error) {
		<-block
		return make([]store.OpResult, len(o)), nil, nil
	}
	c := groupcommit.New(groupcommit.Config{Concurrency: 1}, apply, nil, metrics.Nop())
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
