package store

import (
	"context"
	"fmt"

	"github.com/jackc/pgx/v5"

	"github.com/biobridge/bridge/pkg/groupcommit"
)

// Enqueued is the outcome of one job of EnqueueBatch: the job's id, and
// whether this call inserted it (false for a duplicate, whose id is the
// existing job's).
type Enqueued struct {
	ID       int64
	Inserted bool
}

// EnqueueBatch commits jobs in one transaction, skipping duplicates as
// Enqueue does, and returns one outcome per job in order. Two jobs of the
// batch with the same (vendor, dedupe key) make one job: the first one
// inserts it, the second is its duplicate.
//
// The batch is one multi-row INSERT: one statement, so one transaction and
// one round trip (a second one looks up the ids of duplicates, if any). Its
// rows go in (vendor, dedupe key) order whatever the order of js: two
// batches that share keys take their row locks in the same order and
// cannot deadlock on each other.
func (s *Store) EnqueueBatch(ctx context.Context, js []NewJob) ([]Enqueued, error) {
	n := len(js)
	vendors, kinds, keys, payloads := make([]string, n), make([]string, n), make([]string, n), make([]string, n)
	priorities, delays, groups := make([]int32, n), make([]int64, n), make([]*string, n)
	for i, j := range js {
		vendors[i], kinds[i], keys[i], payloads[i] = j.Vendor, j.Kind, j.DedupeKey, string(j.Payload)
		priorities[i], delays[i] = int32(j.Priority), j.Delay.Microseconds()
		if j.GroupKey != "" {
			groups[i] = &js[i].GroupKey
		}
	}
	// One statement is one transaction of its own: no BEGIN and COMMIT
	// round trips.
	rows, err := s.pool.Query(ctx, `
		INSERT INTO ingest.jobs (vendor, kind, dedupe_key, payload, priority, run_at, group_key)
		SELECT vendor, kind, dedupe_key, payload::jsonb, priority, now() + delay_us * interval '1 microsecond', group_key
		FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::smallint[], $6::bigint[], $7::text[])
			WITH ORDINALITY AS b(vendor, kind, dedupe_key, payload, priority, delay_us, group_key, ord)
		ORDER BY vendor, dedupe_key, ord
		ON CONFLICT (vendor, dedupe_key) DO NOTHING
		RETURNING vendor, dedupe_key, id`,
		vendors, kinds, keys, payloads, priorities, delays, groups)
	if err != nil {
		return nil, fmt.Errorf("enqueue jobs: %w", err)
	}
	ids, err := collectIDs(rows)
	if err != nil {
		return nil, fmt.Errorf("enqueue jobs: %w", err)
	}
	out := make([]Enqueued, n)
	var dups []int
	for i, j := range js {
		k := jobKey{j.Vendor, j.DedupeKey}
		if id, ok := ids[k]; ok {
			out[i] = Enqueued{ID: id, Inserted: true}
			// A later job of the batch with the same key is its
			// duplicate.
			delete(ids, k)
			continue
		}
		dups = append(dups, i)
	}
	// The jobs that deduplicated these are committed (ON CONFLICT waited
	// for any transaction still inserting one), so a fresh statement sees
	// them.
	if err := s.lookUpDuplicates(ctx, js, dups, out); err != nil {
		return nil, err
	}
	return out, nil
}

type jobKey struct{ vendor, dedupe string }

// collectIDs reads (vendor, dedupe_key, id) rows.
func collectIDs(rows pgx.Rows) (map[jobKey]int64, error) {
	ids := map[jobKey]int64{}
	var k jobKey
	var id int64
	_, err := pgx.ForEachRow(rows, []any{&k.vendor, &k.dedupe, &id}, func() error {
		ids[k] = id
		return nil
	})
	return ids, err
}

// lookUpDuplicatesSQL finds the jobs that deduplicated a batch's
// redeliveries: one probe of the dedupe constraint per key, whatever the
// table's size or statistics (as a plain join the planner may hash the
// whole job table, and a vendor's retry storm is all redeliveries). The
// LIMIT keeps the subquery from being flattened into that join; the key
// is unique, so it drops nothing.
const lookUpDuplicatesSQL = `
SELECT j.vendor, j.dedupe_key, j.id
FROM unnest($1::text[], $2::text[]) AS d(vendor, dedupe_key)
CROSS JOIN LATERAL (
	SELECT j.vendor, j.dedupe_key, j.id FROM ingest.jobs j
	WHERE j.vendor = d.vendor AND j.dedupe_key = d.dedupe_key
	LIMIT 1
) j`

// lookUpDuplicates fills in the ids of the jobs at dups, which a committed
// job deduplicated.
func (s *Store) lookUpDuplicates(ctx context.Context, js []NewJob, dups []int, out []Enqueued) error {
	if len(dups) == 0 {
		return nil
	}
	vendors := make([]string, len(dups))
	keys := make([]string, len(dups))
	for k, i := range dups {
		vendors[k], keys[k] = js[i].Vendor, js[i].DedupeKey
	}
	rows, err := s.pool.Query(ctx, lookUpDuplicatesSQL, vendors, keys)
	if err != nil {
		return fmt.Errorf("look up duplicate jobs: %w", err)
	}
	ids, err := collectIDs(rows)
	if err != nil {
		return fmt.Errorf("look up duplicate jobs: %w", err)
	}
	for _, i := range dups {
		id, ok := ids[jobKey{js[i].Vendor, js[i].DedupeKey}]
		if !ok {
			return fmt.Errorf("look up duplicate %s job: not found", js[i].Vendor)
		}
		out[i] = Enqueued{ID: id}
	}
	return nil
}

// GroupEnqueuer enqueues jobs through a group committer: concurrent
// Enqueue calls share transactions (one commit, one round trip), and each
// call still returns only after the transaction holding its job committed.
// The webhook path uses it, where many small deliveries arrive at once.
type GroupEnqueuer struct {
	c *groupcommit.Committer[NewJob, Enqueued]
}

// NewGroupEnqueuer starts a GroupEnqueuer on s. Close it after the servers
// that call it have stopped.
func NewGroupEnqueuer(s *Store, cfg groupcommit.Config, m groupcommit.Metrics) *GroupEnqueuer {
	return &GroupEnqueuer{c: groupcommit.New(cfg, s.EnqueueBatch, m)}
}

// Enqueue commits j unless a job with the same (vendor, dedupe key)
// exists, like Store.Enqueue.
func (g *GroupEnqueuer) Enqueue(ctx context.Context, j NewJob) (id int64, inserted bool, err error) {
	res, err := g.c.Do(ctx, []NewJob{j})
	if err != nil {
		return 0, false, err
	}
	return res[0].ID, res[0].Inserted, nil
}

// Close waits for the transactions in flight; later calls fail with
// groupcommit.ErrClosed.
func (g *GroupEnqueuer) Close() { g.c.Close() }
