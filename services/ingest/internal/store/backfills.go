package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// Backfill is the history backfill of one connection generation.
type Backfill struct {
	UserID      string
	Vendor      string
	ConnectedAt time.Time
	GroupKey    string
	WindowStart time.Time
	WindowEnd   time.Time
	Records     int64
	CreatedAt   time.Time
	CompletedAt time.Time // zero while running
	// Pages by job state (filled by Backfills).
	Pages map[State]int
	// Cut is set by FinishBackfills when some page ended with the outcome
	// naming an early end (the connection went away midway).
	Cut bool
}

// CreateBackfill records the backfill of a connection generation and
// enqueues its first jobs in one transaction, unless it exists already (it
// returns false then and enqueues nothing).
func (s *Store) CreateBackfill(ctx context.Context, b Backfill, first []NewJob) (bool, error) {
	created := false
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `
			INSERT INTO ingest.backfills (user_id, vendor, connected_at, group_key, window_start, window_end)
			VALUES ($1, $2, $3, $4, $5, $6)
			ON CONFLICT DO NOTHING`, b.UserID, b.Vendor, b.ConnectedAt, b.GroupKey, b.WindowStart, b.WindowEnd)
		if err != nil {
			return fmt.Errorf("create backfill: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return nil
		}
		created = true
		_, err = EnqueueIn(ctx, tx, first...)
		return err
	})
	return created, err
}

// AddBackfillRecords adds n to the records count of the backfill of group.
func (s *Store) AddBackfillRecords(ctx context.Context, group string, n int) error {
	if n == 0 {
		return nil
	}
	if _, err := s.pool.Exec(ctx, `UPDATE ingest.backfills SET records = records + $2 WHERE group_key = $1`, group, n); err != nil {
		return fmt.Errorf("count backfill records: %w", err)
	}
	return nil
}

// FinishBackfills completes every running backfill none of whose jobs is
// queued, running or dead, enqueueing notify(b) for each in the same
// transaction, and returns them. A job enqueues the next page before it is
// marked done, so a backfill with more to fetch always has an unfinished
// job; a dead page keeps its backfill running until it is retried. Several
// replicas may run this at once: a backfill is completed once. Backfills
// with a page whose outcome is cutOutcome come back with Cut set.
func (s *Store) FinishBackfills(ctx context.Context, limit int, cutOutcome string, notify func(Backfill) (NewJob, error)) ([]Backfill, error) {
	var done []Backfill
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `
			WITH due AS (
				SELECT b.user_id, b.vendor, b.connected_at FROM ingest.backfills b
				WHERE b.completed_at IS NULL
				  AND NOT EXISTS (SELECT 1 FROM ingest.jobs j WHERE j.group_key = b.group_key AND j.state IN (1, 2, 4))
				ORDER BY b.created_at LIMIT $1
				FOR UPDATE SKIP LOCKED
			)
			UPDATE ingest.backfills b SET completed_at = now()
			FROM due WHERE b.user_id = due.user_id AND b.vendor = due.vendor AND b.connected_at = due.connected_at
			RETURNING b.user_id, b.vendor, b.connected_at, b.group_key, b.window_start, b.window_end, b.records, b.created_at, b.completed_at,
				EXISTS (SELECT 1 FROM ingest.jobs j WHERE j.group_key = b.group_key AND j.outcome = $2)`, limit, cutOutcome)
		if err != nil {
			return fmt.Errorf("finish backfills: %w", err)
		}
		done, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Backfill, error) {
			var b Backfill
			err := r.Scan(&b.UserID, &b.Vendor, &b.ConnectedAt, &b.GroupKey, &b.WindowStart, &b.WindowEnd, &b.Records, &b.CreatedAt,
				&b.CompletedAt, &b.Cut)
			return b, err
		})
		if err != nil {
			return fmt.Errorf("finish backfills: %w", err)
		}
		for _, b := range done {
			j, err := notify(b)
			if err != nil {
				return err
			}
			if _, err := EnqueueIn(ctx, tx, j); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return done, nil
}

// Backfills lists the backfills of user (of vendor, unless empty), newest
// connection first, with their pages counted by state.
func (s *Store) Backfills(ctx context.Context, userID, vendor string) ([]Backfill, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT b.user_id, b.vendor, b.connected_at, b.group_key, b.window_start, b.window_end, b.records, b.created_at,
		       b.completed_at, coalesce(j.state, 0), count(j.id)
		FROM ingest.backfills b LEFT JOIN ingest.jobs j ON j.group_key = b.group_key
		WHERE b.user_id = $1 AND ($2 = '' OR b.vendor = $2)
		GROUP BY b.user_id, b.vendor, b.connected_at, j.state
		ORDER BY b.connected_at DESC, b.vendor`, userID, vendor)
	if err != nil {
		return nil, fmt.Errorf("list backfills: %w", err)
	}
	var out []Backfill
	var b Backfill
	var completed *time.Time
	var st State
	var n int
	_, err = pgx.ForEachRow(rows, []any{&b.UserID, &b.Vendor, &b.ConnectedAt, &b.GroupKey, &b.WindowStart, &b.WindowEnd,
		&b.Records, &b.CreatedAt, &completed, &st, &n}, func() error {
		if len(out) == 0 || out[len(out)-1].GroupKey != b.GroupKey {
			cur := b
			cur.CompletedAt = time.Time{}
			if completed != nil {
				cur.CompletedAt = *completed
			}
			cur.Pages = map[State]int{}
			out = append(out, cur)
		}
		if st != 0 {
			out[len(out)-1].Pages[st] += n
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list backfills: %w", err)
	}
	return out, nil
}

// BackfillCounts counts backfills and their unfinished pages by vendor:
// running and completed backfills, and pages queued or running (pending)
// or dead in running backfills.
type BackfillCounts struct {
	Running, Completed int64
	PagesPending       int64
	PagesDead          int64
}

// CountBackfills reports BackfillCounts per vendor.
func (s *Store) CountBackfills(ctx context.Context) (map[string]*BackfillCounts, error) {
	out := map[string]*BackfillCounts{}
	get := func(v string) *BackfillCounts {
		if out[v] == nil {
			out[v] = &BackfillCounts{}
		}
		return out[v]
	}
	rows, err := s.pool.Query(ctx, `SELECT vendor, completed_at IS NULL, count(*) FROM ingest.backfills GROUP BY 1, 2`)
	if err != nil {
		return nil, fmt.Errorf("count backfills: %w", err)
	}
	var v string
	var running bool
	var n int64
	if _, err := pgx.ForEachRow(rows, []any{&v, &running, &n}, func() error {
		if running {
			get(v).Running = n
		} else {
			get(v).Completed = n
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("count backfills: %w", err)
	}
	rows, err = s.pool.Query(ctx, `
		SELECT b.vendor, j.state = 4, count(*) FROM ingest.backfills b JOIN ingest.jobs j ON j.group_key = b.group_key
		WHERE b.completed_at IS NULL AND j.state IN (1, 2, 4) GROUP BY 1, 2`)
	if err != nil {
		return nil, fmt.Errorf("count backfill pages: %w", err)
	}
	var dead bool
	if _, err := pgx.ForEachRow(rows, []any{&v, &dead, &n}, func() error {
		if dead {
			get(v).PagesDead = n
		} else {
			get(v).PagesPending = n
		}
		return nil
	}); err != nil {
		return nil, fmt.Errorf("count backfill pages: %w", err)
	}
	return out, nil
}

// ClaimRound claims reconciliation round for owner: true when it is the
// first claim, or when an earlier claim was not completed within stale
// (its replica died midway) and is taken over.
func (s *Store) ClaimRound(ctx context.Context, round int64, owner string, stale time.Duration) (bool, error) {
	var got int64
	err := s.pool.QueryRow(ctx, `
		INSERT INTO ingest.reconcile_rounds (round, claimed_by) VALUES ($1, $2)
		ON CONFLICT (round) DO UPDATE SET claimed_by = EXCLUDED.claimed_by, claimed_at = now()
		WHERE reconcile_rounds.completed_at IS NULL
		  AND reconcile_rounds.claimed_at < now() - $3 * interval '1 microsecond'
		RETURNING round`, round, owner, stale.Microseconds()).Scan(&got)
	if errors.Is(err, pgx.ErrNoRows) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("claim reconciliation round: %w", err)
	}
	return true, nil
}

// CompleteRound records that round was scheduled for n connections.
func (s *Store) CompleteRound(ctx context.Context, round int64, n int) error {
	_, err := s.pool.Exec(ctx, `UPDATE ingest.reconcile_rounds SET completed_at = now(), connections = $2 WHERE round = $1`, round, n)
	if err != nil {
		return fmt.Errorf("complete reconciliation round: %w", err)
	}
	return nil
}

// GenerationKey names one connection generation.
type GenerationKey struct {
	UserID      string
	Vendor      string
	ConnectedAt time.Time
}

// generationColumns splits keys into the arrays the unnest queries take.
func generationColumns(keys []GenerationKey) (users, vendors []string, ats []time.Time) {
	users = make([]string, len(keys))
	vendors = make([]string, len(keys))
	ats = make([]time.Time, len(keys))
	for i, k := range keys {
		users[i], vendors[i], ats[i] = k.UserID, k.Vendor, k.ConnectedAt
	}
	return users, vendors, ats
}

// MissingBackfills returns the generations among keys that have no
// backfill yet.
func (s *Store) MissingBackfills(ctx context.Context, keys []GenerationKey) ([]GenerationKey, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	users, vendors, ats := generationColumns(keys)
	rows, err := s.pool.Query(ctx, `
		SELECT k.user_id, k.vendor, k.connected_at
		FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS k(user_id, vendor, connected_at)
		WHERE NOT EXISTS (SELECT 1 FROM ingest.backfills b
		                  WHERE b.user_id = k.user_id AND b.vendor = k.vendor AND b.connected_at = k.connected_at)`,
		users, vendors, ats)
	if err != nil {
		return nil, fmt.Errorf("look up missing backfills: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (GenerationKey, error) {
		var k GenerationKey
		err := r.Scan(&k.UserID, &k.Vendor, &k.ConnectedAt)
		return k, err
	})
	if err != nil {
		return nil, fmt.Errorf("look up missing backfills: %w", err)
	}
	return out, nil
}

// LatestBackfilledConnection is the newest connection time with a
// backfill (zero when there is none): where the search for new
// connections resumes, shared by every replica and surviving restarts.
func (s *Store) LatestBackfilledConnection(ctx context.Context) (time.Time, error) {
	var t *time.Time
	if err := s.pool.QueryRow(ctx, `SELECT max(connected_at) FROM ingest.backfills`).Scan(&t); err != nil {
		return time.Time{}, fmt.Errorf("find the newest backfilled connection: %w", err)
	}
	if t == nil {
		return time.Time{}, nil
	}
	return *t, nil
}

// GroupBusy reports whether a job of group is queued or running.
func (s *Store) GroupBusy(ctx context.Context, group string) (bool, error) {
	var busy bool
	err := s.pool.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM ingest.jobs WHERE group_key = $1 AND state IN (1, 2))`, group).Scan(&busy)
	if err != nil {
		return false, fmt.Errorf("look up unfinished jobs: %w", err)
	}
	return busy, nil
}
