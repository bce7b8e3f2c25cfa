// Command bench-plot measures throughput and p99 latency against client
// concurrency for the two hot read and write paths, bridge and baseline,
// and draws them on the same axes:
//
//   - HealthKit push: POST /v1/healthkit/samples of 1000-sample pushes
//     through the REST gateway, ingest and persistence of a devstack
//     started in this process (200 = committed), versus pgx CopyFrom of
//     the same rows into a plain table shaped like persistence's readings,
//     one transaction per push;
//   - GetLatest: the agent's GetLatest over gRPC (service token, audit
//     record, Redis, decoding), versus raw HGETALL of the same Redis
//     hashes from go-redis.
//
// It writes <out>/concurrency.svg and .png (four panels) and
// <out>/concurrency.json (the points). The devstack runs on ephemeral loopback ports, a fresh
// PostgreSQL database and a fresh Redis key prefix, both removed at the end.
// `make bench-plot` runs it with -out docs/bench.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/biobridge/bridge/pkg/pgstore"
	"github.com/biobridge/bridge/services/devstack/stack"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args, os.Getenv, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench-plot:", err)
		os.Exit(1)
	}
}

type options struct {
	out         string
	pgURL       string
	redisURL    string
	levels      []int
	pushes      int
	samples     int
	latestFor   time.Duration
	latestUsers int
	nearCache   bool
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) (err error) {
	fs := flag.NewFlagSet("bench-plot", flag.ContinueOnError)
	fs.SetOutput(stdout)
	var o options
	fs.StringVar(&o.out, "out", "docs/bench", "directory for concurrency.svg and concurrency.json")
	fs.StringVar(&o.pgURL, "postgres", firstSet(getenv("TEST_POSTGRES_URL"), getenv("POSTGRES_URL"), "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"),
		"PostgreSQL server URL (a fresh database is created on it and dropped)")
	fs.StringVar(&o.redisURL, "redis", firstSet(getenv("TEST_REDIS_URL"), getenv("REDIS_URL"), "redis://127.0.0.1:6379/0"),
		"Redis URL (a fresh key prefix is used and deleted)")
	levels := fs.String("concurrency", "1,2,4,8,16,32", "client concurrency levels, comma-separated")
	fs.IntVar(&o.pushes, "pushes", 4, "HealthKit pushes per client at each level (at least 16 per level, in 4 turns with the baseline)")
	fs.IntVar(&o.samples, "samples", 1000, "samples per HealthKit push")
	fs.DurationVar(&o.latestFor, "latest-duration", 2*time.Second, "GetLatest load per level and side, in 4 turns with the baseline")
	fs.IntVar(&o.latestUsers, "latest-users", 500, "users GetLatest picks from at random")
	fs.BoolVar(&o.nearCache, "near-cache", true, "run persistence with its per-replica near-cache (the default); -near-cache=false sets LATEST_NEAR_CACHE_ENABLED=false, to compare")
	replot := fs.Bool("replot", false, "draw the plots again from <out>/concurrency.json without measuring")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if *replot {
		b, err := os.ReadFile(filepath.Join(o.out, "concurrency.json"))
		if err != nil {
			return err
		}
		var res results
		if err := json.Unmarshal(b, &res); err != nil {
			return fmt.Errorf("decode concurrency.json: %w", err)
		}
		return writePlots(res, o.out, stdout)
	}
	for _, f := range strings.Split(*levels, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return fmt.Errorf("-concurrency: %q is not a positive number", f)
		}
		o.levels = append(o.levels, n)
	}
	if o.pushes < 1 || o.samples < 1 || o.latestUsers < 1 || o.latestFor <= 0 {
		return errors.New("-pushes, -samples, -latest-users and -latest-duration must be positive")
	}

	dbName := "biobridge_benchplot_" + randomHex(4)
	dbURL, err := pgstore.WithDatabase(o.pgURL, dbName)
	if err != nil {
		return err
	}
	prefix := "benchplot-" + randomHex(4) + ":"
	dataDir, err := os.MkdirTemp("", "bench-plot-")
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, os.RemoveAll(dataDir), cleanup(o.pgURL, dbName, o.redisURL, prefix)) }()

	env := map[string]string{
		"POSTGRES_URL":     dbURL,
		"REDIS_URL":        o.redisURL,
		"REDIS_KEY_PREFIX": prefix,
		"LOG_LEVEL":        "error",
	}
	if !o.nearCache {
		env["LATEST_NEAR_CACHE_ENABLED"] = "false"
	}
	s, err := stack.Start(ctx, stack.Options{
		Getenv:    func(k string) string { return env[k] },
		Ephemeral: true,
		DataDir:   dataDir,
		Logger:    slog.New(slog.DiscardHandler),
	})
	if err != nil {
		return fmt.Errorf("start devstack: %w", err)
	}
	sctx, cancel := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- s.Serve(sctx) }()
	defer func() {
		cancel()
		if serr := <-served; serr != nil && !errors.Is(serr, context.Canceled) {
			err = errors.Join(err, serr)
		}
	}()
	if err := waitReady(ctx, s); err != nil {
		return err
	}

	rdb, err := redisClient(o.redisURL)
	if err != nil {
		return err
	}
	defer func() { _ = rdb.Close() }()

	fmt.Fprintf(stdout, "devstack up (database %s); levels %v\n", dbName, o.levels)
	hk, err := healthKitSeries(ctx, s, dbURL, o, stdout)
	if err != nil {
		return fmt.Errorf("healthkit: %w", err)
	}
	gl, err := latestSeries(ctx, s, rdb, prefix, o, stdout)
	if err != nil {
		return fmt.Errorf("getlatest: %w", err)
	}
	res := results{
		Generated: time.Now().UTC().Format(time.RFC3339),
		Notes: fmt.Sprintf("HealthKit: %d-sample pushes, %d per client per level (at least 16), through the REST gateway of an in-process devstack, "+
			"versus pgx CopyFrom of the same rows, one transaction per push; GetLatest: %s per level and side, random user of %d "+
			"(5 metrics each, cache warm), gRPC with the agent's service token versus raw HGETALL of the same hashes; "+
			"at each level bridge and baseline take 4 turns each, alternating",
			o.samples, o.pushes, o.latestFor, o.latestUsers),
		HealthKit: hk, GetLatest: gl,
	}
	if err := os.MkdirAll(o.out, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(o.out, "concurrency.json"), append(b, '\n'), 0o644); err != nil {
		return err
	}
	return writePlots(res, o.out, stdout)
}

func writePlots(res results, dir string, stdout io.Writer) error {
	for _, name := range []string{"concurrency.svg", "concurrency.png"} {
		if err := drawPanels(res, filepath.Join(dir, name)); err != nil {
			return err
		}
	}
	fmt.Fprintf(stdout, "wrote concurrency.svg, concurrency.png and concurrency.json in %s\n", dir)
	return nil
}

// results is what concurrency.json holds.
type results struct {
	Generated string   `json:"generated"`
	Notes     string   `json:"notes"`
	HealthKit []series `json:"healthkit"`
	GetLatest []series `json:"getlatest"`
}

// series is one side (bridge or baseline) of one path.
type series struct {
	Name   string  `json:"name"`
	Unit   string  `json:"unit"`
	Points []point `json:"points"`
}

type point struct {
	Concurrency int     `json:"concurrency"`
	Throughput  float64 `json:"throughput"`
	P99ms       float64 `json:"p99_ms"`
	Ops         int     `json:"ops"`
}

func waitReady(ctx context.Context, s *stack.Stack) error {
	deadline := time.Now().Add(time.Minute)
	for {
		err := stack.HealthCheck(ctx, s.Env)
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("devstack not ready: %w", err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func redisClient(url string) (*redis.Client, error) {
	opt, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("redis url: %w", err)
	}
	return redis.NewClient(opt), nil
}

// cleanup drops the database and deletes the key prefix.
func cleanup(pgURL, dbName, redisURL, prefix string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	if conn, err := pgx.Connect(ctx, pgURL); err != nil {
		errs = append(errs, err)
	} else {
		_, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{dbName}.Sanitize()+" WITH (FORCE)")
		errs = append(errs, err, conn.Close(ctx))
	}
	rdb, err := redisClient(redisURL)
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	defer func() { _ = rdb.Close() }()
	iter := rdb.Scan(ctx, 0, prefix+"*", 1000).Iterator()
	for iter.Next(ctx) {
		errs = append(errs, rdb.Unlink(ctx, iter.Val()).Err())
	}
	errs = append(errs, iter.Err())
	return errors.Join(errs...)
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func firstSet(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}
