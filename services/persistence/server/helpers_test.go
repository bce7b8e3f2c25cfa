package server_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/timestamppb"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	"github.com/biobridge/bridge/pkg/testpg"
	"github.com/biobridge/bridge/services/persistence/server"
)

const (
	ingestToken = "ingest-secret-token"
	agentToken  = "agent-secret-token"
)

// env is one running persistence server with its own database and Redis
// key prefix.
type env struct {
	t           *testing.T
	srv         *server.Server
	cfg         server.Config
	pgURL       string
	rdb         *redis.Client
	prefix      string
	persistence persistencev1.PersistenceServiceClient
	biometrics  biometricsv1.BiometricsServiceClient
	conn        *grpc.ClientConn
	db          *pgxpool.Pool
	cancel      context.CancelFunc
	done        chan error
}

type option func(*server.Config)

func newDatabase(t *testing.T) string {
	t.Helper()
	return testpg.New(t, "persistence-"+server.MigrationsVersion, server.Migrate)
}

func start(t *testing.T, opts ...option) *env {
	t.Helper()
	pgURL := newDatabase(t)
	redisURL, prefix := testpg.NewRedis(t)
	cfg := server.Config{
		GRPCAddr:           "127.0.0.1:0",
		AdminAddr:          "127.0.0.1:0",
		PostgresURL:        pgURL,
		RedisURL:           redisURL,
		RedisKeyPrefix:     prefix,
		ServiceTokens:      "ingest:" + ingestToken + ",agent:" + agentToken,
		AuditFlushInterval: 20 * time.Millisecond,
	}
	for _, o := range opts {
		o(&cfg)
	}
	return startWith(t, cfg)
}

func startWith(t *testing.T, cfg server.Config) *env {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, cfg, testLogger(t))
	require.NoError(t, err)
	e := &env{t: t, srv: srv, cfg: cfg, pgURL: cfg.PostgresURL, prefix: cfg.RedisKeyPrefix, cancel: cancel, done: make(chan error, 1)}
	go func() { e.done <- srv.Serve(ctx) }()
	t.Cleanup(e.stop)

	conn, err := grpc.NewClient(srv.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	e.conn = conn
	e.persistence = persistencev1.NewPersistenceServiceClient(conn)
	e.biometrics = biometricsv1.NewBiometricsServiceClient(conn)

	if strings.HasPrefix(cfg.RedisURL, "redis://127.0.0.1:6379") {
		opts, err := redis.ParseURL(cfg.RedisURL)
		require.NoError(t, err)
		e.rdb = redis.NewClient(opts)
		t.Cleanup(func() { _ = e.rdb.Close() })
	}
	sep := "?"
	if strings.Contains(cfg.PostgresURL, "?") {
		sep = "&"
	}
	pool, err := pgxpool.New(context.Background(), cfg.PostgresURL+sep+"search_path=biometrics")
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	e.db = pool
	return e
}

// stop shuts the server down and checks it stopped cleanly and lost no
// audit entry.
func (e *env) stop() {
	if e.cancel == nil {
		return
	}
	e.cancel()
	e.cancel = nil
	select {
	case err := <-e.done:
		require.NoError(e.t, err)
	case <-time.After(30 * time.Second):
		e.t.Error("server did not stop")
	}
	require.Zero(e.t, counter(e.t, e.srv.Registry(), "biobridge_persistence_audit_dropped_total"), "audit entries dropped")
}

func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("TEST_VERBOSE_LOGS") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.DiscardHandler)
}

func withToken(ctx context.Context, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

func (e *env) ingestCtx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	e.t.Cleanup(cancel)
	return withToken(ctx, ingestToken)
}

func (e *env) agentCtx() context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	e.t.Cleanup(cancel)
	return withToken(ctx, agentToken)
}

var userSeq atomic.Int64

func newUser() string {
	return fmt.Sprintf("user-%d-%d", time.Now().UnixNano(), userSeq.Add(1))
}

func ts(t time.Time) *timestamppb.Timestamp { return timestamppb.New(t) }

func reading(metric string, v float64, at time.Time) *biometricsv1.Reading {
	return &biometricsv1.Reading{Metric: metric, Value: v, ObservedAt: ts(at)}
}

func event(user, recordID string, rs ...*biometricsv1.Reading) *persistencev1.EventInput {
	return &persistencev1.EventInput{
		UserId: user, Source: biometricsv1.Source_SOURCE_HEALTHKIT, Kind: "sample",
		VendorRecordId: recordID, Readings: rs,
	}
}

func (e *env) write(evs ...*persistencev1.EventInput) []*persistencev1.WriteResult {
	e.t.Helper()
	resp, err := e.persistence.WriteEvents(e.ingestCtx(), &persistencev1.WriteEventsRequest{Events: evs})
	require.NoError(e.t, err)
	require.Len(e.t, resp.GetResults(), len(evs))
	return resp.GetResults()
}

func (e *env) count(q string, args ...any) int {
	e.t.Helper()
	var n int
	require.NoError(e.t, e.db.QueryRow(context.Background(), q, args...).Scan(&n))
	return n
}

// counter sums a counter (all label values) from reg.
func counter(t *testing.T, reg *prometheus.Registry, name string, labels ...string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if !hasLabels(m, labels) {
				continue
			}
			if c := m.GetCounter(); c != nil {
				sum += c.GetValue()
			}
			if g := m.GetGauge(); g != nil {
				sum += g.GetValue()
			}
			if h := m.GetHistogram(); h != nil {
				sum += float64(h.GetSampleCount())
			}
		}
	}
	return sum
}

func hasLabels(m *dto.Metric, kv []string) bool {
	for i := 0; i+1 < len(kv); i += 2 {
		found := false
		for _, l := range m.GetLabel() {
			if l.GetName() == kv[i] && l.GetValue() == kv[i+1] {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

func (e *env) latest(user string, metrics ...string) map[string]*biometricsv1.LatestValue {
	e.t.Helper()
	resp, err := e.biometrics.GetLatest(e.agentCtx(), &biometricsv1.GetLatestRequest{UserId: user, Metrics: metrics})
	require.NoError(e.t, err)
	out := map[string]*biometricsv1.LatestValue{}
	for _, v := range resp.GetValues() {
		out[v.GetMetric()] = v
	}
	return out
}

// leaseAll leases and acks everything in the outbox.
func (e *env) drainOutbox() []*persistencev1.OutboxEntry {
	e.t.Helper()
	var all []*persistencev1.OutboxEntry
	for {
		resp, err := e.persistence.LeaseOutbox(e.ingestCtx(), &persistencev1.LeaseOutboxRequest{Holder: "test", MaxEntries: 1000})
		require.NoError(e.t, err)
		if len(resp.GetEntries()) == 0 {
			return all
		}
		ids := make([]int64, len(resp.GetEntries()))
		for i, en := range resp.GetEntries() {
			ids[i] = en.GetId()
		}
		ack, err := e.persistence.AckOutbox(e.ingestCtx(), &persistencev1.AckOutboxRequest{LeaseToken: resp.GetLeaseToken(), Ids: ids})
		require.NoError(e.t, err)
		require.EqualValues(e.t, len(ids), ack.GetAcked())
		all = append(all, resp.GetEntries()...)
	}
}

func delRequest(user string, ids ...string) *persistencev1.DeleteRecordsRequest {
	req := &persistencev1.DeleteRecordsRequest{}
	for _, id := range ids {
		req.Records = append(req.Records, &persistencev1.RecordRef{UserId: user, Source: biometricsv1.Source_SOURCE_HEALTHKIT, VendorRecordId: id})
	}
	return req
}
