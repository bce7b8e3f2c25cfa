// Command ingest-bench measures the ingest service through the real REST
// gateway, with persistence behind it on its own port, against a baseline
// measured in the same run on the same machine:
//
//   - ingest.healthkit_readings_per_s: 1,000-sample HealthKit pushes until
//     committed, versus pgx CopyFrom of the same rows into an equivalent
//     table.
//   - ingest.webhook_accept_per_s and ingest.webhook_accept_p99_ms: signed
//     WHOOP webhooks from 64 concurrent senders until acknowledged (each
//     one committed to the job queue, concurrent ones sharing group-commit
//     transactions), versus one PostgreSQL transaction per webhook into an
//     equivalent table.
//
// -only runs a subset (healthkit, webhooks, freshness); -cpuprofile writes
// a CPU profile of each measurement's bridge phase (not its baseline).
//   - ingest.freshness_p99_ms: a WHOOP workout created at the emulator
//     until GetLatest shows it, versus the same fetch and write done
//     synchronously by the sender.
//
// It creates and drops its own database and Redis key prefix and writes
// <out>/ingest.json for `make bench`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strings"
	"time"

	"github.com/biobridge/bridge/pkg/benchreport"
	"github.com/biobridge/bridge/pkg/service"
	ingest "github.com/biobridge/bridge/services/ingest/server"
)

func main() { service.ExecFunc(run) }

type options struct {
	out      string
	pgURL    string
	redisURL string

	hkPushes  int
	hkSize    int
	hkWorkers int

	webhooks  int
	senders   int
	freshness int

	// cpuProfile, when set, is the prefix of one CPU profile per
	// measurement (<prefix>.healthkit, <prefix>.webhooks), each covering
	// only the bridge phase, not the baseline.
	cpuProfile string
	only       map[string]bool
}

// selected reports whether the measurement runs (-only empty: all).
func (o options) selected(name string) bool { return len(o.only) == 0 || o.only[name] }

// profile starts a CPU profile of one measurement's bridge phase; the
// returned function stops it. With no -cpuprofile it does nothing.
func (o options) profile(name string) (stop func() error, err error) {
	if o.cpuProfile == "" {
		return func() error { return nil }, nil
	}
	f, err := os.Create(o.cpuProfile + "." + name)
	if err != nil {
		return nil, err
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		return nil, errors.Join(err, f.Close())
	}
	return func() error {
		pprof.StopCPUProfile()
		return f.Close()
	}, nil
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) (err error) {
	fs := flag.NewFlagSet("ingest-bench", flag.ContinueOnError)
	fs.SetOutput(stdout)
	var o options
	fs.StringVar(&o.out, "out", ".bench", "directory for the results file")
	fs.StringVar(&o.pgURL, "postgres", firstSet(getenv("TEST_POSTGRES_URL"), getenv("POSTGRES_URL"), "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"),
		"PostgreSQL server URL (a fresh database is created on it and dropped)")
	fs.StringVar(&o.redisURL, "redis", firstSet(getenv("TEST_REDIS_URL"), getenv("REDIS_URL"), "redis://127.0.0.1:6379/0"),
		"Redis URL (a fresh key prefix is used and deleted)")
	fs.IntVar(&o.hkPushes, "healthkit-pushes", 40, "HealthKit pushes")
	fs.IntVar(&o.hkSize, "healthkit-samples", 1000, "samples per HealthKit push")
	fs.IntVar(&o.hkWorkers, "healthkit-clients", 4, "concurrent HealthKit clients")
	fs.IntVar(&o.webhooks, "webhooks", 6400, "WHOOP webhooks to send")
	fs.IntVar(&o.senders, "senders", 64, "concurrent webhook senders")
	fs.IntVar(&o.freshness, "freshness-records", 200, "records timed for freshness (0 skips it)")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of each measurement's bridge phase to <this>.<measurement>")
	only := fs.String("only", "", "run only these measurements, comma-separated (healthkit, webhooks, freshness)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if o.hkPushes < 1 || o.hkSize < 1 || o.hkWorkers < 1 || o.webhooks < 1 || o.senders < 1 {
		return errors.New("-healthkit-pushes, -healthkit-samples, -healthkit-clients, -webhooks and -senders must be positive")
	}
	if *only != "" {
		o.only = map[string]bool{}
		for _, name := range strings.Split(*only, ",") {
			switch name {
			case "healthkit", "webhooks", "freshness":
				o.only[name] = true
			default:
				return fmt.Errorf("-only: unknown measurement %q", name)
			}
		}
	}

	// One fetch worker whose every job fails fast and waits an hour: the
	// webhook numbers measure the acceptance path, not the workers
	// competing with it for the machine's two cores.
	s, err := startStack(ctx, o, stackConfig{ingest: func(c *ingest.Config) {
		c.Workers, c.RetryBase, c.RetryMax = 1, time.Hour, time.Hour
	}})
	if err != nil {
		return err
	}
	defer func() { err = errors.Join(err, s.close()) }()

	// The peak resident set size is measured over the HealthKit and webhook
	// runs (see peakRSS).
	peakReset := resetPeakRSS() == nil
	var results []benchreport.Result
	if o.selected("healthkit") {
		hk, err := benchHealthKit(ctx, s, o)
		if err != nil {
			return fmt.Errorf("healthkit benchmark: %w", err)
		}
		results = append(results, hk...)
	}
	if o.selected("webhooks") {
		wh, err := benchWebhookAccept(ctx, s, o)
		if err != nil {
			return fmt.Errorf("webhook benchmark: %w", err)
		}
		results = append(results, wh...)
	}
	if o.selected("healthkit") || o.selected("webhooks") {
		r, err := peakRSS(o, peakReset)
		if err != nil {
			return err
		}
		results = append(results, r)
	}
	if o.freshness > 0 && o.selected("freshness") {
		fr, err := runFreshness(ctx, o)
		if err != nil {
			return fmt.Errorf("freshness benchmark: %w", err)
		}
		results = append(results, fr...)
	}

	for _, r := range results {
		fmt.Fprintf(stdout, "%s = %.1f %s (baseline %.1f, ratio %.2f) %s\n", r.Name, r.Value, r.Unit, r.Baseline, r.Ratio, r.Notes)
	}
	return benchreport.SaveGroup(o.out, benchreport.Group{
		Group: "ingest",
		Method: "Everything runs in this process on loopback ports: the REST gateway, ingest and persistence with real gRPC hops, " +
			"on a fresh PostgreSQL database and Redis key prefix. Each value is compared with a baseline measured in the same run: " +
			"HealthKit pushes (synchronous, 200 = committed) against pgx CopyFrom of the same rows into an equivalent table; " +
			"webhook acceptance (HTTP through the gateway, signature check, group commit of the deduplicated job, 200) against one INSERT " +
			"transaction per webhook into a copy of the job table. Fetch workers are held to one during the webhook run. " +
			"Freshness runs on a second stack with the vendor emulator (no added latency, no rate limit) and the token broker, " +
			"against the same fetch, normalization and WriteEvents done synchronously by the sender. " +
			"devstack.peak_rss_mib is this process's peak resident set size (VmHWM) over the HealthKit and webhook runs.",
		Results: results,
	})
}

// peakRSS is the process's peak resident set size over the HealthKit and
// webhook runs: this process is the devstack's services (gateway, ingest,
// persistence in one Go runtime, as the devstack runs them) plus the load
// generators and the baselines' pools, so it is an upper bound of the
// services' own peak.
func peakRSS(o options, sinceReset bool) (benchreport.Result, error) {
	mib, err := peakRSSMiB()
	if err != nil {
		return benchreport.Result{}, fmt.Errorf("peak RSS: %w", err)
	}
	var runs []string
	if o.selected("healthkit") {
		runs = append(runs, fmt.Sprintf("%d HealthKit pushes of %d samples from %d clients", o.hkPushes, o.hkSize, o.hkWorkers))
	}
	if o.selected("webhooks") {
		runs = append(runs, fmt.Sprintf("%d webhooks from %d senders", o.webhooks, o.senders))
	}
	since := "since the start of the process"
	if sinceReset {
		since = "reset (clear_refs) once the stack was up, so start-up migrations do not count"
	}
	notes := fmt.Sprintf("VmHWM of the ingest-bench process (/proc/self/status) over %s: gateway, ingest and persistence "+
		"in one Go runtime as the devstack runs them, plus the load generators, the baselines and their pools, so an upper "+
		"bound of the services' own peak; peak %s; baseline = the goal of %d MiB",
		strings.Join(runs, " and "), since, peakRSSGoalMiB)
	return benchreport.Lower("devstack.peak_rss_mib", "MiB", mib, peakRSSGoalMiB, notes), nil
}

// runFreshness runs on a stack of its own: with the emulator, the token
// broker and the default number of fetch workers.
func runFreshness(ctx context.Context, o options) (_ []benchreport.Result, err error) {
	// The emulator runs without rate limits here and so does ingest's
	// budget: this measures latency, not throttling.
	s, err := startStack(ctx, o, stackConfig{vendors: true, ingest: func(c *ingest.Config) {
		c.WhoopRateLimit, c.WhoopDailyLimit = 1_000_000, 0
	}})
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, s.close()) }()
	return benchFreshness(ctx, s, o)
}

func firstSet(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}
