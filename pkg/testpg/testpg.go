// Package testpg gives each test its own PostgreSQL database and Redis key
// prefix on the machine's shared servers.
//
// Migrations run once per (name, version) into a template database; every
// test then gets a cheap CREATE DATABASE ... TEMPLATE copy, dropped in
// t.Cleanup. Several `go test` package processes run at once, so the
// template is built under a PostgreSQL advisory lock and published by
// renaming it only after its migrations succeeded: a crashed build never
// leaves a half-migrated template behind.
package testpg

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/redis/go-redis/v9"

	"github.com/biobridge/bridge/pkg/pgstore"
)

// Defaults for the servers (override with TEST_POSTGRES_URL / TEST_REDIS_URL).
const (
	DefaultPostgresURL = "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"
	DefaultRedisURL    = "redis://127.0.0.1:6379/0"
)

const setupTimeout = 2 * time.Minute

// PostgresURL returns the test server's maintenance URL.
func PostgresURL() string {
	if v := strings.TrimSpace(os.Getenv("TEST_POSTGRES_URL")); v != "" {
		return v
	}
	return DefaultPostgresURL
}

// New returns the URL of a fresh database for this test, cloned from a
// template migrated by migrate. name identifies the template and must change
// whenever the migrations do: include a version or a hash of the migration
// files, e.g. "persistence_" + hash. migrate may be nil for an empty database.
func New(t testing.TB, name string, migrate func(ctx context.Context, url string) error) (url string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()

	server := PostgresURL()
	admin := connect(ctx, t, server)
	defer func() { _ = admin.Close(context.Background()) }()

	tpl := templateName(name)
	if err := ensureTemplate(ctx, admin, server, tpl, migrate); err != nil {
		t.Fatalf("testpg: build template %s: %v", tpl, err)
	}

	db := "t_" + sanitize(name, 30) + "_" + randomHex(6)
	if err := createFromTemplate(ctx, admin, db, tpl); err != nil {
		t.Fatalf("testpg: create database %s: %v", db, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, server)
		if err != nil {
			t.Errorf("testpg: drop database %s: %v", db, err)
			return
		}
		defer func() { _ = c.Close(context.Background()) }()
		if _, err := c.Exec(ctx, "DROP DATABASE IF EXISTS "+ident(db)+" WITH (FORCE)"); err != nil {
			t.Errorf("testpg: drop database %s: %v", db, err)
		}
	})
	u, err := pgstore.WithDatabase(server, db)
	if err != nil {
		t.Fatalf("testpg: TEST_POSTGRES_URL: %v", err)
	}
	return u
}

func connect(ctx context.Context, t testing.TB, server string) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(ctx, server)
	if err != nil {
		t.Fatalf("testpg: cannot reach PostgreSQL at %s: %v\n"+
			"Tests need a PostgreSQL server (15+) that trusts user postgres: start the machine's one "+
			"(for example `pg_ctlcluster 15 main start` or `docker run -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres:15`) "+
			"or point TEST_POSTGRES_URL at one.", pgstore.Redact(server), err)
	}
	return c
}

// ensureTemplate builds tpl once across all processes.
func ensureTemplate(ctx context.Context, admin *pgx.Conn, server, tpl string, migrate func(context.Context, string) error) (err error) {
	// Session-level lock on the admin connection: held across the whole
	// build, released on every path (or when the connection dies).
	if _, err := admin.Exec(ctx, `SELECT pg_advisory_lock(hashtextextended('biobridge.testpg:' || $1, 0))`, tpl); err != nil {
		return fmt.Errorf("lock: %w", err)
	}
	defer func() {
		if _, uerr := admin.Exec(context.WithoutCancel(ctx), `SELECT pg_advisory_unlock(hashtextextended('biobridge.testpg:' || $1, 0))`, tpl); uerr != nil && err == nil {
			err = fmt.Errorf("unlock: %w", uerr)
		}
	}()
	exists, err := databaseExists(ctx, admin, tpl)
	if err != nil || exists {
		return err
	}
	building := tpl + "_b"
	// A previous build crashed half way: start over.
	if _, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+ident(building)+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop stale build: %w", err)
	}
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+ident(building)); err != nil {
		return fmt.Errorf("create: %w", err)
	}
	if migrate != nil {
		u, err := pgstore.WithDatabase(server, building)
		if err != nil {
			return err
		}
		if err := migrate(ctx, u); err != nil {
			return fmt.Errorf("migrate: %w", err)
		}
	}
	// Pools the migrate func forgot to close would block the rename and
	// every clone later on.
	if _, err := admin.Exec(ctx, `SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()`, building); err != nil {
		return fmt.Errorf("disconnect build sessions: %w", err)
	}
	if _, err := admin.Exec(ctx, "ALTER DATABASE "+ident(building)+" RENAME TO "+ident(tpl)); err != nil {
		return fmt.Errorf("publish: %w", err)
	}
	if _, err := admin.Exec(ctx, "ALTER DATABASE "+ident(tpl)+" WITH IS_TEMPLATE true"); err != nil {
		return fmt.Errorf("mark template: %w", err)
	}
	return nil
}

func databaseExists(ctx context.Context, c *pgx.Conn, name string) (bool, error) {
	var ok bool
	err := c.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&ok)
	if err != nil {
		return false, fmt.Errorf("look up database %s: %w", name, err)
	}
	return ok, nil
}

// createFromTemplate clones tpl. PostgreSQL refuses to copy a template that
// has open sessions (SQLSTATE 55006); they are short-lived, so retry.
func createFromTemplate(ctx context.Context, admin *pgx.Conn, db, tpl string) error {
	for attempt := 0; ; attempt++ {
		_, err := admin.Exec(ctx, "CREATE DATABASE "+ident(db)+" TEMPLATE "+ident(tpl))
		var pgErr *pgconn.PgError
		if err == nil || !errors.As(err, &pgErr) || pgErr.Code != "55006" || attempt >= 50 {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// templateName is readable (sanitized name) and unique (hash of the full name).
func templateName(name string) string {
	h := sha256.Sum256([]byte(name))
	return "tpl_" + sanitize(name, 40) + "_" + hex.EncodeToString(h[:])[:8]
}

func sanitize(s string, max int) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		switch {
		case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '_':
			b.WriteRune(r)
		default:
			b.WriteByte('_')
		}
	}
	out := b.String()
	if len(out) > max {
		out = out[:max]
	}
	return out
}

func ident(s string) string { return pgx.Identifier{s}.Sanitize() }

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// NewRedis returns the test Redis URL and a unique key prefix ("test:<random>:")
// for this test. Keys under the prefix are deleted in t.Cleanup, so code
// under test must put every key it writes under the prefix.
func NewRedis(t testing.TB) (url string, prefix string) {
	t.Helper()
	url = DefaultRedisURL
	if v := strings.TrimSpace(os.Getenv("TEST_REDIS_URL")); v != "" {
		url = v
	}
	opts, err := redis.ParseURL(url)
	if err != nil {
		t.Fatalf("testpg: TEST_REDIS_URL: invalid redis url")
	}
	client := redis.NewClient(opts)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := client.Ping(ctx).Err(); err != nil {
		_ = client.Close()
		t.Fatalf("testpg: cannot reach Redis at %s: %v\n"+
			"Tests need a Redis server (7+): start the machine's one (for example `redis-server --daemonize yes`) "+
			"or point TEST_REDIS_URL at one.", opts.Addr, err)
	}
	prefix = "test:" + randomHex(8) + ":"
	t.Cleanup(func() {
		defer func() { _ = client.Close() }()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := DeletePrefix(ctx, client, prefix); err != nil {
			t.Errorf("testpg: delete redis keys %s*: %v", prefix, err)
		}
	})
	return url, prefix
}

// DeletePrefix deletes every key starting with prefix, scanning in batches
// so a large keyspace never blocks Redis the way KEYS would.
func DeletePrefix(ctx context.Context, client redis.UniversalClient, prefix string) error {
	iter := client.Scan(ctx, 0, escapeGlob(prefix)+"*", 500).Iterator()
	var batch []string
	for iter.Next(ctx) {
		batch = append(batch, iter.Val())
		if len(batch) == 500 {
			if err := client.Unlink(ctx, batch...).Err(); err != nil {
				return err
			}
			batch = batch[:0]
		}
	}
	if err := iter.Err(); err != nil {
		return err
	}
	if len(batch) > 0 {
		return client.Unlink(ctx, batch...).Err()
	}
	return nil
}

func escapeGlob(s string) string {
	r := strings.NewReplacer(`\`, `\\`, `*`, `\*`, `?`, `\?`, `[`, `\[`, `]`, `\]`)
	return r.Replace(s)
}
