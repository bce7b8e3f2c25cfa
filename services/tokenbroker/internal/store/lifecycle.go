package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// RecordEvent appends an event decided outside the broker (ingest's
// backfill_completed) to the connection-event outbox with the user's next
// sequence. It is idempotent by event id: a repeat returns the sequence
// the first call assigned. The connection must exist (in any state): an
// event for a connection that is gone, an erased user's for one, is
// refused with ErrNotFound rather than recorded.
func (s *Store) RecordEvent(ctx context.Context, e Event) (seq int64, err error) {
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `SELECT sequence FROM tokens.connection_events WHERE event_id = $1 AND user_id = $2`,
			e.EventID, e.UserID).Scan(&seq)
		if err == nil {
			return nil
		}
		if !errors.Is(err, pgx.ErrNoRows) {
			return fmt.Errorf("record connection event: %w", err)
		}
		// Locks the row against a concurrent erasure until commit.
		var one int
		err = tx.QueryRow(ctx, `SELECT 1 FROM tokens.connections WHERE user_id = $1 AND vendor = $2 FOR SHARE`,
			e.UserID, e.Vendor).Scan(&one)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return fmt.Errorf("record connection event: %w", err)
		}
		if err := insertEvent(ctx, tx, e); err != nil {
			return err
		}
		return tx.QueryRow(ctx, `SELECT sequence FROM tokens.connection_events WHERE event_id = $1`, e.EventID).Scan(&seq)
	})
	return seq, err
}

// DeletedConnection is a connection DeleteUser removed.
type DeletedConnection struct {
	Vendor, VendorUserID string
}

// DeleteUser deletes every row of userID in one transaction: connections
// (tokens included), pending authorizations, connection events (forwarded
// or not: the user_erased event persistence publishes replaces them) and
// the user's event counter, and marks the user erased (by pseudonym). A
// second call deletes nothing.
func (s *Store) DeleteUser(ctx context.Context, userID string) (deleted []DeletedConnection, err error) {
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		rows, err := tx.Query(ctx, `DELETE FROM tokens.connections WHERE user_id = $1 RETURNING vendor, vendor_user_id`, userID)
		if err != nil {
			return fmt.Errorf("delete connections: %w", err)
		}
		deleted, err = pgx.CollectRows(rows, func(r pgx.CollectableRow) (DeletedConnection, error) {
			var d DeletedConnection
			return d, r.Scan(&d.Vendor, &d.VendorUserID)
		})
		if err != nil {
			return fmt.Errorf("delete connections: %w", err)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO tokens.erased_users (subject) VALUES ($1) ON CONFLICT DO NOTHING`,
			s.subject(userID)); err != nil {
			return fmt.Errorf("mark user erased: %w", err)
		}
		for _, q := range []string{
			`DELETE FROM tokens.oauth_states WHERE user_id = $1`,
			`DELETE FROM tokens.connection_events WHERE user_id = $1`,
			`DELETE FROM tokens.user_event_sequences WHERE user_id = $1`,
		} {
			if _, err := tx.Exec(ctx, q, userID); err != nil {
				return fmt.Errorf("delete user rows: %w", err)
			}
		}
		return nil
	})
	return deleted, err
}

// SetSubjects sets the function that turns a user id into the pseudonym
// erased_users keeps (the HMAC keyed with LOG_PSEUDONYM_KEY; the default
// is keyed with a random per-process key, enough for tests).
func (s *Store) SetSubjects(fn func(userID string) string) { s.subject = fn }

// IsErased reports whether userID's connections were erased.
func (s *Store) IsErased(ctx context.Context, userID string) (bool, error) {
	var one int
	err := s.pool.QueryRow(ctx, `SELECT 1 FROM tokens.erased_users WHERE subject = $1`, s.subject(userID)).Scan(&one)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return false, nil
	case err != nil:
		return false, fmt.Errorf("check erased user: %w", err)
	}
	return true, nil
}
