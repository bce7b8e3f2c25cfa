// Command persistence-bench measures the persistence service against the
// real PostgreSQL and Redis and writes the results with pkg/benchreport
// (`make bench` merges them into BENCHMARKS.md and benchmarks.json).
//
// It creates a fresh database, starts the real server on loopback ports
// (and a second one with group commit disabled, for the baseline), drives
// them through the generated gRPC clients, and drops the database at the
// end. Every result is compared with a baseline measured in the same run:
//
//   - persistence.bulk_write_readings_per_s: bulk WriteEvents vs a raw pgx
//     CopyFrom of the same rows into an equivalent table;
//   - persistence.group_commit_events_per_s: single-event WriteEvents from
//     64 concurrent callers, group commit on vs one transaction per event;
//   - biometrics.get_latest_rps and biometrics.get_latest_p99_ms: GetLatest
//     over gRPC vs raw Redis HGETALL round trips at the same concurrency.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"runtime/pprof"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/biobridge/bridge/pkg/benchreport"
	"github.com/biobridge/bridge/pkg/pgstore"
	"github.com/biobridge/bridge/pkg/service"
	"github.com/biobridge/bridge/services/persistence/server"
)

func main() { service.ExecFunc(run) }

const benchToken = "bench-token"

type options struct {
	out      string
	duration time.Duration
	pgURL    string
	redisURL string
	// near runs persistence with its near-cache on (the default).
	near bool
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) (err error) {
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	fs.SetOutput(stdout)
	opts := options{}
	fs.StringVar(&opts.out, "out", ".bench", "directory for the results file")
	fs.DurationVar(&opts.duration, "duration", 4*time.Second, "how long each measurement (and each baseline) runs")
	cpuProfile := fs.String("cpuprofile", "", "write a CPU profile of the whole run to this file")
	only := fs.String("only", "", "run only this measurement (bulk, group, latest)")
	fs.BoolVar(&opts.near, "near-cache", true, "run persistence with its per-replica near-cache (the default); -near-cache=false sets LATEST_NEAR_CACHE_ENABLED=false, every GetLatest reading Redis, to compare")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	opts.pgURL = getenv("POSTGRES_URL")
	if opts.pgURL == "" {
		opts.pgURL = "postgres://postgres@127.0.0.1:5432/postgres"
	}
	opts.redisURL = getenv("REDIS_URL")
	if opts.redisURL == "" {
		opts.redisURL = "redis://127.0.0.1:6379/0"
	}

	suffix := randomHex(4)
	dbName := "persistence_bench_" + suffix
	dbURL, err := pgstore.WithDatabase(opts.pgURL, dbName)
	if err != nil {
		return fmt.Errorf("POSTGRES_URL: %w", err)
	}
	if err := pgstore.EnsureDatabase(ctx, dbURL); err != nil {
		return err
	}
	defer func() {
		if derr := dropDatabase(opts.pgURL, dbName); derr != nil && err == nil {
			err = derr
		}
	}()

	logger := slog.New(slog.DiscardHandler)
	base := server.Config{
		GRPCAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		PostgresURL: dbURL, RedisURL: opts.redisURL, RedisKeyPrefix: "bench:" + suffix + ":",
		ServiceTokens:      "bench:" + benchToken,
		LatestNearCacheOff: !opts.near,
	}
	b, err := newBench(ctx, base, logger, opts)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := b.close(); cerr != nil && err == nil {
			err = cerr
		}
	}()

	if *cpuProfile != "" {
		f, err := os.Create(*cpuProfile)
		if err != nil {
			return err
		}
		defer func() { _ = f.Close() }()
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer pprof.StopCPUProfile()
	}
	fmt.Fprintf(stdout, "persistence-bench: %d CPUs, %s per measurement\n", runtime.NumCPU(), opts.duration)
	var results []benchreport.Result
	measurements := []struct {
		name string
		fn   func(context.Context) ([]benchreport.Result, error)
	}{{"bulk", b.bulkWrite}, {"group", b.groupCommit}, {"latest", b.getLatest}}
	for _, m := range measurements {
		if *only != "" && *only != m.name {
			continue
		}
		rs, err := m.fn(ctx)
		if err != nil {
			return err
		}
		for _, r := range rs {
			fmt.Fprintf(stdout, "%-42s %12.1f %-10s baseline %12.1f  ratio %.2f\n", r.Name, r.Value, r.Unit, r.Baseline, r.Ratio)
		}
		results = append(results, rs...)
	}
	return benchreport.SaveGroup(opts.out, benchreport.Group{
		Group: "persistence",
		Method: "cmd/persistence-bench: the real persistence server on loopback (fresh database, shared PostgreSQL 15 and Redis 7), " +
			"driven through its gRPC API from the same process; each baseline is measured in the same run on the same machine.",
		Results: results,
	})
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func dropDatabase(adminURL, name string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, adminURL)
	if err != nil {
		return fmt.Errorf("drop bench database: %w", err)
	}
	defer func() { _ = conn.Close(context.Background()) }()
	if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
		return fmt.Errorf("drop bench database: %w", err)
	}
	return nil
}

var errStopped = errors.New("benchmark interrupted")
