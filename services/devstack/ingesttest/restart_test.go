package ingesttest

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/biobridge/bridge/emulator"
	"github.com/biobridge/bridge/services/ingest/server"
)

// childEnv marks the test binary re-run as a plain ingest process, so a
// test can kill it with SIGKILL: no deferred cleanup, no graceful release
// of leases, exactly like a crashed pod.
const childEnv = "INGEST_TEST_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) == "1" {
		os.Exit(runChild())
	}
	os.Exit(m.Run())
}

func runChild() int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	cfg, err := server.LoadConfig(os.Getenv)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if crashAfter := os.Getenv(crashStepEnv); crashAfter != "" {
		// Die the hard way right after the named erasure step is
		// recorded: no deferred code runs, nothing is released.
		cfg.ErasureAfterStep = func(step string) error {
			if step == crashAfter {
				_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
			}
			return nil
		}
	}
	if err := server.Run(ctx, cfg, cfg.Common.Logger(os.Stderr, "ingest-child")); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// childEnvironment turns the test's ingest config into the variables the
// binary reads.
func childEnvironment(c server.Config) []string {
	vars := map[string]string{
		childEnv:               "1",
		"INGEST_GRPC_ADDR":     c.GRPCAddr,
		"INGEST_ADMIN_ADDR":    "127.0.0.1:0",
		"PERSISTENCE_TARGET":   c.PersistenceTarget,
		"TOKENBROKER_TARGET":   c.TokenBrokerTarget,
		"POSTGRES_URL":         c.PostgresURL,
		"REDIS_URL":            c.RedisURL,
		"REDIS_KEY_PREFIX":     c.RedisKeyPrefix,
		"SERVICE_TOKEN":        c.ServiceToken,
		"SERVICE_TOKENS":       c.ServiceTokens,
		"SERVICE_ACL":          "ops=/biobridge.ingest.v1.IngestService/*",
		"USER_TOKEN_SECRET":    string(c.UserTokenSecret),
		"WHOOP_CLIENT_SECRET":  string(c.WhoopClientSecret),
		"OURA_CLIENT_SECRET":   string(c.OuraClientSecret),
		"WHOOP_API_URL":        c.WhoopAPIURL,
		"OURA_API_URL":         c.OuraAPIURL,
		"INGEST_WORKERS":       strconv.Itoa(c.Workers),
		"INGEST_JOB_LEASE":     c.JobLease.String(),
		"INGEST_POLL_INTERVAL": c.PollInterval.String(),
		"INGEST_RETRY_BASE":    c.RetryBase.String(),
		"INGEST_RETRY_MAX":     c.RetryMax.String(),
		"LOG_PSEUDONYM_KEY":    pseudonymKey,
		"LOG_LEVEL":            "warn",
		"LOG_FORMAT":           "text",
	}
	out := []string{"PATH=" + os.Getenv("PATH")}
	for k, v := range vars {
		out = append(out, k+"="+v)
	}
	return out
}

// Ingest is killed (SIGKILL) while jobs are in flight and started again:
// the dead process's leases expire, the new one finishes every job, and
// persistence holds each record exactly once.
func TestKilledWithJobsInFlight(t *testing.T) {
	t.Parallel()
	e := newEnv(t, options{externalIngest: true, ingest: func(c *server.Config) {
		c.JobLease = 2 * time.Second
		c.Workers = 4
	}})
	child := exec.Command(os.Args[0], "-test.run=^$")
	child.Env = childEnvironment(e.ingestCfg)
	child.Stdout, child.Stderr = t.Output(), t.Output()
	require.NoError(t, child.Start())
	killed := false
	t.Cleanup(func() {
		if !killed {
			_ = child.Process.Kill()
			_ = child.Wait()
		}
	})
	health := healthpb.NewHealthClient(dial(t, e.ingestAddr))
	require.Eventually(t, func() bool {
		resp, err := health.Check(context.Background(), &healthpb.HealthCheckRequest{})
		return err == nil && resp.GetStatus() == healthpb.HealthCheckResponse_SERVING
	}, 30*time.Second, 50*time.Millisecond, "the child ingest starts")

	ctx := context.Background()
	e.connect("user-k", "whoop", "kim")
	// Slow vendor: jobs stay in flight long enough to be cut; a recovery
	// (two calls) outlives the lease, which its holder keeps renewing.
	require.NoError(t, e.emu.SetFaults(emulator.Faults{Latency: 1500 * time.Millisecond}))
	want := map[string]float64{}
	for n := range 4 {
		start, end := night(100 - 24*n)
		_, err := e.emu.CreateRecord(ctx, emulator.RecordSpec{User: "kim", Vendor: emulator.Whoop, Type: "sleep", Start: start, End: end,
			Values: map[string]float64{"recovery_score": float64(50 + n), "sleep_performance_percentage": float64(70 + n)}})
		require.NoError(t, err)
		want = map[string]float64{"recovery_score": float64(50 + n), "sleep_score": float64(70 + n)}
	}
	e.waitWebhooks()
	require.Equal(t, int64(8), e.emu.Counters().Whoop.WebhooksDelivered, "all acknowledged before the crash")
	require.Eventually(t, func() bool { return e.jobCounts()["running"] >= 3 }, 20*time.Second, 20*time.Millisecond,
		"jobs are in flight: %v", e.jobCounts())

	require.NoError(t, child.Process.Kill())
	_ = child.Wait()
	killed = true
	inFlight := e.jobCounts()["running"]
	require.Positive(t, inFlight, "the crash left leased jobs behind")

	require.NoError(t, e.emu.SetFaults(emulator.Faults{}))
	e.startIngest()
	e.waitLatest("user-k", want, 30*time.Second)
	e.waitJobsSettled(20 * time.Second)
	assert.Equal(t, map[string]int{"done": 8}, e.jobCounts(), "every job completed")
	assertOneVersionPerRecord(t, e, 8)
	var retaken int
	require.NoError(t, e.db.QueryRow(ctx, `SELECT count(*) FROM ingest.jobs WHERE attempts >= 2`).Scan(&retaken))
	assert.GreaterOrEqual(t, retaken, inFlight, "the jobs the crash interrupted were taken over after their leases expired")
}
