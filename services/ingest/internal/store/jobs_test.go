package store

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/pkg/testpg"
)

func newStore(t *testing.T) (*Store, *pgxpool.Pool) {
	t.Helper()
	url := testpg.New(t, "ingest_jobs_"+Migrations.Version(), Migrations.Migrate)
	pool, err := pgxpool.New(context.Background(), url)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	return New(pool), pool
}

func job(vendor, key string) NewJob {
	return NewJob{Vendor: vendor, Kind: "webhook", DedupeKey: key, Payload: []byte(`{"k":"` + key + `"}`), Priority: PriorityLive}
}

func TestEnqueueDeduplicates(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	ctx := context.Background()
	id, inserted, err := s.Enqueue(ctx, job("whoop", "trace-1"))
	require.NoError(t, err)
	assert.True(t, inserted)
	again, inserted, err := s.Enqueue(ctx, job("whoop", "trace-1"))
	require.NoError(t, err)
	assert.False(t, inserted, "a redelivery queues nothing")
	assert.Equal(t, id, again, "a duplicate reports the original job")
	other, inserted, err := s.Enqueue(ctx, job("oura", "trace-1"))
	require.NoError(t, err)
	assert.True(t, inserted, "dedupe keys are per vendor")
	assert.NotEqual(t, id, other)

	// Concurrent redeliveries of one event still make one job.
	var wg sync.WaitGroup
	var mu sync.Mutex
	ins := 0
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, ok, err := s.Enqueue(ctx, job("whoop", "trace-race"))
			assert.NoError(t, err)
			if ok {
				mu.Lock()
				ins++
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	assert.Equal(t, 1, ins)
}

func TestLeaseOrderAndExclusivity(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	ctx := context.Background()
	bg := job("whoop", "backfill")
	bg.Priority = PriorityBackground
	_, _, err := s.Enqueue(ctx, bg)
	require.NoError(t, err)
	later := job("whoop", "later")
	later.Delay = time.Hour
	_, _, err = s.Enqueue(ctx, later)
	require.NoError(t, err)
	for i := range 20 {
		_, _, err := s.Enqueue(ctx, job("whoop", fmt.Sprint("live-", i)))
		require.NoError(t, err)
	}

	first, err := s.Lease(ctx, "w0", 1, time.Minute)
	require.NoError(t, err)
	require.Len(t, first, 1)
	assert.Equal(t, "live-0", first[0].DedupeKey, "live before background, oldest first")
	assert.Equal(t, 1, first[0].Attempts)
	assert.NotEmpty(t, first[0].LeaseToken)

	// Four workers lease concurrently: every job goes to exactly one.
	seen := map[int64]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				got, err := s.Lease(ctx, fmt.Sprint("w", w+1), 3, time.Minute)
				if !assert.NoError(t, err) || len(got) == 0 {
					return
				}
				mu.Lock()
				for _, j := range got {
					if prev, dup := seen[j.ID]; dup {
						t.Errorf("job %d leased by %s and w%d", j.ID, prev, w+1)
					}
					seen[j.ID] = fmt.Sprint("w", w+1)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	assert.Len(t, seen, 20, "19 live jobs and the background one; the delayed job is not due")
}

func TestExpiredLeaseIsTakenOverAndFenced(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	ctx := context.Background()
	_, _, err := s.Enqueue(ctx, job("oura", "e1"))
	require.NoError(t, err)
	crashed, err := s.Lease(ctx, "crashed", 1, 50*time.Millisecond)
	require.NoError(t, err)
	require.Len(t, crashed, 1)

	none, err := s.Lease(ctx, "other", 1, time.Minute)
	require.NoError(t, err)
	assert.Empty(t, none, "a held lease is not taken")

	var taken []Job
	require.Eventually(t, func() bool {
		taken, err = s.Lease(ctx, "other", 1, time.Minute)
		return err == nil && len(taken) == 1
	}, 10*time.Second, 20*time.Millisecond, "an expired lease makes the job due again")
	assert.Equal(t, crashed[0].ID, taken[0].ID)
	assert.Equal(t, 2, taken[0].Attempts)

	require.ErrorIs(t, s.Complete(ctx, crashed[0], "stored"), ErrLeaseLost, "the old holder is fenced off")
	require.ErrorIs(t, s.Extend(ctx, crashed[0], time.Minute), ErrLeaseLost)
	require.NoError(t, s.Extend(ctx, taken[0], time.Minute))
	require.NoError(t, s.Complete(ctx, taken[0], "stored"))
	got, err := s.Get(ctx, taken[0].ID)
	require.NoError(t, err)
	assert.Equal(t, Done, got.State)
	assert.Equal(t, "stored", got.Outcome)
	require.ErrorIs(t, s.Complete(ctx, taken[0], "stored"), ErrLeaseLost, "a finished job cannot finish twice")
}

func TestRetryBuryRequeue(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	ctx := context.Background()
	id, _, err := s.Enqueue(ctx, job("whoop", "r1"))
	require.NoError(t, err)

	leased, err := s.Lease(ctx, "w", 1, time.Minute)
	require.NoError(t, err)
	require.NoError(t, s.Retry(ctx, leased[0], 0, "vendor 429", false))
	got, err := s.Get(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, Queued, got.State)
	assert.Equal(t, 0, got.Attempts, "waiting for a rate limit does not count as an attempt")
	assert.Equal(t, "vendor 429", got.LastError)

	leased, err = s.Lease(ctx, "w", 1, time.Minute)
	require.NoError(t, err)
	require.NoError(t, s.Retry(ctx, leased[0], time.Hour, "vendor 503", true))
	got, err = s.Get(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, 1, got.Attempts)
	none, err := s.Lease(ctx, "w", 1, time.Minute)
	require.NoError(t, err)
	assert.Empty(t, none, "a retry waits for its delay")

	// Make it due now and let it die.
	_, err = s.pool.Exec(ctx, `UPDATE ingest.jobs SET run_at = now() WHERE id = $1`, id)
	require.NoError(t, err)
	leased, err = s.Lease(ctx, "w", 1, time.Minute)
	require.NoError(t, err)
	require.NoError(t, s.Bury(ctx, leased[0], "vendor 500 after 2 attempts"))

	dead, err := s.List(ctx, Dead, 10)
	require.NoError(t, err)
	require.Len(t, dead, 1)
	assert.Equal(t, id, dead[0].ID)
	assert.Equal(t, "vendor 500 after 2 attempts", dead[0].LastError)

	depths, err := s.Depths(ctx)
	require.NoError(t, err)
	assert.Contains(t, depths, Depth{Vendor: "whoop", State: Dead, Count: 1})

	n, err := s.Requeue(ctx, []int64{id + 1000})
	require.NoError(t, err)
	assert.Zero(t, n, "unknown ids requeue nothing")
	n, err = s.Requeue(ctx, nil)
	require.NoError(t, err)
	assert.Equal(t, 1, n)
	got, err = s.Get(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, Queued, got.State)
	assert.Equal(t, 0, got.Attempts)
	n, err = s.Requeue(ctx, []int64{id})
	require.NoError(t, err)
	assert.Zero(t, n, "only dead jobs are requeued")
}

func TestReleaseAndPurge(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	ctx := context.Background()
	_, _, err := s.Enqueue(ctx, job("whoop", "p1"))
	require.NoError(t, err)
	leased, err := s.Lease(ctx, "w", 1, time.Minute)
	require.NoError(t, err)
	require.NoError(t, s.Release(ctx, leased[0]))
	again, err := s.Lease(ctx, "w2", 1, time.Minute)
	require.NoError(t, err)
	require.Len(t, again, 1, "a released job is due at once")
	assert.Equal(t, 1, again[0].Attempts)
	require.NoError(t, s.Complete(ctx, again[0], "stored"))

	n, err := s.Purge(ctx, time.Hour)
	require.NoError(t, err)
	assert.Zero(t, n, "recent jobs keep their dedupe keys")
	n, err = s.Purge(ctx, 0)
	require.NoError(t, err)
	assert.Equal(t, int64(1), n)
	_, inserted, err := s.Enqueue(ctx, job("whoop", "p1"))
	require.NoError(t, err)
	assert.True(t, inserted)
}

// A backfill is created once per connection generation; it completes, with
// its notification queued in the same transaction, only when none of its
// jobs is unfinished (a dead page holds it back until retried).
func TestBackfillLifecycle(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	ctx := context.Background()
	gen := time.Now().UTC().Truncate(time.Microsecond)
	b := Backfill{UserID: "u1", Vendor: "whoop", ConnectedAt: gen, GroupKey: "backfill:whoop:u1:1",
		WindowStart: gen.Add(-72 * time.Hour), WindowEnd: gen}
	page := func(key string) NewJob {
		j := job("whoop", key)
		j.Kind, j.Priority, j.GroupKey = "backfill", PriorityBackground, b.GroupKey
		return j
	}
	created, err := s.CreateBackfill(ctx, b, []NewJob{page("p1"), page("p2")})
	require.NoError(t, err)
	require.True(t, created)
	created, err = s.CreateBackfill(ctx, b, []NewJob{page("p3")})
	require.NoError(t, err)
	assert.False(t, created, "a generation is backfilled once")

	missing, err := s.MissingBackfills(ctx, []GenerationKey{{"u1", "whoop", gen}, {"u1", "whoop", gen.Add(time.Second)}, {"u2", "oura", gen}})
	require.NoError(t, err)
	require.Len(t, missing, 2)
	assert.Equal(t, "u1", missing[0].UserID)
	assert.True(t, gen.Add(time.Second).Equal(missing[0].ConnectedAt))
	assert.Equal(t, "u2", missing[1].UserID)
	latest, err := s.LatestBackfilledConnection(ctx)
	require.NoError(t, err)
	assert.True(t, gen.Equal(latest))

	notify := func(b Backfill) (NewJob, error) {
		j := job(b.Vendor, "event:"+b.GroupKey)
		j.Kind = "connection_event"
		return j, nil
	}
	finish := func() []Backfill {
		t.Helper()
		done, err := s.FinishBackfills(ctx, 10, "connection_inactive", notify)
		require.NoError(t, err)
		return done
	}
	assert.Empty(t, finish(), "pages are queued")

	leased, err := s.LeaseAtLeast(ctx, "w", 10, time.Minute, PriorityBackground)
	require.NoError(t, err)
	require.Len(t, leased, 2)
	require.NoError(t, s.Complete(ctx, leased[0], "page_stored"))
	require.NoError(t, s.Bury(ctx, leased[1], "vendor down"))
	require.NoError(t, s.AddBackfillRecords(ctx, b.GroupKey, 7))
	assert.Empty(t, finish(), "a dead page holds the backfill back")
	list, err := s.Backfills(ctx, "u1", "")
	require.NoError(t, err)
	require.Len(t, list, 1)
	assert.Equal(t, map[State]int{Done: 1, Dead: 1}, list[0].Pages)
	assert.EqualValues(t, 7, list[0].Records)
	assert.True(t, list[0].CompletedAt.IsZero())

	n, err := s.Requeue(ctx, nil)
	require.NoError(t, err)
	require.Equal(t, 1, n)
	leased, err = s.Lease(ctx, "w", 10, time.Minute)
	require.NoError(t, err)
	require.Len(t, leased, 1)
	require.NoError(t, s.Complete(ctx, leased[0], "connection_inactive"))
	done := finish()
	require.Len(t, done, 1)
	assert.Equal(t, b.GroupKey, done[0].GroupKey)
	assert.True(t, done[0].Cut, "a page found the connection gone")
	assert.Empty(t, finish(), "completed once")
	events, err := s.List(ctx, Queued, 10)
	require.NoError(t, err)
	require.Len(t, events, 1)
	assert.Equal(t, "connection_event", events[0].Kind)
	counts, err := s.CountBackfills(ctx)
	require.NoError(t, err)
	assert.Equal(t, BackfillCounts{Completed: 1}, *counts["whoop"])
}

// One replica claims a reconciliation round; a claim left incomplete past
// its staleness is taken over, a completed one never.
func TestReconcileRoundClaims(t *testing.T) {
	t.Parallel()
	s, pool := newStore(t)
	ctx := context.Background()
	ok, err := s.ClaimRound(ctx, 42, "a", time.Minute)
	require.NoError(t, err)
	assert.True(t, ok)
	ok, err = s.ClaimRound(ctx, 42, "b", time.Minute)
	require.NoError(t, err)
	assert.False(t, ok, "claimed by a")
	_, err = pool.Exec(ctx, `UPDATE ingest.reconcile_rounds SET claimed_at = now() - interval '2 minutes'`)
	require.NoError(t, err)
	ok, err = s.ClaimRound(ctx, 42, "b", time.Minute)
	require.NoError(t, err)
	assert.True(t, ok, "a died midway: b takes over")
	require.NoError(t, s.CompleteRound(ctx, 42, 3))
	_, err = pool.Exec(ctx, `UPDATE ingest.reconcile_rounds SET claimed_at = now() - interval '2 minutes'`)
	require.NoError(t, err)
	ok, err = s.ClaimRound(ctx, 42, "c", time.Minute)
	require.NoError(t, err)
	assert.False(t, ok, "a completed round is never scheduled again")
}

// TestParkAndResume: a parked job is never leased, gives its attempt back
// and resumes only for a newer generation of its own user's connection at
// its own vendor.
func TestParkAndResume(t *testing.T) {
	t.Parallel()
	gen := time.Date(2026, 11, 1, 8, 0, 0, 0, time.UTC)
	tests := []struct {
		name    string
		key     GenerationKey
		resumed bool
	}{
		{"a reconnect resumes", GenerationKey{UserID: "u1", Vendor: "whoop", ConnectedAt: gen.Add(time.Second)}, true},
		{"the same generation does not", GenerationKey{UserID: "u1", Vendor: "whoop", ConnectedAt: gen}, false},
		{"an older generation does not", GenerationKey{UserID: "u1", Vendor: "whoop", ConnectedAt: gen.Add(-time.Hour)}, false},
		{"another user's reconnect does not", GenerationKey{UserID: "u2", Vendor: "whoop", ConnectedAt: gen.Add(time.Hour)}, false},
		{"the user's other vendor does not", GenerationKey{UserID: "u1", Vendor: "oura", ConnectedAt: gen.Add(time.Hour)}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s, _ := newStore(t)
			ctx := context.Background()
			id, _, err := s.Enqueue(ctx, job("whoop", "trace-1"))
			require.NoError(t, err)
			leased, err := s.Lease(ctx, "w1", 1, time.Minute)
			require.NoError(t, err)
			require.Len(t, leased, 1)
			require.NoError(t, s.Park(ctx, leased[0], "u1", gen, "connection_broken"))

			j, err := s.Get(ctx, id)
			require.NoError(t, err)
			assert.Equal(t, Parked, j.State)
			assert.Equal(t, 0, j.Attempts, "waiting for the user is not a failed attempt")
			assert.Equal(t, "connection_broken", j.LastError)
			listed, err := s.List(ctx, Parked, 10)
			require.NoError(t, err)
			require.Len(t, listed, 1)
			none, err := s.Lease(ctx, "w1", 1, time.Minute)
			require.NoError(t, err)
			assert.Empty(t, none, "a parked job is not leased")
			oldest, err := s.OldestParked(ctx)
			require.NoError(t, err)
			assert.True(t, gen.Equal(oldest["whoop"]))

			moved, err := s.Resume(ctx, []GenerationKey{tc.key})
			require.NoError(t, err)
			j, err = s.Get(ctx, id)
			require.NoError(t, err)
			if tc.resumed {
				assert.Equal(t, map[string]int{"whoop": 1}, moved)
				assert.Equal(t, Queued, j.State)
				again, err := s.Lease(ctx, "w1", 1, time.Minute)
				require.NoError(t, err)
				assert.Len(t, again, 1, "a resumed job runs again")
			} else {
				assert.Empty(t, moved)
				assert.Equal(t, Parked, j.State)
			}
		})
	}
}

// TestLongErrorIsCutOnACharacter: a last error longer than the column's
// bound is cut on a character boundary. Cut in the middle of "é",
// PostgreSQL refuses the value as invalid UTF-8 and the job could not be
// rescheduled at all.
func TestLongErrorIsCutOnACharacter(t *testing.T) {
	t.Parallel()
	s, _ := newStore(t)
	ctx := context.Background()
	id, _, err := s.Enqueue(ctx, job("oura", "long-error"))
	require.NoError(t, err)
	leased, err := s.Lease(ctx, "w", 1, time.Minute)
	require.NoError(t, err)
	long := strings.Repeat("x", maxErrorLen-1) + "é and more"
	require.NoError(t, s.Retry(ctx, leased[0], 0, long, true))
	got, err := s.Get(ctx, id)
	require.NoError(t, err)
	assert.Equal(t, strings.Repeat("x", maxErrorLen-1), got.LastError)
}
