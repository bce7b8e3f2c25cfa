package store

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
)

// ListActive returns up to limit active connections made at or after since
// (zero: all), after the key after (keyset pagination), ordered by key.
func (s *Store) ListActive(ctx context.Context, since time.Time, after Key, limit int) ([]*Connection, error) {
	var sinceArg *time.Time
	if !since.IsZero() {
		sinceArg = &since
	}
	rows, err := s.pool.Query(ctx, `SELECT `+connectionColumns+` FROM tokens.connections
		WHERE status = 'active' AND ($1::timestamptz IS NULL OR connected_at >= $1)
		  AND (user_id, vendor) > ($2, $3)
		ORDER BY user_id, vendor LIMIT $4`, sinceArg, after.UserID, after.Vendor, limit)
	if err != nil {
		return nil, fmt.Errorf("list active connections: %w", err)
	}
	out, err := pgx.CollectRows(rows, collectConnection)
	if err != nil {
		return nil, fmt.Errorf("list active connections: %w", err)
	}
	return out, nil
}

// Arrival is new data of a connection stored at At.
type Arrival struct {
	UserID string
	Vendor string
	At     time.Time
}

// RecordDataArrival moves last_data_at of each named connection (revoked
// ones excepted) forward to its arrival and clears staleness, writing a
// fresh event for every connection that was stale, all in one transaction.
// An arrival no later than the stored last_data_at changes nothing: it is
// old news (reports may arrive out of order), and the connection may have
// become stale after it. It returns the connections that became fresh.
func (s *Store) RecordDataArrival(ctx context.Context, arrivals []Arrival, now time.Time) ([]Key, error) {
	if len(arrivals) == 0 {
		return nil, nil
	}
	users := make([]string, len(arrivals))
	vendors := make([]string, len(arrivals))
	ats := make([]time.Time, len(arrivals))
	for i, a := range arrivals {
		users[i], vendors[i], ats[i] = a.UserID, a.Vendor, a.At
	}
	var fresh []Key
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// Rows are locked in key order, so two concurrent batches cannot
		// deadlock; the lock re-checks the condition on the newest version.
		rows, err := tx.Query(ctx, `
			WITH agg AS (
				SELECT user_id, vendor, max(at) AS at
				FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS a(user_id, vendor, at)
				GROUP BY user_id, vendor
			), cur AS (
				SELECT c.user_id, c.vendor, c.stale, agg.at FROM tokens.connections c JOIN agg USING (user_id, vendor)
				WHERE c.status <> 'revoked' AND (c.last_data_at IS NULL OR c.last_data_at < agg.at)
				ORDER BY c.user_id, c.vendor
				FOR UPDATE OF c
			)
			UPDATE tokens.connections c SET last_data_at = greatest(c.last_data_at, cur.at), stale = false, stale_since = NULL
			FROM cur WHERE c.user_id = cur.user_id AND c.vendor = cur.vendor
			RETURNING c.user_id, c.vendor, cur.stale`, users, vendors, ats)
		if err != nil {
			return fmt.Errorf("record data arrival: %w", err)
		}
		var k Key
		var wasStale bool
		_, err = pgx.ForEachRow(rows, []any{&k.UserID, &k.Vendor, &wasStale}, func() error {
			if wasStale {
				fresh = append(fresh, k)
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("record data arrival: %w", err)
		}
		for _, f := range fresh {
			if err := insertEvent(ctx, tx, Event{UserID: f.UserID, Vendor: f.Vendor, Type: EventFresh, Reason: "data_arrived", OccurredAt: now}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return fresh, nil
}

// MarkStale marks up to limit active connections stale whose silence (since
// the latest of their last data, their connection and the start of
// tracking, see migration 0003) is longer than
// staleAfter at now, each with a stale event, in one transaction. Rows
// another sweep is marking right now are skipped: every connection is
// marked, and gets its event, once.
func (s *Store) MarkStale(ctx context.Context, staleAfter time.Duration, now time.Time, limit int) ([]Key, error) {
	var marked []Key
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `
			WITH due AS (
				SELECT user_id, vendor FROM tokens.connections
				WHERE status = 'active' AND NOT stale AND greatest(last_data_at, connected_at, tracked_since) < $1::timestamptz
				ORDER BY user_id, vendor LIMIT $2
				FOR UPDATE SKIP LOCKED
			)
			UPDATE tokens.connections c SET stale = true, stale_since = $3
			FROM due WHERE c.user_id = due.user_id AND c.vendor = due.vendor
			RETURNING c.user_id, c.vendor`, now.Add(-staleAfter), limit, now)
		if err != nil {
			return fmt.Errorf("mark stale connections: %w", err)
		}
		marked, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (Key, error) {
			var k Key
			err := r.Scan(&k.UserID, &k.Vendor)
			return k, err
		})
		if err != nil {
			return fmt.Errorf("mark stale connections: %w", err)
		}
		for _, k := range marked {
			if err := insertEvent(ctx, tx, Event{UserID: k.UserID, Vendor: k.Vendor, Type: EventStale, Reason: "no_data", OccurredAt: now}); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return marked, nil
}

// StaleCounts counts the active stale connections by vendor.
func (s *Store) StaleCounts(ctx context.Context) (map[string]int64, error) {
	rows, err := s.pool.Query(ctx, `SELECT vendor, count(*) FROM tokens.connections WHERE status = 'active' AND stale GROUP BY vendor`)
	if err != nil {
		return nil, fmt.Errorf("count stale connections: %w", err)
	}
	out := map[string]int64{}
	var v string
	var n int64
	if _, err := pgx.ForEachRow(rows, []any{&v, &n}, func() error { out[v] = n; return nil }); err != nil {
		return nil, fmt.Errorf("count stale connections: %w", err)
	}
	return out, nil
}
