// Package store is ingest's durable work queue in PostgreSQL (schema
// "ingest"). Producers enqueue inside one short transaction, deduplicated on
// the vendor's delivery identity; workers lease due jobs with FOR UPDATE SKIP
// LOCKED, so several replicas never hold one job at the same time, and every
// state change after the lease is fenced by the lease token, so a worker
// whose lease expired (it stalled or crashed and another took over) cannot
// overwrite the newer holder's result.
//
// A running job's run_at is its lease expiry: a crashed worker's jobs become
// due again by themselves, with no sweeper.
package store

import (
	"context"
	"embed"
	"errors"
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/biobridge/bridge/pkg/pgstore"
	"github.com/biobridge/bridge/pkg/truncate"
)

// Schema is the PostgreSQL schema ingest owns.
const Schema = "ingest"

//go:embed migrations/*.sql
var migrationFiles embed.FS

// Migrations are ingest's schema migrations; their Version keys test
// templates, so one built from an older set is not reused.
var Migrations = pgstore.EmbeddedMigrations(migrationFiles, "migrations", Schema)

// State mirrors ingest.v1.JobState.
type State int16

// The job states, numbered as in the proto.
const (
	Queued  State = 1
	Running State = 2
	Done    State = 3
	Dead    State = 4
	// Parked: waiting for the user to reconnect a broken connection.
	Parked State = 5
)

func (s State) String() string {
	switch s {
	case Queued:
		return "queued"
	case Running:
		return "running"
	case Done:
		return "done"
	case Dead:
		return "dead"
	case Parked:
		return "parked"
	}
	return "unknown"
}

// Priorities: higher runs first. Live work (webhooks, connection events)
// goes before reconciliation, which goes before history backfills: a user
// connecting with months of history must not delay anyone's fresh data,
// and missed recent records matter more than old ones.
const (
	PriorityBackground = 0
	PriorityReconcile  = 5
	PriorityLive       = 10
)

// NewJob is a job to enqueue.
type NewJob struct {
	Vendor    string
	Kind      string
	DedupeKey string
	Payload   []byte // JSON
	Priority  int
	// Delay postpones the first run (0: due now).
	Delay time.Duration
	// GroupKey ties related jobs together (the pages of one backfill);
	// empty for none.
	GroupKey string
}

// Job is a stored job. LeaseToken is set on leased jobs.
type Job struct {
	ID         int64
	Vendor     string
	Kind       string
	DedupeKey  string
	Payload    []byte
	Priority   int
	State      State
	Attempts   int
	RunAt      time.Time
	LastError  string
	Outcome    string
	CreatedAt  time.Time
	LeaseToken string
	GroupKey   string
}

// ErrLeaseLost reports that a job's lease expired and someone else may hold
// it now; the caller's result is discarded (the new holder redoes the work,
// which is idempotent downstream).
var ErrLeaseLost = errors.New("job lease lost")

// Store is the queue.
type Store struct {
	pool *pgxpool.Pool
}

// New returns a Store on pool (the database holding the ingest schema).
func New(pool *pgxpool.Pool) *Store { return &Store{pool: pool} }

// Enqueue commits a job unless one with the same (vendor, dedupe key)
// exists. inserted is false for a duplicate; id is the existing job's then.
func (s *Store) Enqueue(ctx context.Context, j NewJob) (id int64, inserted bool, err error) {
	id, inserted, err = insertJob(ctx, s.pool, j)
	if err != nil || inserted {
		return id, inserted, err
	}
	err = s.pool.QueryRow(ctx, `SELECT id FROM ingest.jobs WHERE vendor = $1 AND dedupe_key = $2`,
		j.Vendor, j.DedupeKey).Scan(&id)
	if err != nil {
		return 0, false, fmt.Errorf("look up duplicate %s job: %w", j.Vendor, err)
	}
	return id, false, nil
}

// Querier is a pool or a transaction.
type Querier interface {
	QueryRow(ctx context.Context, sql string, args ...any) pgx.Row
	Exec(ctx context.Context, sql string, args ...any) (pgconn.CommandTag, error)
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

// EnqueueIn enqueues jobs within q (a transaction that also records what
// the jobs are for, so both commit or neither does), skipping duplicates.
// It returns how many were inserted.
func EnqueueIn(ctx context.Context, q Querier, js ...NewJob) (int, error) {
	n := 0
	for _, j := range js {
		_, inserted, err := insertJob(ctx, q, j)
		if err != nil {
			return n, err
		}
		if inserted {
			n++
		}
	}
	return n, nil
}

func insertJob(ctx context.Context, q Querier, j NewJob) (int64, bool, error) {
	var group *string
	if j.GroupKey != "" {
		group = &j.GroupKey
	}
	var id int64
	err := q.QueryRow(ctx, `
		INSERT INTO ingest.jobs (vendor, kind, dedupe_key, payload, priority, run_at, group_key)
		VALUES ($1, $2, $3, $4, $5, now() + $6 * interval '1 microsecond', $7)
		ON CONFLICT (vendor, dedupe_key) DO NOTHING
		RETURNING id`,
		j.Vendor, j.Kind, j.DedupeKey, j.Payload, j.Priority, j.Delay.Microseconds(), group).Scan(&id)
	if errors.Is(err, pgx.ErrNoRows) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("enqueue %s job: %w", j.Vendor, err)
	}
	return id, true, nil
}

const jobColumns = `id, vendor, kind, dedupe_key, payload, priority, state, attempts, run_at, last_error, outcome, created_at,
	coalesce(lease_token::text, ''), coalesce(group_key, '')`

func scanJob(row pgx.Row) (Job, error) {
	var j Job
	err := row.Scan(&j.ID, &j.Vendor, &j.Kind, &j.DedupeKey, &j.Payload, &j.Priority, &j.State, &j.Attempts,
		&j.RunAt, &j.LastError, &j.Outcome, &j.CreatedAt, &j.LeaseToken, &j.GroupKey)
	return j, err
}

// Lease takes up to n due jobs (queued and due, or running with an expired
// lease) for lease, highest priority and oldest first, counting an attempt
// on each. Rows another worker is leasing right now are skipped, not waited
// for.
func (s *Store) Lease(ctx context.Context, owner string, n int, lease time.Duration) ([]Job, error) {
	return s.LeaseAtLeast(ctx, owner, n, lease, math.MinInt16)
}

// LeaseAtLeast is Lease restricted to jobs of priority minPriority or
// higher (a worker pool keeps some workers for live work this way).
func (s *Store) LeaseAtLeast(ctx context.Context, owner string, n int, lease time.Duration, minPriority int) ([]Job, error) {
	rows, err := s.pool.Query(ctx, `
		WITH due AS (
			SELECT id AS due_id FROM ingest.jobs
			WHERE state IN (1, 2) AND run_at <= now() AND priority >= $4
			ORDER BY priority DESC, run_at
			LIMIT $2
			FOR UPDATE SKIP LOCKED
		)
		UPDATE ingest.jobs j
		SET state = 2, attempts = j.attempts + 1, run_at = now() + $3 * interval '1 microsecond',
		    lease_token = gen_random_uuid(), lease_owner = $1, updated_at = now()
		FROM due WHERE j.id = due.due_id
		RETURNING `+jobColumns, owner, n, lease.Microseconds(), minPriority)
	if err != nil {
		return nil, fmt.Errorf("lease jobs: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Job, error) { return scanJob(r) })
	if err != nil {
		return nil, fmt.Errorf("lease jobs: %w", err)
	}
	sort.Slice(out, func(a, b int) bool {
		if out[a].Priority != out[b].Priority {
			return out[a].Priority > out[b].Priority
		}
		return out[a].ID < out[b].ID
	})
	return out, nil
}

// Extend pushes a held lease's expiry to now + lease.
func (s *Store) Extend(ctx context.Context, j Job, lease time.Duration) error {
	return s.fenced(ctx, j, "extend lease of", `
		UPDATE ingest.jobs SET run_at = now() + $3 * interval '1 microsecond', updated_at = now()
		WHERE id = $1 AND lease_token = $2 AND state = 2`, lease.Microseconds())
}

// Complete marks a held job done with a short outcome ("stored",
// "unknown_user", ...).
func (s *Store) Complete(ctx context.Context, j Job, outcome string) error {
	return s.fenced(ctx, j, "complete", `
		UPDATE ingest.jobs SET state = 3, outcome = $3, lease_token = NULL, finished_at = now(), updated_at = now()
		WHERE id = $1 AND lease_token = $2 AND state = 2`, outcome)
}

// Retry puts a held job back in the queue to run after delay, recording
// why. countAttempt false gives the attempt back: waiting for a rate limit
// or a pending score is not a failure and must not bring the job closer to
// dead.
func (s *Store) Retry(ctx context.Context, j Job, delay time.Duration, lastError string, countAttempt bool) error {
	give := 0
	if !countAttempt {
		give = 1
	}
	return s.fenced(ctx, j, "reschedule", `
		UPDATE ingest.jobs SET state = 1, run_at = now() + $3 * interval '1 microsecond', last_error = $4,
		       attempts = greatest(attempts - $5, 0), lease_token = NULL, updated_at = now()
		WHERE id = $1 AND lease_token = $2 AND state = 2`, delay.Microseconds(), truncate.UTF8(lastError, maxErrorLen), give)
}

// Bury marks a held job dead after its last attempt.
func (s *Store) Bury(ctx context.Context, j Job, lastError string) error {
	return s.fenced(ctx, j, "bury", `
		UPDATE ingest.jobs SET state = 4, last_error = $3, lease_token = NULL, finished_at = now(), updated_at = now()
		WHERE id = $1 AND lease_token = $2 AND state = 2`, truncate.UTF8(lastError, maxErrorLen))
}

// Park sets a held job aside until userID reconnects at the job's vendor:
// a generation of the connection newer than generation (its connected_at)
// requeues it (Resume). The attempt is given back: waiting for the user is
// not the job's failure. reason is recorded as its last error.
func (s *Store) Park(ctx context.Context, j Job, userID string, generation time.Time, reason string) error {
	return s.fenced(ctx, j, "park", `
		UPDATE ingest.jobs SET state = 5, park_user_id = $3, park_generation = $4, last_error = $5,
		       attempts = greatest(attempts - 1, 0), lease_token = NULL, updated_at = now()
		WHERE id = $1 AND lease_token = $2 AND state = 2`, userID, generation, truncate.UTF8(reason, maxErrorLen))
}

// OldestParked returns, per vendor, the oldest connection generation a
// parked job waits on: connections made after it are the ones that can
// resume anything.
func (s *Store) OldestParked(ctx context.Context) (map[string]time.Time, error) {
	rows, err := s.pool.Query(ctx, `SELECT vendor, min(park_generation) FROM ingest.jobs WHERE state = 5 GROUP BY vendor`)
	if err != nil {
		return nil, fmt.Errorf("find parked jobs: %w", err)
	}
	out := map[string]time.Time{}
	var vendor string
	var oldest time.Time
	_, err = pgx.ForEachRow(rows, []any{&vendor, &oldest}, func() error {
		out[vendor] = oldest
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("find parked jobs: %w", err)
	}
	return out, nil
}

// Resume requeues, with fresh attempts, the parked jobs of the connection
// generations in keys that are older than the generation named (the user
// reconnected since they were parked). It returns how many moved, by
// vendor.
func (s *Store) Resume(ctx context.Context, keys []GenerationKey) (map[string]int, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	users, vendors, ats := generationColumns(keys)
	rows, err := s.pool.Query(ctx, `
		UPDATE ingest.jobs j SET state = 1, attempts = 0, run_at = now(), park_user_id = NULL, park_generation = NULL,
		       last_error = 'resumed: ' || j.last_error, updated_at = now()
		FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS k(user_id, vendor, connected_at)
		WHERE j.state = 5 AND j.vendor = k.vendor AND j.park_user_id = k.user_id AND j.park_generation < k.connected_at
		RETURNING j.vendor`,
		users, vendors, ats)
	if err != nil {
		return nil, fmt.Errorf("resume parked jobs: %w", err)
	}
	out := map[string]int{}
	var vendor string
	if _, err := pgx.ForEachRow(rows, []any{&vendor}, func() error {
		out[vendor]++
		return nil
	}); err != nil {
		return nil, fmt.Errorf("resume parked jobs: %w", err)
	}
	return out, nil
}

// Release hands a held job back untouched (shutdown): due at once, the
// attempt not counted.
func (s *Store) Release(ctx context.Context, j Job) error {
	return s.Retry(ctx, j, 0, j.LastError, false)
}

func (s *Store) fenced(ctx context.Context, j Job, what, sql string, args ...any) error {
	tag, err := s.pool.Exec(ctx, sql, append([]any{j.ID, j.LeaseToken}, args...)...)
	if err != nil {
		return fmt.Errorf("%s job %d: %w", what, j.ID, err)
	}
	if tag.RowsAffected() == 0 {
		return fmt.Errorf("%s job %d: %w", what, j.ID, ErrLeaseLost)
	}
	return nil
}

// truncate keeps last_error short; it never contains PHI (callers pass
// reasons and status codes, not bodies).
// maxErrorLen bounds the last error a job records.
const maxErrorLen = 500

// Get returns one job.
func (s *Store) Get(ctx context.Context, id int64) (Job, error) {
	j, err := scanJob(s.pool.QueryRow(ctx, `SELECT `+jobColumns+` FROM ingest.jobs WHERE id = $1`, id))
	if err != nil {
		return Job{}, fmt.Errorf("get job %d: %w", id, err)
	}
	return j, nil
}

// List returns up to limit jobs in state, newest first.
func (s *Store) List(ctx context.Context, state State, limit int) ([]Job, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+jobColumns+` FROM ingest.jobs WHERE state = $1
		ORDER BY created_at DESC, id DESC LIMIT $2`, state, limit)
	if err != nil {
		return nil, fmt.Errorf("list jobs: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Job, error) { return scanJob(r) })
	if err != nil {
		return nil, fmt.Errorf("list jobs: %w", err)
	}
	return out, nil
}

// Requeue puts dead jobs back in the queue with fresh attempts: the ids
// given, or every dead job when ids is empty. It returns how many moved.
func (s *Store) Requeue(ctx context.Context, ids []int64) (int, error) {
	if ids == nil {
		ids = []int64{}
	}
	tag, err := s.pool.Exec(ctx, `
		UPDATE ingest.jobs SET state = 1, attempts = 0, run_at = now(), lease_token = NULL,
		       finished_at = NULL, updated_at = now()
		WHERE state = 4 AND (cardinality($1::bigint[]) = 0 OR id = ANY($1::bigint[]))`, ids)
	if err != nil {
		return 0, fmt.Errorf("requeue dead jobs: %w", err)
	}
	return int(tag.RowsAffected()), nil
}

// Depth counts jobs per vendor and state for the unfinished states, the
// parked and the dead ones (finished done jobs are not counted: they are history).
type Depth struct {
	Vendor string
	State  State
	Count  int64
}

// Depths reports the queue depth.
func (s *Store) Depths(ctx context.Context) ([]Depth, error) {
	rows, err := s.pool.Query(ctx, `SELECT vendor, state, count(*) FROM ingest.jobs
		WHERE state IN (1, 2, 4, 5) GROUP BY vendor, state`)
	if err != nil {
		return nil, fmt.Errorf("count jobs: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Depth, error) {
		var d Depth
		err := r.Scan(&d.Vendor, &d.State, &d.Count)
		return d, err
	})
	if err != nil {
		return nil, fmt.Errorf("count jobs: %w", err)
	}
	return out, nil
}

// Purge deletes done jobs finished more than age ago. Their dedupe keys go
// with them, so age must exceed the vendors' retry window (about an hour).
func (s *Store) Purge(ctx context.Context, age time.Duration) (int64, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM ingest.jobs WHERE state = 3 AND finished_at < now() - $1 * interval '1 microsecond'`,
		age.Microseconds())
	if err != nil {
		return 0, fmt.Errorf("purge finished jobs: %w", err)
	}
	return tag.RowsAffected(), nil
}
