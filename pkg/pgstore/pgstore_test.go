package pgstore_test

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"sync"
	"testing"
	"testing/fstest"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/pkg/pgstore"
	"github.com/biobridge/bridge/pkg/testpg"
)

func migrations(t *testing.T) fs.FS {
	t.Helper()
	return os.DirFS("testdata/migrations")
}

func TestMigrateConcurrentReplicas(t *testing.T) {
	t.Parallel()
	url := testpg.New(t, "pgstore_empty_v1", nil)
	ctx := context.Background()

	// Four replicas start at once: all must succeed, each migration applied once
	// (000002 inserts a row with a primary key: running it twice would fail).
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() { errs[i] = pgstore.Migrate(ctx, url, migrations(t), "store") })
	}
	wg.Wait()
	for i, err := range errs {
		require.NoError(t, err, "replica %d", i)
	}

	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer func() { require.NoError(t, conn.Close(ctx)) }()
	var version int
	var dirty bool
	require.NoError(t, conn.QueryRow(ctx, `SELECT version, dirty FROM store.schema_migrations`).Scan(&version, &dirty))
	assert.Equal(t, 2, version)
	assert.False(t, dirty)
	var n int
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM store.items`).Scan(&n))
	assert.Equal(t, 1, n, "unqualified names in migrations land in the schema")

	// Running again is a no-op.
	require.NoError(t, pgstore.Migrate(ctx, url, migrations(t), "store"))
}

func TestMigrateFailureIsReported(t *testing.T) {
	t.Parallel()
	url := testpg.New(t, "pgstore_empty_v1", nil)
	bad := fstest.MapFS{
		"000001_broken.up.sql": {Data: []byte("CREATE TABLE (;")},
	}
	err := pgstore.Migrate(context.Background(), url, bad, "broken")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "migrate broken")

	err = pgstore.Migrate(context.Background(), url, fstest.MapFS{"migrations/000001_x.up.sql": {}}, "x")
	require.ErrorContains(t, err, "fs.Sub")
}

func TestConnect(t *testing.T) {
	t.Parallel()
	url := testpg.New(t, "pgstore_empty_v1", nil)
	pool, err := pgstore.Connect(context.Background(), url, nil)
	require.NoError(t, err)
	defer pool.Close()
	var one int
	require.NoError(t, pool.QueryRow(context.Background(), "SELECT 1").Scan(&one))
	assert.Equal(t, 1, one)
	assert.EqualValues(t, pgstore.DefaultMaxConns, pool.Config().MaxConns)

	_, err = pgstore.Connect(context.Background(), "postgres://postgres:hunter2@127.0.0.1:1/x?connect_timeout=2", nil)
	require.Error(t, err)
	assert.NotContains(t, err.Error(), "hunter2")
}

func TestEnsureDatabase(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	name := fmt.Sprintf("pgstore_ensure_%d", os.Getpid())
	url, err := pgstore.WithDatabase(testpg.PostgresURL(), name)
	require.NoError(t, err)
	admin, err := pgx.Connect(ctx, testpg.PostgresURL())
	require.NoError(t, err)
	t.Cleanup(func() {
		_, err := admin.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)")
		assert.NoError(t, err)
		assert.NoError(t, admin.Close(ctx))
	})

	var wg sync.WaitGroup
	errs := make([]error, 3)
	for i := range errs {
		wg.Go(func() { errs[i] = pgstore.EnsureDatabase(ctx, url) })
	}
	wg.Wait()
	for _, err := range errs {
		require.NoError(t, err)
	}
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err, "database exists now")
	require.NoError(t, conn.Close(ctx))
	require.NoError(t, pgstore.EnsureDatabase(ctx, url), "idempotent")
}

func TestVersionChangesWithAnyMigration(t *testing.T) {
	t.Parallel()
	a := fstest.MapFS{"0001_init.up.sql": {Data: []byte("CREATE TABLE a ();")}, "0001_init.down.sql": {Data: []byte("DROP TABLE a;")}}
	b := fstest.MapFS{"0001_init.up.sql": {Data: []byte("CREATE TABLE b ();")}, "0001_init.down.sql": {Data: []byte("DROP TABLE a;")}}
	if first, again := pgstore.Version(a), pgstore.Version(a); first != again {
		t.Fatal("Version is not deterministic")
	}
	if pgstore.Version(a) == pgstore.Version(b) {
		t.Fatal("a changed migration keeps the same version")
	}
}

// TestEmbeddedMigrations: migrations in a directory of an FS (as a
// service embeds them) apply to their schema and are versioned by their
// files; a directory that is no path fails Migrate with a named error.
func TestEmbeddedMigrations(t *testing.T) {
	t.Parallel()
	url := testpg.New(t, "pgstore_empty_v1", nil)
	ctx := context.Background()
	m := pgstore.EmbeddedMigrations(os.DirFS("testdata"), "migrations", "embedded")
	require.NoError(t, m.Migrate(ctx, url))
	conn, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer func() { require.NoError(t, conn.Close(ctx)) }()
	var n int
	require.NoError(t, conn.QueryRow(ctx, `SELECT count(*) FROM embedded.items`).Scan(&n))
	assert.Equal(t, 1, n)
	assert.Equal(t, pgstore.Version(migrations(t)), m.Version())

	bad := pgstore.EmbeddedMigrations(os.DirFS("testdata"), "../outside", "bad")
	require.ErrorContains(t, bad.Migrate(ctx, url), "open bad migrations")
	assert.Equal(t, "unknown", bad.Version())
}
