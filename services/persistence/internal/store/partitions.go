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
