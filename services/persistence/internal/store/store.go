// Package store is the persistence service's PostgreSQL adapter: the
// biometrics schema (embedded migrations), the write transaction that
// stores record versions, readings, latest values and outbox entries
// together, the outbox lease protocol, time partitions, reads and the audit
// log.
//
// Every transaction that changes a user's data first takes that user's
// transaction-scoped advisory lock (several users: in sorted key order, so
// two transactions never deadlock on each other). That serializes one
// user's writes, which gives three guarantees the rest of the service builds
// on: outbox ids of one key are assigned in commit order, the per-user
// commit counter (user_commits) follows commit order, and the in-transaction
// view of a user's latest values is exact.
package store

import (
	"context"
	"embed"
	"errors"
	"hash/fnv"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/biobridge/bridge/pkg/logging"
	"github.com/biobridge/bridge/pkg/pgstore"
	"github.com/biobridge/bridge/services/persistence/internal/metrics"
)

// Schema is the PostgreSQL schema the service owns.
const Schema = "biometrics"

// NotifyChannel is the LISTEN/NOTIFY channel a commit with new outbox
// entries signals on.
const NotifyChannel = "biometrics_outbox"

//go:embed migrations/*.sql
var migrationFiles embed.FS

var migrations = pgstore.EmbeddedMigrations(migrationFiles, "migrations", Schema)

// MigrationsVersion is a hash of the embedded migration files. Test
// templates are keyed by it, so a changed migration builds a new template.
var MigrationsVersion = migrations.Version()

// Migrate applies the migrations to url (advisory-locked by golang-migrate,
// so replicas starting together do not race) and creates the time
// partitions around the current month.
func Migrate(ctx context.Context, url string, monthsAhead int) error {
	if err := MigrateSchema(ctx, url); err != nil {
		return err
	}
	pool, err := pgstore.Connect(ctx, withSearchPath(url), nil)
	if err != nil {
		return err
	}
	defer pool.Close()
	s := &Store{pool: pool, logger: slog.New(slog.DiscardHandler), m: metrics.Nop()}
	return s.EnsurePartitions(ctx, time.Now(), monthsAhead)
}

// MigrateSchema applies the embedded migrations (no partitions).
func MigrateSchema(ctx context.Context, url string) error {
	return migrations.Migrate(ctx, url)
}

// Store is the PostgreSQL store.
type Store struct {
	pool   *pgxpool.Pool
	logger *slog.Logger
	m      *metrics.Metrics
	// copyThreshold is the number of readings or events from which a
	// write COPYs its new rows instead of unnest INSERTs (bulk.go).
	copyThreshold int
	// subject turns a user id into its erasure pseudonym (SetSubjects).
	subject func(userID string) string
}

// Open connects to url with the schema on the search path.
func Open(ctx context.Context, url string, logger *slog.Logger, m *metrics.Metrics) (*Store, error) {
	pool, err := pgstore.Connect(ctx, withSearchPath(url), logger)
	if err != nil {
		return nil, err
	}
	return &Store{pool: pool, logger: logger, m: m, copyThreshold: 256,
		subject: logging.NewPseudonymizer(nil).Pseudonym}, nil
}

// Pool returns the connection pool (readiness checks).
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// Close closes the pool.
func (s *Store) Close() { s.pool.Close() }

// Ping checks the database (readiness).
func (s *Store) Ping(ctx context.Context) error { return s.pool.Ping(ctx) }

// withSearchPath adds the schema to the URL's search_path so queries use
// unqualified names.
func withSearchPath(url string) string {
	sep := "?"
	if strings.Contains(url, "?") {
		sep = "&"
	}
	return url + sep + "search_path=" + Schema
}

// userLockKey is the advisory lock key of a user. Different users may
// collide; that only serializes them, it never breaks anything.
func userLockKey(userID string) int64 {
	h := fnv.New64a()
	h.Write([]byte("biometrics.user:"))
	h.Write([]byte(userID))
	return int64(h.Sum64())
}

// lockKeys returns the sorted distinct lock keys of users.
func lockKeys(users []string) []int64 {
	keys := make([]int64, 0, len(users))
	for _, u := range users {
		keys = append(keys, userLockKey(u))
	}
	slices.Sort(keys)
	return slices.Compact(keys)
}

// lockUsersSQL takes the users' locks in array order (unnest preserves it;
// the keys are sorted, so lock order is global).
const lockUsersSQL = `SELECT count(pg_advisory_xact_lock(k)) FROM unnest($1::bigint[]) AS k`

// retryable reports errors worth retrying the whole transaction for.
func retryable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		switch pgErr.Code {
		case "40001", "40P01", "55P03": // serialization failure, deadlock, lock timeout
			return true
		}
	}
	return false
}
