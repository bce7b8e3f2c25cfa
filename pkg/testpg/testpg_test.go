package testpg_test

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/pkg/testpg"
)

func exec(ctx context.Context, t *testing.T, url, sql string) {
	t.Helper()
	c, err := pgx.Connect(ctx, url)
	require.NoError(t, err)
	defer func() { require.NoError(t, c.Close(ctx)) }()
	_, err = c.Exec(ctx, sql)
	require.NoError(t, err)
}

func dbExists(ctx context.Context, t *testing.T, name string) bool {
	t.Helper()
	c, err := pgx.Connect(ctx, testpg.PostgresURL())
	require.NoError(t, err)
	defer func() { require.NoError(t, c.Close(ctx)) }()
	var ok bool
	require.NoError(t, c.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, name).Scan(&ok))
	return ok
}

// TestTemplateBuiltOnceAndCloned runs several tests at once against a new
// template: migrations run once, every test gets its own copy, and the
// copies are dropped afterwards.
func TestTemplateBuiltOnceAndCloned(t *testing.T) {
	ctx := context.Background()
	name := fmt.Sprintf("testpg_selftest_%d_%d", os.Getpid(), time.Now().UnixNano())
	var migrations atomic.Int32
	migrate := func(ctx context.Context, url string) error {
		migrations.Add(1)
		c, err := pgx.Connect(ctx, url)
		if err != nil {
			return err
		}
		defer func() { _ = c.Close(ctx) }()
		_, err = c.Exec(ctx, `CREATE TABLE things (id int PRIMARY KEY); INSERT INTO things VALUES (1)`)
		return err
	}

	var dbs sync.Map
	t.Run("group", func(t *testing.T) {
		for i := range 4 {
			t.Run(fmt.Sprint(i), func(t *testing.T) {
				t.Parallel()
				url := testpg.New(t, name, migrate)
				cfg, err := pgx.ParseConfig(url)
				require.NoError(t, err)
				dbs.Store(cfg.Database, true)

				// The template's data is there, and writes stay in this copy.
				exec(ctx, t, url, fmt.Sprintf(`INSERT INTO things VALUES (%d)`, i+100))
				c, err := pgx.Connect(ctx, url)
				require.NoError(t, err)
				defer func() { require.NoError(t, c.Close(ctx)) }()
				var n int
				require.NoError(t, c.QueryRow(ctx, `SELECT count(*) FROM things`).Scan(&n))
				assert.Equal(t, 2, n)
			})
		}
	})
	assert.EqualValues(t, 1, migrations.Load(), "template migrated once")
	count := 0
	dbs.Range(func(k, _ any) bool {
		count++
		assert.False(t, dbExists(ctx, t, k.(string)), "database %s dropped in cleanup", k)
		return true
	})
	assert.Equal(t, 4, count, "each test had its own database")

	// Drop this run's template so repeated runs don't pile them up.
	c, err := pgx.Connect(ctx, testpg.PostgresURL())
	require.NoError(t, err)
	defer func() { require.NoError(t, c.Close(ctx)) }()
	rows, err := c.Query(ctx, `SELECT datname FROM pg_database WHERE datname LIKE 'tpl_testpg_selftest_' || $1 || '%'`, fmt.Sprint(os.Getpid()))
	require.NoError(t, err)
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	require.Len(t, names, 1)
	for _, n := range names {
		_, err := c.Exec(ctx, fmt.Sprintf(`ALTER DATABASE %q WITH IS_TEMPLATE false`, n))
		require.NoError(t, err)
		_, err = c.Exec(ctx, fmt.Sprintf(`DROP DATABASE %q WITH (FORCE)`, n))
		require.NoError(t, err)
	}
}

func TestFailedMigrationLeavesNoTemplate(t *testing.T) {
	t.Parallel()
	// New calls t.Fatal on a failed migration; run it on a stub TB to observe it.
	name := fmt.Sprintf("testpg_fail_%d_%d", os.Getpid(), time.Now().UnixNano())
	ft := &fatalTB{TB: t}
	done := make(chan struct{})
	go func() {
		defer close(done)
		testpg.New(ft, name, func(context.Context, string) error { return fmt.Errorf("boom") })
	}()
	<-done
	require.True(t, ft.fatal.Load())
	assert.Contains(t, ft.msg, "boom")

	c, err := pgx.Connect(context.Background(), testpg.PostgresURL())
	require.NoError(t, err)
	defer func() { require.NoError(t, c.Close(context.Background())) }()
	var n int
	require.NoError(t, c.QueryRow(context.Background(),
		`SELECT count(*) FROM pg_database WHERE datname LIKE 'tpl_testpg_fail_' || $1 || '%' AND datname NOT LIKE '%\_b'`, fmt.Sprint(os.Getpid())).Scan(&n))
	assert.Zero(t, n, "no template published")
	// Remove the half-built database.
	rows, err := c.Query(context.Background(), `SELECT datname FROM pg_database WHERE datname LIKE 'tpl_testpg_fail_' || $1 || '%'`, fmt.Sprint(os.Getpid()))
	require.NoError(t, err)
	names, err := pgx.CollectRows(rows, pgx.RowTo[string])
	require.NoError(t, err)
	for _, n := range names {
		_, err := c.Exec(context.Background(), fmt.Sprintf(`DROP DATABASE %q WITH (FORCE)`, n))
		require.NoError(t, err)
	}
}

// fatalTB records Fatalf and stops the calling goroutine like testing does.
type fatalTB struct {
	testing.TB
	fatal atomic.Bool
	msg   string
}

func (f *fatalTB) Helper() {}

func (f *fatalTB) Fatalf(format string, args ...any) {
	f.msg = fmt.Sprintf(format, args...)
	f.fatal.Store(true)
	runtime.Goexit()
}

func TestNewRedis(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	var url, prefix string
	t.Run("inner", func(t *testing.T) {
		url, prefix = testpg.NewRedis(t)
		require.Regexp(t, `^test:[0-9a-f]{16}:$`, prefix)
		opts, err := redis.ParseURL(url)
		require.NoError(t, err)
		c := redis.NewClient(opts)
		defer func() { require.NoError(t, c.Close()) }()
		for i := range 1200 {
			require.NoError(t, c.Set(ctx, fmt.Sprintf("%skey:%d", prefix, i), "v", time.Minute).Err())
		}
		// A key outside the prefix must survive cleanup.
		require.NoError(t, c.Set(ctx, "other:"+prefix, "v", time.Minute).Err())
	})
	opts, err := redis.ParseURL(url)
	require.NoError(t, err)
	c := redis.NewClient(opts)
	defer func() { require.NoError(t, c.Close()) }()
	keys, err := c.Keys(ctx, prefix+"*").Result()
	require.NoError(t, err)
	assert.Empty(t, keys, "prefix keys deleted in cleanup")
	n, err := c.Exists(ctx, "other:"+prefix).Result()
	require.NoError(t, err)
	assert.EqualValues(t, 1, n)
	require.NoError(t, c.Del(ctx, "other:"+prefix).Err())
}
