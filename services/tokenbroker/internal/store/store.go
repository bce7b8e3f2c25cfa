// Package store stores the token broker's connections, pending
// authorizations and connection-event outbox in its own schema ("tokens").
//
// The store deals in ciphertexts only: sealing and opening tokens is the
// broker's job, so nothing in this package ever holds a plaintext token.
// Every token write is fenced by the row's version (UPDATE ... WHERE
// version = $old), and every change a downstream consumer must hear about
// writes its connection event in the same transaction.
package store

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"embed"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/biobridge/bridge/pkg/logging"
	"github.com/biobridge/bridge/pkg/pgstore"
	"github.com/biobridge/bridge/pkg/truncate"
)

// Schema is the PostgreSQL schema the broker owns.
const Schema = "tokens"

//go:embed migrations/*.sql
var migrationFiles embed.FS

// Migrations are the broker's schema migrations.
var Migrations = pgstore.EmbeddedMigrations(migrationFiles, "migrations", Schema)

// Status values of the connections table.
const (
	StatusActive  = "active"
	StatusBroken  = "broken"
	StatusRevoked = "revoked"
)

// Event types of the connection_events table.
const (
	EventConnected     = "connected"
	EventRefreshFailed = "refresh_failed"
	EventRevoked       = "revoked"
	// EventStale: no data arrived for longer than ingest's threshold.
	EventStale = "stale"
	// EventFresh: data arrived again for a stale connection.
	EventFresh = "fresh"
	// EventBackfillCompleted: ingest finished a connection's history
	// backfill (recorded through RecordEvent).
	EventBackfillCompleted = "backfill_completed"
)

// Errors the store returns; callers map them to application errors.
var (
	ErrNotFound = errors.New("not found")
	// ErrVersionConflict means the fence did not hold: someone else wrote
	// the connection since it was read.
	ErrVersionConflict = errors.New("connection changed since it was read")
	// ErrVendorAccountInUse means the vendor account is already connected
	// to another internal user.
	ErrVendorAccountInUse = errors.New("vendor account connected to another user")
	// ErrClaimed means another holder's unexpired refresh claim is on the
	// connection (or the version moved): this caller must not refresh.
	ErrClaimed = errors.New("refresh claimed by another holder")
)

// Connection is one row of the connections table, tokens sealed.
type Connection struct {
	UserID          string
	Vendor          string
	VendorUserID    string
	Status          string
	Scopes          []string
	KeyID           string // "" when the tokens were deleted
	AccessTokenEnc  []byte
	RefreshTokenEnc []byte
	AccessExpiresAt time.Time
	Version         int64
	BrokenReason    string
	ConnectedAt     time.Time
	LastRefreshAt   time.Time // zero when never refreshed
	LastUsedAt      time.Time // zero when never used
	LastDataAt      time.Time // zero when no data was reported yet
	Stale           bool
	// ClaimOwner holds the refresh claim until ClaimUntil ("" and zero
	// when nobody claimed).
	ClaimOwner string
	ClaimUntil time.Time
}

// ClaimedByOther reports whether someone other than owner holds an
// unexpired refresh claim at now: a refresh of theirs may still land.
func (c *Connection) ClaimedByOther(owner string, now time.Time) bool {
	return c.ClaimOwner != "" && c.ClaimOwner != owner && c.ClaimUntil.After(now)
}

// Tokens are the sealed tokens of one write; both are sealed with KeyID.
type Tokens struct {
	KeyID           string
	AccessTokenEnc  []byte
	RefreshTokenEnc []byte
	AccessExpiresAt time.Time
}

// Event is one connection lifecycle event.
type Event struct {
	EventID    string
	UserID     string
	Vendor     string
	Type       string
	Reason     string
	OccurredAt time.Time
	// Sequence is the event's place among the user's connection events
	// (assigned by insertEvent).
	Sequence int64
}

// Store is the PostgreSQL adapter.
type Store struct {
	pool *pgxpool.Pool
	// subject turns a user id into its erasure pseudonym (SetSubjects).
	subject func(userID string) string
}

// New returns a Store on pool.
func New(pool *pgxpool.Pool) *Store {
	return &Store{pool: pool, subject: logging.NewPseudonymizer(nil).Pseudonym}
}

// Ping checks the database (readiness).
func (s *Store) Ping(ctx context.Context) error { return s.pool.Ping(ctx) }

const connectionColumns = `user_id, vendor, vendor_user_id, status, scopes, key_id,
	access_token_enc, refresh_token_enc, access_expires_at, version, broken_reason,
	connected_at, last_refresh_at, last_used_at, last_data_at, stale,
	coalesce(refresh_claim_owner, ''), refresh_claim_until`

// collectConnection is scanConnection for pgx.CollectRows.
func collectConnection(row pgx.CollectableRow) (*Connection, error) { return scanConnection(row) }

func scanConnection(row pgx.Row) (*Connection, error) {
	var c Connection
	var keyID *string
	var expires, lastRefresh, lastUsed, lastData, claimUntil *time.Time
	err := row.Scan(&c.UserID, &c.Vendor, &c.VendorUserID, &c.Status, &c.Scopes, &keyID,
		&c.AccessTokenEnc, &c.RefreshTokenEnc, &expires, &c.Version, &c.BrokenReason,
		&c.ConnectedAt, &lastRefresh, &lastUsed, &lastData, &c.Stale, &c.ClaimOwner, &claimUntil)
	if err != nil {
		return nil, err
	}
	if keyID != nil {
		c.KeyID = *keyID
	}
	if expires != nil {
		c.AccessExpiresAt = *expires
	}
	if lastRefresh != nil {
		c.LastRefreshAt = *lastRefresh
	}
	if lastUsed != nil {
		c.LastUsedAt = *lastUsed
	}
	if lastData != nil {
		c.LastDataAt = *lastData
	}
	if claimUntil != nil {
		c.ClaimUntil = *claimUntil
	}
	return &c, nil
}

// Get returns the connection of user at vendor, or ErrNotFound.
func (s *Store) Get(ctx context.Context, userID, vendor string) (*Connection, error) {
	c, err := scanConnection(s.pool.QueryRow(ctx,
		`SELECT `+connectionColumns+` FROM tokens.connections WHERE user_id = $1 AND vendor = $2`, userID, vendor))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("get connection: %w", err)
	}
	return c, nil
}

// List returns every connection of user, ordered by vendor.
func (s *Store) List(ctx context.Context, userID string) ([]*Connection, error) {
	rows, err := s.pool.Query(ctx,
		`SELECT `+connectionColumns+` FROM tokens.connections WHERE user_id = $1 ORDER BY vendor`, userID)
	if err != nil {
		return nil, fmt.Errorf("list connections: %w", err)
	}
	out, err := pgx.CollectRows(rows, collectConnection)
	if err != nil {
		return nil, fmt.Errorf("list connections: %w", err)
	}
	return out, nil
}

// ResolveVendorUser returns the connection of a vendor account: the live
// (active or broken) one, else the most recently revoked one, else ErrNotFound.
func (s *Store) ResolveVendorUser(ctx context.Context, vendor, vendorUserID string) (*Connection, error) {
	c, err := scanConnection(s.pool.QueryRow(ctx, `SELECT `+connectionColumns+` FROM tokens.connections
		WHERE vendor = $1 AND vendor_user_id = $2
		ORDER BY (status = 'revoked'), updated_at DESC LIMIT 1`, vendor, vendorUserID))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("resolve vendor user: %w", err)
	}
	return c, nil
}

// Connect creates or replaces user's connection at vendor with fresh tokens
// (a new authorization) and records a connected event, in one transaction.
func (s *Store) Connect(ctx context.Context, c *Connection, now time.Time) (*Connection, error) {
	var out *Connection
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var err error
		out, err = scanConnection(tx.QueryRow(ctx, `
			INSERT INTO tokens.connections (user_id, vendor, vendor_user_id, status, scopes, key_id,
				access_token_enc, refresh_token_enc, access_expires_at, version, broken_reason,
				connected_at, last_refresh_at, last_used_at, updated_at)
			VALUES ($1, $2, $3, 'active', $4, $5, $6, $7, $8, 1, '', $9, NULL, NULL, $9)
			ON CONFLICT (user_id, vendor) DO UPDATE SET
				vendor_user_id = EXCLUDED.vendor_user_id, status = 'active', scopes = EXCLUDED.scopes,
				key_id = EXCLUDED.key_id, access_token_enc = EXCLUDED.access_token_enc,
				refresh_token_enc = EXCLUDED.refresh_token_enc, access_expires_at = EXCLUDED.access_expires_at,
				version = connections.version + 1, broken_reason = '', connected_at = EXCLUDED.connected_at,
				last_refresh_at = NULL, updated_at = EXCLUDED.updated_at,
				refresh_claim_owner = NULL, refresh_claim_until = NULL
			RETURNING `+connectionColumns,
			c.UserID, c.Vendor, c.VendorUserID, c.Scopes, c.KeyID, c.AccessTokenEnc, c.RefreshTokenEnc,
			c.AccessExpiresAt, now))
		if err != nil {
			var pgErr *pgconn.PgError
			if errors.As(err, &pgErr) && pgErr.Code == "23505" && pgErr.ConstraintName == "connections_vendor_user_live" {
				return ErrVendorAccountInUse
			}
			return fmt.Errorf("upsert connection: %w", err)
		}
		return insertEvent(ctx, tx, Event{UserID: c.UserID, Vendor: c.Vendor, Type: EventConnected, OccurredAt: now})
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// StoreRefreshed writes the tokens of a refresh if the connection is still
// at version old and active, bumping the version and clearing the refresh
// claim. ErrVersionConflict means someone else wrote first and nothing was
// changed.
func (s *Store) StoreRefreshed(ctx context.Context, userID, vendor string, old int64, t Tokens, now time.Time) (*Connection, error) {
	c, err := scanConnection(s.pool.QueryRow(ctx, `
		UPDATE tokens.connections SET key_id = $4, access_token_enc = $5, refresh_token_enc = $6,
			access_expires_at = $7, version = version + 1, last_refresh_at = $8, updated_at = $8,
			refresh_claim_owner = NULL, refresh_claim_until = NULL
		WHERE user_id = $1 AND vendor = $2 AND version = $3 AND status = 'active'
		RETURNING `+connectionColumns,
		userID, vendor, old, t.KeyID, t.AccessTokenEnc, t.RefreshTokenEnc, t.AccessExpiresAt, now))
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrVersionConflict
	}
	if err != nil {
		return nil, fmt.Errorf("store refreshed tokens: %w", err)
	}
	return c, nil
}

// ClaimRefresh records owner's claim to refresh the connection at version
// for lease, unless another holder's claim is still running. It is taken
// before the vendor call, so a holder that lost its Redis lock still keeps
// everyone else from presenting the same single-use refresh token.
// ErrClaimed means someone else holds it or the version moved.
func (s *Store) ClaimRefresh(ctx context.Context, userID, vendor string, version int64, owner string, lease time.Duration) error {
	tag, err := s.pool.Exec(ctx, `
		UPDATE tokens.connections SET refresh_claim_owner = $4,
			refresh_claim_until = clock_timestamp() + $5 * interval '1 microsecond'
		WHERE user_id = $1 AND vendor = $2 AND version = $3 AND status = 'active'
		  AND (refresh_claim_owner IS NULL OR refresh_claim_owner = $4 OR refresh_claim_until < clock_timestamp())`,
		userID, vendor, version, owner, lease.Microseconds())
	if err != nil {
		return fmt.Errorf("claim refresh: %w", err)
	}
	if tag.RowsAffected() == 0 {
		return ErrClaimed
	}
	return nil
}

// ReleaseClaim drops owner's refresh claim (the vendor call failed and
// changed nothing). Another holder's claim is left alone.
func (s *Store) ReleaseClaim(ctx context.Context, userID, vendor, owner string) error {
	_, err := s.pool.Exec(ctx, `
		UPDATE tokens.connections SET refresh_claim_owner = NULL, refresh_claim_until = NULL
		WHERE user_id = $1 AND vendor = $2 AND refresh_claim_owner = $3`, userID, vendor, owner)
	if err != nil {
		return fmt.Errorf("release refresh claim: %w", err)
	}
	return nil
}

// MarkBroken marks the connection broken if it is still at version old,
// nobody but owner holds an unexpired refresh claim on it (a refresh of
// theirs may still land), and records a refresh_failed event, in one
// transaction. The tokens stay (they are useless, but kept for diagnosis
// until the user reconnects or revokes). ErrVersionConflict covers both
// fences.
func (s *Store) MarkBroken(ctx context.Context, userID, vendor string, old int64, owner, reason string, now time.Time) error {
	return pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		tag, err := tx.Exec(ctx, `
			UPDATE tokens.connections SET status = 'broken', broken_reason = $4, version = version + 1, updated_at = $5,
				refresh_claim_owner = NULL, refresh_claim_until = NULL
			WHERE user_id = $1 AND vendor = $2 AND version = $3 AND status = 'active'
			  AND (refresh_claim_owner IS NULL OR refresh_claim_owner = $6 OR refresh_claim_until < clock_timestamp())`,
			userID, vendor, old, reason, now, owner)
		if err != nil {
			return fmt.Errorf("mark connection broken: %w", err)
		}
		if tag.RowsAffected() == 0 {
			return ErrVersionConflict
		}
		return insertEvent(ctx, tx, Event{UserID: userID, Vendor: vendor, Type: EventRefreshFailed, Reason: reason, OccurredAt: now})
	})
}

// Revoke deletes the tokens, marks the connection revoked and records a
// revoked event, in one transaction. It is not fenced: a revocation wins
// over whatever else is going on, and bumping the version makes every
// in-flight fenced write fail. A revoked connection is no longer stale:
// staleness is about connections that should deliver data. It returns
// ErrNotFound when there is no connection or it is already revoked.
// It returns the connection's new version, so the caller can fence the
// token cache against writers that read the row before the revocation.
func (s *Store) Revoke(ctx context.Context, userID, vendor, reason string, now time.Time) (version int64, err error) {
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		err := tx.QueryRow(ctx, `
			UPDATE tokens.connections SET status = 'revoked', key_id = NULL, access_token_enc = NULL,
				refresh_token_enc = NULL, access_expires_at = NULL, version = version + 1, updated_at = $3,
				stale = false, stale_since = NULL, refresh_claim_owner = NULL, refresh_claim_until = NULL
			WHERE user_id = $1 AND vendor = $2 AND status <> 'revoked'
			RETURNING version`, userID, vendor, now).Scan(&version)
		if errors.Is(err, pgx.ErrNoRows) {
			return ErrNotFound
		}
		if err != nil {
			return fmt.Errorf("revoke connection: %w", err)
		}
		return insertEvent(ctx, tx, Event{UserID: userID, Vendor: vendor, Type: EventRevoked, Reason: reason, OccurredAt: now})
	})
	return version, err
}

// TouchUsed records that the connection's token was handed out, at most
// once per minute per connection so a busy connection does not turn reads
// into writes. Proactive refresh only keeps recently used connections warm.
func (s *Store) TouchUsed(ctx context.Context, userID, vendor string, now time.Time) error {
	_, err := s.pool.Exec(ctx, `
		UPDATE tokens.connections SET last_used_at = $3
		WHERE user_id = $1 AND vendor = $2 AND (last_used_at IS NULL OR last_used_at < $3::timestamptz - interval '1 minute')`,
		userID, vendor, now)
	if err != nil {
		return fmt.Errorf("touch connection: %w", err)
	}
	return nil
}

// Key identifies a connection.
type Key struct {
	UserID string
	Vendor string
}

// ExpiringActive lists active connections whose access token expires before
// before and that were used (or connected) since usedSince, soonest first.
// Use is recorded whenever a token is handed out from the store, which
// happens at least once per token lifetime for a connection in use.
func (s *Store) ExpiringActive(ctx context.Context, before, usedSince time.Time, limit int) ([]Key, error) {
	rows, err := s.pool.Query(ctx, `
		SELECT user_id, vendor FROM tokens.connections
		WHERE status = 'active' AND access_expires_at < $1 AND (last_used_at >= $2 OR connected_at >= $2)
		ORDER BY access_expires_at LIMIT $3`, before, usedSince, limit)
	if err != nil {
		return nil, fmt.Errorf("list expiring connections: %w", err)
	}
	keys, err := pgx.CollectRows(rows, func(r pgx.CollectableRow) (Key, error) {
		var k Key
		err := r.Scan(&k.UserID, &k.Vendor)
		return k, err
	})
	if err != nil {
		return nil, fmt.Errorf("list expiring connections: %w", err)
	}
	return keys, nil
}

// StaleKeyRows lists connections after the key after (keyset pagination, so
// a row that cannot be re-encrypted does not stall the pass) whose tokens
// are sealed with a key other than primary.
func (s *Store) StaleKeyRows(ctx context.Context, primary string, after Key, limit int) ([]*Connection, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+connectionColumns+` FROM tokens.connections
		WHERE key_id IS NOT NULL AND key_id <> $1 AND (user_id, vendor) > ($2, $3)
		ORDER BY user_id, vendor LIMIT $4`, primary, after.UserID, after.Vendor, limit)
	if err != nil {
		return nil, fmt.Errorf("list connections to re-encrypt: %w", err)
	}
	out, err := pgx.CollectRows(rows, collectConnection)
	if err != nil {
		return nil, fmt.Errorf("list connections to re-encrypt: %w", err)
	}
	return out, nil
}

// Reencrypt replaces the ciphertexts of a connection that is still at
// version and still sealed with oldKeyID. The plaintext is unchanged, so
// the version is not bumped: a refresh fenced on this version stays valid
// (and writes tokens sealed with the primary key anyway). It reports
// whether the row was updated.
func (s *Store) Reencrypt(ctx context.Context, userID, vendor string, version int64, oldKeyID string, t Tokens) (bool, error) {
	tag, err := s.pool.Exec(ctx, `
		UPDATE tokens.connections SET key_id = $5, access_token_enc = $6, refresh_token_enc = $7
		WHERE user_id = $1 AND vendor = $2 AND version = $3 AND key_id = $4`,
		userID, vendor, version, oldKeyID, t.KeyID, t.AccessTokenEnc, t.RefreshTokenEnc)
	if err != nil {
		return false, fmt.Errorf("re-encrypt connection: %w", err)
	}
	return tag.RowsAffected() == 1, nil
}

// CountByKey returns how many connections are sealed with each key id.
func (s *Store) CountByKey(ctx context.Context) (map[string]int, error) {
	rows, err := s.pool.Query(ctx, `SELECT key_id, count(*) FROM tokens.connections WHERE key_id IS NOT NULL GROUP BY key_id`)
	if err != nil {
		return nil, fmt.Errorf("count connections by key: %w", err)
	}
	out := map[string]int{}
	var id string
	var n int
	_, err = pgx.ForEachRow(rows, []any{&id, &n}, func() error {
		out[id] = n
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("count connections by key: %w", err)
	}
	return out, nil
}

// State is a pending authorization.
type State struct {
	UserID          string
	Vendor          string
	KeyID           string
	CodeVerifierEnc []byte
	ReturnTo        string
	ExpiresAt       time.Time
}

// HashState is the key a state is stored under.
func HashState(state string) []byte {
	h := sha256.Sum256([]byte(state))
	return h[:]
}

// SaveState stores a pending authorization under the hash of state.
func (s *Store) SaveState(ctx context.Context, state string, st State) error {
	_, err := s.pool.Exec(ctx, `
		INSERT INTO tokens.oauth_states (state_hash, user_id, vendor, key_id, code_verifier_enc, return_to, expires_at)
		VALUES ($1, $2, $3, $4, $5, $6, $7)`,
		HashState(state), st.UserID, st.Vendor, st.KeyID, st.CodeVerifierEnc, st.ReturnTo, st.ExpiresAt)
	if err != nil {
		return fmt.Errorf("save oauth state: %w", err)
	}
	return nil
}

// ConsumeState deletes and returns the pending authorization for state, so
// a state works at most once even when two callbacks race. Expired states
// are returned too (the caller reports them as expired).
func (s *Store) ConsumeState(ctx context.Context, state string) (*State, error) {
	var st State
	err := s.pool.QueryRow(ctx, `
		DELETE FROM tokens.oauth_states WHERE state_hash = $1
		RETURNING user_id, vendor, key_id, code_verifier_enc, return_to, expires_at`, HashState(state)).
		Scan(&st.UserID, &st.Vendor, &st.KeyID, &st.CodeVerifierEnc, &st.ReturnTo, &st.ExpiresAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("consume oauth state: %w", err)
	}
	return &st, nil
}

// PeekState returns the pending authorization for state without consuming
// it (the vendor's redirect needs the app's return URL; the app's
// completion consumes it).
func (s *Store) PeekState(ctx context.Context, state string) (*State, error) {
	var st State
	err := s.pool.QueryRow(ctx, `
		SELECT user_id, vendor, key_id, code_verifier_enc, return_to, expires_at
		FROM tokens.oauth_states WHERE state_hash = $1`, HashState(state)).
		Scan(&st.UserID, &st.Vendor, &st.KeyID, &st.CodeVerifierEnc, &st.ReturnTo, &st.ExpiresAt)
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("read oauth state: %w", err)
	}
	return &st, nil
}

// DeleteExpiredStates removes states that expired before now.
func (s *Store) DeleteExpiredStates(ctx context.Context, now time.Time) (int64, error) {
	tag, err := s.pool.Exec(ctx, `DELETE FROM tokens.oauth_states WHERE expires_at < $1`, now)
	if err != nil {
		return 0, fmt.Errorf("delete expired oauth states: %w", err)
	}
	return tag.RowsAffected(), nil
}

func insertEvent(ctx context.Context, tx pgx.Tx, e Event) error {
	if e.EventID == "" {
		id, err := newUUID()
		if err != nil {
			return err
		}
		e.EventID = id
	}
	// The counter row stays locked until the transaction ends: the user's
	// next event waits, so sequence order is commit order.
	_, err := tx.Exec(ctx, `
		WITH seq AS (
			INSERT INTO tokens.user_event_sequences AS s (user_id, sequence) VALUES ($2, 1)
			ON CONFLICT (user_id) DO UPDATE SET sequence = s.sequence + 1
			RETURNING sequence)
		INSERT INTO tokens.connection_events (event_id, user_id, vendor, type, reason, occurred_at, sequence)
		SELECT $1, $2, $3, $4, $5, $6, seq.sequence FROM seq`, e.EventID, e.UserID, e.Vendor, e.Type, e.Reason, e.OccurredAt)
	if err != nil {
		return fmt.Errorf("insert connection event: %w", err)
	}
	return nil
}

// newUUID returns a random version-4 UUID.
func newUUID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("event id: %w", err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:]), nil
}

// ForwardBatch runs fn on up to limit unforwarded events (oldest first) and
// marks them forwarded when fn succeeds, or records the failure when it
// does not. Only one relay works at a time across all instances (a
// transaction-scoped advisory lock), which keeps each user's events in
// order; ran is false when another instance held the lock.
func (s *Store) ForwardBatch(ctx context.Context, limit int, fn func(context.Context, []Event) error) (n int, ran bool, err error) {
	var fnErr error
	err = pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock(hashtextextended('biobridge.tokens.relay', 0))`).Scan(&ran); err != nil {
			return fmt.Errorf("lock relay: %w", err)
		}
		if !ran {
			return nil
		}
		rows, err := tx.Query(ctx, `
			SELECT `+eventColumns+` FROM tokens.connection_events
			WHERE forwarded_at IS NULL ORDER BY created_at, event_id LIMIT $1`, limit)
		if err != nil {
			return fmt.Errorf("read pending events: %w", err)
		}
		events, err := pgx.CollectRows(rows, scanEvent)
		if err != nil {
			return fmt.Errorf("read pending events: %w", err)
		}
		if len(events) == 0 {
			return nil
		}
		ids := make([]string, len(events))
		for i, e := range events {
			ids[i] = e.EventID
		}
		if ferr := fn(ctx, events); ferr != nil {
			if _, err := tx.Exec(ctx, `UPDATE tokens.connection_events SET attempts = attempts + 1, last_error = $2
				WHERE event_id = ANY($1::uuid[])`, ids, truncate.UTF8(ferr.Error(), 500)); err != nil {
				return fmt.Errorf("record relay failure: %w", err)
			}
			fnErr = ferr
			return nil
		}
		if _, err := tx.Exec(ctx, `UPDATE tokens.connection_events SET forwarded_at = now(), attempts = attempts + 1, last_error = ''
			WHERE event_id = ANY($1::uuid[])`, ids); err != nil {
			return fmt.Errorf("mark events forwarded: %w", err)
		}
		n = len(events)
		return nil
	})
	if err == nil {
		err = fnErr
	}
	return n, ran, err
}

// Backlog returns the number of unforwarded events and the age of the oldest.
func (s *Store) Backlog(ctx context.Context, now time.Time) (count int64, oldest time.Duration, err error) {
	var first *time.Time
	err = s.pool.QueryRow(ctx, `SELECT count(*), min(created_at) FROM tokens.connection_events WHERE forwarded_at IS NULL`).Scan(&count, &first)
	if err != nil {
		return 0, 0, fmt.Errorf("count pending events: %w", err)
	}
	if first != nil {
		oldest = now.Sub(*first)
	}
	return count, oldest, nil
}

// eventColumns are the connection_events columns scanEvent reads.
const eventColumns = `event_id::text, user_id, vendor, type, reason, occurred_at, sequence`

func scanEvent(r pgx.CollectableRow) (Event, error) {
	var e Event
	err := r.Scan(&e.EventID, &e.UserID, &e.Vendor, &e.Type, &e.Reason, &e.OccurredAt, &e.Sequence)
	return e, err
}

// Events lists every event of user, oldest first (tests, diagnosis).
func (s *Store) Events(ctx context.Context, userID string) ([]Event, error) {
	rows, err := s.pool.Query(ctx, `SELECT `+eventColumns+`
		FROM tokens.connection_events WHERE user_id = $1 ORDER BY created_at, event_id`, userID)
	if err != nil {
		return nil, fmt.Errorf("list events: %w", err)
	}
	events, err := pgx.CollectRows(rows, scanEvent)
	if err != nil {
		return nil, fmt.Errorf("list events: %w", err)
	}
	return events, nil
}
