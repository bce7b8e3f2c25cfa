// Package pgstore connects services to PostgreSQL (a pgx pool) and applies
// their schema migrations with golang-migrate. Each service owns one
// PostgreSQL schema; its migrations table lives inside that schema, so
// services migrate independently of each other in one database.
package pgstore

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/url"
	"path"
	"sort"
	"strings"
	"time"

	"github.com/golang-migrate/migrate/v4"
	migratepgx "github.com/golang-migrate/migrate/v4/database/pgx/v5"
	"github.com/golang-migrate/migrate/v4/source/iofs"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
)

// Pool defaults, used unless the URL sets pool_max_conns and friends.
// MinConns is 0 because tests run many pools against one server whose
// max_connections (100 by default) they would otherwise exhaust idle.
const (
	DefaultMaxConns        = 20
	DefaultMinConns        = 0
	DefaultMaxConnIdleTime = 5 * time.Minute
	DefaultMaxConnLifetime = time.Hour
)

// Connect opens a pool for url and pings it. Pool sizes come from the URL's
// pool_* parameters when present, else the defaults above: pgxpool's own
// default (the number of CPUs, at least 4) is too small for a service that
// holds connections across vendor-bound work.
func Connect(ctx context.Context, url string, logger *slog.Logger) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		// The error can echo the URL including the password: keep only the kind.
		return nil, errors.New("parse postgres url: invalid connection string")
	}
	if !strings.Contains(url, "pool_max_conns") {
		cfg.MaxConns = DefaultMaxConns
	}
	if !strings.Contains(url, "pool_min_conns") {
		cfg.MinConns = DefaultMinConns
	}
	if !strings.Contains(url, "pool_max_conn_idle_time") {
		cfg.MaxConnIdleTime = DefaultMaxConnIdleTime
	}
	if !strings.Contains(url, "pool_max_conn_lifetime") {
		cfg.MaxConnLifetime = DefaultMaxConnLifetime
	}
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("create postgres pool: %w", err)
	}
	if err := pool.Ping(ctx); err != nil {
		pool.Close()
		return nil, fmt.Errorf("ping postgres %s/%s: %w", cfg.ConnConfig.Host, cfg.ConnConfig.Database, err)
	}
	if logger != nil {
		logger.Info("connected to postgres", "host", cfg.ConnConfig.Host, "database", cfg.ConnConfig.Database, "max_conns", cfg.MaxConns)
	}
	return pool, nil
}

// MigrationsTable is the golang-migrate version table, inside the schema.
const MigrationsTable = "schema_migrations"

// lockTimeout is how long Migrate waits for another replica's migration.
const lockTimeout = 2 * time.Minute

// Migrate applies the *.up.sql migrations at the root of migrations (use
// fs.Sub for an embedded directory) to schema, creating the schema first.
// The migrations run with search_path set to the schema, so they may use
// unqualified names. Several replicas may call it at once: golang-migrate
// holds a PostgreSQL advisory lock (keyed by database, schema and table)
// while it checks and applies versions, so exactly one applies each version
// and the others wait, then find nothing to do.
func Migrate(ctx context.Context, url string, migrations fs.FS, schema string) (err error) {
	if schema == "" {
		return errors.New("migrate: schema is required")
	}
	ups, err := fs.Glob(migrations, "*.up.sql")
	if err != nil || len(ups) == 0 {
		return errors.New("migrate: no *.up.sql files at the root of the migrations fs (pass fs.Sub(fsys, \"migrations\"))")
	}
	connCfg, err := pgx.ParseConfig(url)
	if err != nil {
		return errors.New("migrate: parse postgres url: invalid connection string")
	}
	if err := createSchema(ctx, connCfg, schema); err != nil {
		return err
	}
	connCfg.RuntimeParams["search_path"] = quoteIdent(schema) + ", public"
	db := stdlib.OpenDB(*connCfg)
	defer func() {
		if cerr := db.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("migrate %s: close db: %w", schema, cerr)
		}
	}()
	if err := db.PingContext(ctx); err != nil {
		return fmt.Errorf("migrate %s: ping: %w", schema, err)
	}
	src, err := iofs.New(migrations, ".")
	if err != nil {
		return fmt.Errorf("migrate %s: open migrations: %w", schema, err)
	}
	driver, err := migratepgx.WithInstance(db, &migratepgx.Config{
		MigrationsTable:  MigrationsTable,
		SchemaName:       schema,
		StatementTimeout: 5 * time.Minute,
	})
	if err != nil {
		return fmt.Errorf("migrate %s: open driver: %w", schema, err)
	}
	m, err := migrate.NewWithInstance("iofs", src, "pgx5", driver)
	if err != nil {
		return fmt.Errorf("migrate %s: %w", schema, err)
	}
	m.LockTimeout = lockTimeout
	// golang-migrate has no context: ask it to stop after the current
	// migration when ctx ends.
	stop := context.AfterFunc(ctx, func() {
		select {
		case m.GracefulStop <- true:
		default:
		}
	})
	defer stop()
	upErr := m.Up()
	srcErr, dbErr := m.Close()
	if upErr != nil && !errors.Is(upErr, migrate.ErrNoChange) {
		return fmt.Errorf("migrate %s: %w", schema, upErr)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("migrate %s: %w", schema, ctx.Err())
	}
	if err := errors.Join(srcErr, dbErr); err != nil {
		return fmt.Errorf("migrate %s: close: %w", schema, err)
	}
	return nil
}

// createSchema creates schema under a transaction-scoped advisory lock:
// concurrent CREATE SCHEMA IF NOT EXISTS can still fail with a unique
// violation on the catalog when two sessions race.
func createSchema(ctx context.Context, cfg *pgx.ConnConfig, schema string) error {
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("migrate %s: connect: %w", schema, err)
	}
	defer func() { _ = conn.Close(context.WithoutCancel(ctx)) }()
	return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, `SELECT pg_advisory_xact_lock(hashtextextended('biobridge.create_schema:' || $1, 0))`, schema); err != nil {
			return fmt.Errorf("migrate %s: lock: %w", schema, err)
		}
		if _, err := tx.Exec(ctx, "CREATE SCHEMA IF NOT EXISTS "+quoteIdent(schema)); err != nil {
			return fmt.Errorf("migrate %s: create schema: %w", schema, err)
		}
		return nil
	})
}

// EnsureDatabase creates the database named in url if it does not exist,
// connecting to the "postgres" maintenance database on the same server.
// Used by devstack so a fresh machine needs no manual setup.
func EnsureDatabase(ctx context.Context, url string) error {
	cfg, err := pgx.ParseConfig(url)
	if err != nil {
		return errors.New("ensure database: parse postgres url: invalid connection string")
	}
	name := cfg.Database
	if name == "" || name == "postgres" {
		return nil
	}
	cfg.Database = "postgres"
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("ensure database %s: connect to maintenance database: %w", name, err)
	}
	defer func() { _ = conn.Close(context.WithoutCancel(ctx)) }()
	var exists bool
	if err := conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&exists); err != nil {
		return fmt.Errorf("ensure database %s: %w", name, err)
	}
	if exists {
		return nil
	}
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+quoteIdent(name)); err != nil {
		var pgErr *pgconn.PgError
		// Another process created it between our check and our CREATE.
		if errors.As(err, &pgErr) && (pgErr.Code == "42P04" || pgErr.Code == "23505") {
			return nil
		}
		return fmt.Errorf("ensure database %s: create: %w", name, err)
	}
	return nil
}

// quoteIdent quotes a PostgreSQL identifier.
func quoteIdent(s string) string {
	return pgx.Identifier{s}.Sanitize()
}

// WithDatabase returns rawURL with its database replaced by name (tests,
// devstack).
func WithDatabase(rawURL, name string) (string, error) {
	u, err := url.Parse(rawURL)
	if err != nil || (u.Scheme != "postgres" && u.Scheme != "postgresql") {
		return "", errors.New("postgres url must look like postgres://user@host:port/db")
	}
	u.Path = "/" + path.Clean(name)
	u.RawPath = ""
	return u.String(), nil
}

// Redact returns rawURL without its password, for logs and error messages.
func Redact(rawURL string) string {
	u, err := url.Parse(rawURL)
	if err != nil {
		return "(invalid url)"
	}
	return u.Redacted()
}

// Migrations are a service's embedded schema migrations: the *.sql files in
// one directory of an embed.FS, applied to the schema the service owns.
type Migrations struct {
	files  fs.FS
	schema string
	err    error
}

// EmbeddedMigrations returns the migrations in directory dir of fsys (for
// example an embed.FS of "migrations/*.sql") for schema.
func EmbeddedMigrations(fsys fs.FS, dir, schema string) Migrations {
	sub, err := fs.Sub(fsys, dir)
	if err != nil {
		err = fmt.Errorf("open %s migrations: %w", schema, err)
	}
	return Migrations{files: sub, schema: schema, err: err}
}

// Migrate applies the migrations to the database at url (see Migrate).
func (m Migrations) Migrate(ctx context.Context, url string) error {
	if m.err != nil {
		return m.err
	}
	return Migrate(ctx, url, m.files, m.schema)
}

// Version is the migrations' Version, "unknown" if they cannot be read.
func (m Migrations) Version() string {
	if m.err != nil {
		return "unknown"
	}
	return Version(m.files)
}

// Version is a short hash of every file in a migrations FS. It changes
// whenever a migration does, which is what test template databases are keyed
// by (pkg/testpg), so a changed migration never reuses an old template.
func Version(migrations fs.FS) string {
	names, err := fs.Glob(migrations, "*")
	if err != nil {
		return "unknown"
	}
	sort.Strings(names)
	h := sha256.New()
	for _, n := range names {
		b, err := fs.ReadFile(migrations, n)
		if err != nil {
			return "unknown"
		}
		fmt.Fprintf(h, "%s\x00%d\x00", n, len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil))[:12]
}
