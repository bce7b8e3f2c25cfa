package store

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/pkg/groupcommit"
)

func TestEnqueueBatchReportsEachJob(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := context.Background()
	old, inserted, err := s.Enqueue(ctx, job("whoop", "old"))
	require.NoError(t, err)
	require.True(t, inserted)

	// Out of key order, a duplicate of a committed job, a duplicate within
	// the batch, and the same key for another vendor.
	got, err := s.EnqueueBatch(ctx, []NewJob{job("whoop", "z"), job("whoop", "old"), job("whoop", "a"), job("whoop", "z"), job("oura", "z")})
	require.NoError(t, err)
	require.Len(t, got, 5)
	assert.True(t, got[0].Inserted, "first z")
	assert.Equal(t, Enqueued{ID: old}, got[1], "a redelivery reports the existing job")
	assert.True(t, got[2].Inserted, "a")
	assert.Equal(t, Enqueued{ID: got[0].ID}, got[3], "the second z of the batch is the first one's duplicate")
	assert.True(t, got[4].Inserted, "dedupe keys are per vendor")
	assert.NotEqual(t, got[0].ID, got[4].ID)

	var n int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM ingest.jobs`).Scan(&n))
	assert.Equal(t, 4, n, "old, z (whoop), a, z (oura)")
}

// The webhook path's promise: when Enqueue returns, the job is committed
// (another connection sees it), each delivery is queued once however many
// concurrent redeliveries share a transaction, and concurrent calls share
// transactions.
func TestGroupEnqueuerCommitsBeforeAnsweringAndDeduplicates(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := context.Background()
	requests := prometheus.NewHistogram(prometheus.HistogramOpts{Name: "requests", Buckets: prometheus.LinearBuckets(1, 1, 10)})
	g := NewGroupEnqueuer(s, groupcommit.Config{Window: 20 * time.Millisecond, Concurrency: 1}, groupcommit.Metrics{Requests: requests})
	defer g.Close()

	const keys, copies = 30, 3
	var mu sync.Mutex
	inserted := map[string]int{}
	ids := map[string]map[int64]bool{}
	var wg sync.WaitGroup
	for i := range keys * copies {
		wg.Go(func() {
			key := fmt.Sprint("delivery-", i%keys)
			id, ins, err := g.Enqueue(ctx, job("whoop", key))
			if !assert.NoError(t, err) {
				return
			}
			var seen int64
			// Committed: a fresh statement on another connection sees it.
			assert.NoError(t, pool.QueryRow(ctx, `SELECT id FROM ingest.jobs WHERE vendor = 'whoop' AND dedupe_key = $1`, key).Scan(&seen))
			assert.Equal(t, seen, id)
			mu.Lock()
			defer mu.Unlock()
			if ins {
				inserted[key]++
			}
			if ids[key] == nil {
				ids[key] = map[int64]bool{}
			}
			ids[key][id] = true
		})
	}
	wg.Wait()
	require.Len(t, inserted, keys)
	for key, n := range inserted {
		assert.Equal(t, 1, n, "%s inserted once", key)
		assert.Len(t, ids[key], 1, "%s: every copy reports the same job", key)
	}

	var m dto.Metric
	require.NoError(t, requests.Write(&m))
	h := m.GetHistogram()
	assert.EqualValues(t, keys*copies, h.GetSampleSum(), "every call ran in a transaction")
	assert.Less(t, h.GetSampleCount(), uint64(keys*copies), "concurrent calls shared transactions")
}

// A job the database refuses (here a payload that is not JSON) fails its
// own call only: the others of its transaction are committed.
func TestGroupEnqueuerIsolatesABadJob(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := context.Background()
	g := NewGroupEnqueuer(s, groupcommit.Config{Window: 20 * time.Millisecond, Concurrency: 1}, groupcommit.Metrics{})
	defer g.Close()

	errs := make([]error, 8)
	var wg sync.WaitGroup
	for i := range errs {
		wg.Go(func() {
			j := job("oura", fmt.Sprint("k-", i))
			if i == 3 {
				j.Payload = []byte(`{not json`)
			}
			_, _, errs[i] = g.Enqueue(ctx, j)
		})
	}
	wg.Wait()
	for i, err := range errs {
		if i == 3 {
			assert.Error(t, err)
		} else {
			assert.NoError(t, err, "job %d", i)
		}
	}
	var n int
	require.NoError(t, pool.QueryRow(ctx, `SELECT count(*) FROM ingest.jobs`).Scan(&n))
	assert.Equal(t, 7, n)
}

// TestDuplicateLookUpProbesTheDedupeKey guards the plan of the look-up a
// batch of redeliveries pays: with 20000 jobs stored and no statistics yet,
// 500 redeliveries must probe the dedupe constraint, not read the table.
func TestDuplicateLookUpProbesTheDedupeKey(t *testing.T) {
	t.Parallel()
	_, pool := newStore(t)
	ctx := context.Background()
	_, err := pool.Exec(ctx, `INSERT INTO ingest.jobs (vendor, kind, dedupe_key, payload)
		SELECT 'whoop', 'webhook', 'trace-' || g, '{}' FROM generate_series(1, 20000) g`)
	require.NoError(t, err)
	vendors, keys := make([]string, 500), make([]string, 500)
	for i := range keys {
		vendors[i], keys[i] = "whoop", fmt.Sprintf("trace-%d", i*7+1)
	}
	rows, err := pool.Query(ctx, "EXPLAIN "+lookUpDuplicatesSQL, vendors, keys)
	require.NoError(t, err)
	var plan string
	for rows.Next() {
		var line string
		require.NoError(t, rows.Scan(&line))
		plan += line + "\n"
	}
	require.NoError(t, rows.Err())
	require.Contains(t, plan, "Index Scan using jobs_dedupe", plan)
	require.NotContains(t, plan, "Seq Scan on jobs", plan)
}
