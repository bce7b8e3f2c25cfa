package store

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// partitioned lists the tables range-partitioned by month, with their
// partition key. Each has a DEFAULT partition (from the migration) so a
// write with an unexpected time never fails.
var partitioned = []struct{ table, column string }{
	{"readings", "observed_at"},
	{"events", "received_at"},
	{"audit_log", "at"},
}

// maxSplitPerRun bounds how many months one maintenance run moves out of
// a default partition, so a run stays short.
const maxSplitPerRun = 24

// EnsurePartitions creates the monthly partitions from the month before
// now to monthsAhead months after it, and moves rows that landed in a
// default partition (backfills of old data, clock-skewed devices) into
// partitions of their own. It is safe to run from several replicas at once.
func (s *Store) EnsurePartitions(ctx context.Context, now time.Time, monthsAhead int) error {
	first := monthStart(now).AddDate(0, -1, 0)
	var errs []error
	for _, p := range partitioned {
		for i := 0; i <= monthsAhead+1; i++ {
			if err := s.ensurePartition(ctx, p.table, p.column, first.AddDate(0, i, 0)); err != nil {
				errs = append(errs, err)
			}
		}
		months, err := s.defaultMonths(ctx, p.table, p.column, now)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, m := range months {
			if err := s.ensurePartition(ctx, p.table, p.column, m); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func monthStart(t time.Time) time.Time {
	t = t.UTC()
	return time.Date(t.Year(), t.Month(), 1, 0, 0, 0, 0, time.UTC)
}

func partitionName(table string, month time.Time) string {
	return fmt.Sprintf("%s_p%04d_%02d", table, month.Year(), int(month.Month()))
}

// defaultMonths lists months that have rows in table's default partition,
// within a plausible window (far-off dates stay in the default).
func (s *Store) defaultMonths(ctx context.Context, table, column string, now time.Time) ([]time.Time, error) {
	q := fmt.Sprintf(`SELECT DISTINCT date_trunc('month', %s, 'UTC') FROM %s
		WHERE %s >= $1 AND %s < $2 LIMIT %d`,
		pgx.Identifier{column}.Sanitize(), pgx.Identifier{table + "_default"}.Sanitize(),
		pgx.Identifier{column}.Sanitize(), pgx.Identifier{column}.Sanitize(), maxSplitPerRun)
	rows, err := s.pool.Query(ctx, q, time.Date(1990, 1, 1, 0, 0, 0, 0, time.UTC), now.AddDate(10, 0, 0))
	if err != nil {
		return nil, fmt.Errorf("list months in %s_default: %w", table, err)
	}
	months, err := pgx.CollectRows(rows, pgx.RowTo[time.Time])
	if err != nil {
		return nil, fmt.Errorf("list months in %s_default: %w", table, err)
	}
	return months, nil
}

func (s *Store) partitionExists(ctx context.Context, q interface {
	QueryRow(context.Context, string, ...any) pgx.Row
}, name string) (bool, error) {
	var ok bool
	err := q.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL`, Schema+"."+name).Scan(&ok)
	return ok, err
}

// ensurePartition creates table's partition for month. Rows of that month
// already in the default partition are moved into the new table before it
// is attached (attaching would fail otherwise).
func (s *Store) ensurePartition(ctx context.Context, table, column string, month time.Time) (err error) {
	month = monthStart(month)
	name := partitionName(table, month)
	if ok, err := s.partitionExists(ctx, s.pool, name); err != nil || ok {
		if err != nil {
			return fmt.Errorf("check partition %s: %w", name, err)
		}
		return nil
	}
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("create partition %s: %w", name, err)
	}
	defer func() {
		if err != nil {
			_ = tx.Rollback(context.WithoutCancel(ctx))
		}
	}()
	// Attaching locks the default partition exclusively; never queue behind
	// (and in front of) live writes for long. The next run retries.
	if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '5s'`); err != nil {
		return fmt.Errorf("create partition %s: %w", name, err)
	}
	if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended('biometrics.partition:' || $1, 0))`, name); err != nil {
		return fmt.Errorf("create partition %s: lock: %w", name, err)
	}
	if ok, err := s.partitionExists(ctx, tx, name); err != nil || ok {
		if err != nil {
			return fmt.Errorf("check partition %s: %w", name, err)
		}
		return tx.Commit(ctx)
	}
	lo := month.Format(time.RFC3339)
	hi := month.AddDate(0, 1, 0).Format(time.RFC3339)
	ident := pgx.Identifier{name}.Sanitize()
	parent := pgx.Identifier{table}.Sanitize()
	def := pgx.Identifier{table + "_default"}.Sanitize()
	col := pgx.Identifier{column}.Sanitize()
	stmts := []string{
		fmt.Sprintf(`CREATE TABLE %s (LIKE %s INCLUDING DEFAULTS INCLUDING CONSTRAINTS)`, ident, parent),
		fmt.Sprintf(`WITH moved AS (DELETE FROM %s WHERE %s >= '%s' AND %s < '%s' RETURNING *) INSERT INTO %s SELECT * FROM moved`,
			def, col, lo, col, hi, ident),
		fmt.Sprintf(`ALTER TABLE %s ATTACH PARTITION %s FOR VALUES FROM ('%s') TO ('%s')`, parent, ident, lo, hi),
	}
	for _, q := range stmts {
		if _, err := tx.Exec(ctx, q); err != nil {
			return fmt.Errorf("create partition %s: %w", name, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("create partition %s: commit: %w", name, err)
	}
	s.m.PartitionsCreated.Inc()
	s.logger.Info("created partition", "partition", name)
	return nil
}

// Retention is how long each time-partitioned table keeps its rows; zero
// keeps them forever. Retention works on whole monthly partitions: a
// partition goes once every row it may hold is older than the policy, so
// rows live up to a month longer than the policy, never shorter.
type Retention struct {
	Readings time.Duration
	Events   time.Duration
	Audit    time.Duration
}

func (r Retention) of(table string) time.Duration {
	switch table {
	case "readings":
		return r.Readings
	case "events":
		return r.Events
	case "audit_log":
		return r.Audit
	}
	return 0
}

// DroppedPartition names a partition the retention policy dropped.
type DroppedPartition struct {
	Table, Partition string
	Month            time.Time
}

// DropExpiredPartitions drops the monthly partitions whose whole range is
// older than now minus the table's retention. One replica works at a time
// (a transaction-scoped advisory lock; the others skip the run), and each
// partition is detached and dropped in a transaction of its own with a
// short lock timeout, so a busy table costs a retry at the next run rather
// than a stall. The latest table is not partitioned and is never touched:
// a user's latest value survives the readings it came from. Default
// partitions are never dropped.
func (s *Store) DropExpiredPartitions(ctx context.Context, now time.Time, r Retention) ([]DroppedPartition, error) {
	var dropped []DroppedPartition
	var errs []error
	for _, p := range partitioned {
		keep := r.of(p.table)
		if keep <= 0 {
			continue
		}
		cutoff := now.Add(-keep)
		parts, err := s.monthlyPartitions(ctx, p.table)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, part := range parts {
			if part.Month.AddDate(0, 1, 0).After(cutoff) {
				continue
			}
			ok, err := s.dropPartition(ctx, p.table, part.Partition)
			if err != nil {
				errs = append(errs, err)
				continue
			}
			if !ok {
				// Another replica is running retention.
				return dropped, errors.Join(errs...)
			}
			dropped = append(dropped, part)
			s.m.PartitionsDropped.WithLabelValues(p.table).Inc()
			s.logger.InfoContext(ctx, "dropped partition by retention policy", "table", p.table, "partition", part.Partition,
				"month", part.Month.Format("2006-01"), "retention", keep.String())
		}
	}
	return dropped, errors.Join(errs...)
}

// monthlyPartitions lists table's monthly partitions, oldest first.
func (s *Store) monthlyPartitions(ctx context.Context, table string) ([]DroppedPartition, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT c.relname FROM pg_inherits i
		JOIN pg_class c ON c.oid = i.inhrelid
		JOIN pg_class p ON p.oid = i.inhparent
		JOIN pg_namespace n ON n.oid = p.relnamespace
		WHERE n.nspname = $1 AND p.relname = $2
		ORDER BY c.relname`, Schema, table)
	if err != nil {
		return nil, fmt.Errorf("list partitions of %s: %w", table, err)
	}
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	if err != nil {
		return nil, fmt.Errorf("list partitions of %s: %w", table, err)
	}
	var out []DroppedPartition
	for _, n := range names {
		var y, m int
		if _, err := fmt.Sscanf(n, table+"_p%04d_%02d", &y, &m); err != nil || partitionName(table, time.Date(y, time.Month(m), 1, 0, 0, 0, 0, time.UTC)) != n {
			continue // the default partition, or one not made by us
		}
		out = append(out, DroppedPartition{Table: table, Partition: n, Month: time.Date(y, time.Month(m), 1, 0, 0, 0, 0, time.UTC)})
	}
	return out, nil
}

// dropPartition detaches and drops one partition; ok is false when another
// replica holds the retention lock.
func (s *Store) dropPartition(ctx context.Context, table, name string) (ok bool, err error) {
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock(hashtextextended('biometrics.retention', 0))`).Scan(&ok); err != nil || !ok {
			return err
		}
		if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '5s'`); err != nil {
			return err
		}
		if exists, err := s.partitionExists(ctx, tx, name); err != nil || !exists {
			return err
		}
		for _, q := range []string{
			fmt.Sprintf(`ALTER TABLE %s DETACH PARTITION %s`, pgx.Identifier{table}.Sanitize(), pgx.Identifier{name}.Sanitize()),
			fmt.Sprintf(`DROP TABLE %s`, pgx.Identifier{name}.Sanitize()),
		} {
			if _, err := tx.Exec(ctx, q); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("drop partition %s: %w", name, err)
	}
	return ok, nil
}
