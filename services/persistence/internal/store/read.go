package store

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	"github.com/biobridge/bridge/services/persistence/internal/record"
)

// latestSnapshotSQL reads a user's latest values and commit counter in one
// statement, hence one snapshot: the counter says exactly which commits the
// values include, which is what lets the cache install them safely.
const latestSnapshotSQL = `
SELECT c.seq, l.metric, l.observed_at, l.source, l.vendor_record_id, l.seq, l.value, l.start_time,
       l.device_name, l.device_model, l.device_bundle_id
FROM (SELECT coalesce((SELECT seq FROM user_commits WHERE user_id = $1), 0) AS seq) c
LEFT JOIN latest l ON l.user_id = $1
ORDER BY l.metric`

// LatestSnapshot returns every latest value of user (ordered by metric)
// and the user's commit counter at the time of the read.
func (s *Store) LatestSnapshot(ctx context.Context, user string) (int64, []record.Latest, error) {
	rows, err := s.pool.Query(ctx, latestSnapshotSQL, user)
	if err != nil {
		return 0, nil, fmt.Errorf("read latest values: %w", err)
	}
	defer rows.Close()
	var seq int64
	var out []record.Latest
	for rows.Next() {
		var (
			metric, recordID    pgtype.Text
			observed, start     pgtype.Timestamptz
			src                 pgtype.Int2
			rseq                pgtype.Int4
			value               pgtype.Float8
			name, model, bundle pgtype.Text
		)
		if err := rows.Scan(&seq, &metric, &observed, &src, &recordID, &rseq, &value, &start, &name, &model, &bundle); err != nil {
			return 0, nil, fmt.Errorf("read latest values: %w", err)
		}
		if !metric.Valid {
			continue // the user has no values
		}
		l := record.Latest{
			Metric:         metric.String,
			Value:          value.Float64,
			ObservedAt:     observed.Time.UTC(),
			Source:         biometricsv1.Source(src.Int16),
			VendorRecordID: recordID.String,
			Seq:            rseq.Int32,
			Device:         record.Device{Name: name.String, Model: model.String, BundleID: bundle.String},
		}
		if start.Valid {
			l.StartTime = start.Time.UTC()
		}
		out = append(out, l)
	}
	if err := rows.Err(); err != nil {
		return 0, nil, fmt.Errorf("read latest values: %w", err)
	}
	return seq, out, nil
}

// ReadingKey is a position in a user's readings of one metric, in the
// order QueryReadings pages through them.
type ReadingKey struct {
	ObservedAt     time.Time
	Source         biometricsv1.Source
	VendorRecordID string
	Seq            int32
}

// Query selects a page of readings.
type Query struct {
	UserID, Metric string
	// Start is inclusive, End exclusive.
	Start, End time.Time
	// After, when set, starts the page after this reading.
	After *ReadingKey
	Limit int
}

// QueryReadings returns up to q.Limit readings in (observed_at, source,
// vendor_record_id, seq) order: the primary key's order, so pages are a
// range scan and a key identifies a position that concurrent writes do
// not shift.
func (s *Store) QueryReadings(ctx context.Context, q Query) ([]record.Latest, error) {
	args := []any{q.UserID, q.Metric, q.Start, q.End, q.Limit}
	cond := ""
	if q.After != nil {
		cond = `AND (observed_at, source, vendor_record_id, seq) > ($6, $7, $8, $9)`
		args = append(args, q.After.ObservedAt, int16(q.After.Source), q.After.VendorRecordID, q.After.Seq)
	}
	rows, err := s.pool.Query(ctx, `
		SELECT metric, observed_at, source, vendor_record_id, seq, value, start_time,
		       device_name, device_model, device_bundle_id
		FROM readings
		WHERE user_id = $1 AND metric = $2 AND observed_at >= $3 AND observed_at < $4 `+cond+`
		ORDER BY observed_at, source, vendor_record_id, seq
		LIMIT $5`, args...)
	if err != nil {
		return nil, fmt.Errorf("query readings: %w", err)
	}
	out, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (record.Latest, error) {
		var (
			l     record.Latest
			src   int16
			start pgtype.Timestamptz
		)
		err := r.Scan(&l.Metric, &l.ObservedAt, &src, &l.VendorRecordID, &l.Seq, &l.Value, &start,
			&l.Device.Name, &l.Device.Model, &l.Device.BundleID)
		l.Source = biometricsv1.Source(src)
		l.ObservedAt = l.ObservedAt.UTC()
		if start.Valid {
			l.StartTime = start.Time.UTC()
		}
		return l, err
	})
	if err != nil {
		return nil, fmt.Errorf("query readings: %w", err)
	}
	return out, nil
}

// AuditEntry is one audited read.
type AuditEntry struct {
	At      time.Time
	Caller  string
	UserID  string
	Method  string
	Metrics []string
}

// InsertAudit writes audit entries in one statement (COPY: entries come in
// batches of hundreds). Entries about erased users (a read buffered while
// the erasure ran, or a read of an erased id) are kept under the user's
// pseudonym, never the id: the transaction holds the users' locks shared,
// so an erasure cannot commit between the check and the insert.
func (s *Store) InsertAudit(ctx context.Context, entries []AuditEntry) error {
	users := make([]string, 0, len(entries))
	seen := map[string]bool{}
	for _, e := range entries {
		if !seen[e.UserID] {
			seen[e.UserID] = true
			users = append(users, e.UserID)
		}
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT count(pg_advisory_xact_lock_shared(k)) FROM unnest($1::bigint[]) AS k`, lockKeys(users)); err != nil {
			return fmt.Errorf("lock users: %w", err)
		}
		erased, err := s.erasedUsers(ctx, tx, users)
		if err != nil {
			return err
		}
		_, err = tx.CopyFrom(ctx, pgx.Identifier{"audit_log"}, []string{"at", "caller", "user_id", "method", "metrics"},
			pgx.CopyFromSlice(len(entries), func(i int) ([]any, error) {
				e := entries[i]
				metrics := e.Metrics
				if metrics == nil {
					metrics = []string{}
				}
				user := e.UserID
				if erased[user] {
					user = s.subject(user)
				}
				return []any{e.At, e.Caller, user, e.Method, metrics}, nil
			}))
		return err
	})
	if err != nil {
		return fmt.Errorf("insert audit entries: %w", err)
	}
	return nil
}
