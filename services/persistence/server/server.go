// Package server runs the persistence service: PersistenceService (writes,
// deletions and the outbox, for ingest and the publisher) and
// BiometricsService (audited reads for agents) on one gRPC port, plus the
// admin port. It owns the PostgreSQL schema "biometrics" and the latest-value
// keys in Redis.
//
// Tests of other modules start it like this:
//
//	url := testpg.New(t, "persistence-"+server.MigrationsVersion, server.Migrate)
//	srv, err := server.New(ctx, server.Config{GRPCAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
//		PostgresURL: url, ServiceTokens: "ingest:secret"}, logger)
//	go srv.Serve(ctx)
//	conn := grpc.NewClient(srv.GRPCAddr(), ...)
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	"github.com/biobridge/bridge/pkg/admin"
	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/pkg/groupcommit"
	"github.com/biobridge/bridge/pkg/grpcserver"
	"github.com/biobridge/bridge/pkg/limiter"
	"github.com/biobridge/bridge/pkg/logging"
	"github.com/biobridge/bridge/pkg/telemetry"
	"github.com/biobridge/bridge/services/persistence/internal/api"
	"github.com/biobridge/bridge/services/persistence/internal/audit"
	"github.com/biobridge/bridge/services/persistence/internal/latestcache"
	"github.com/biobridge/bridge/services/persistence/internal/metrics"
	"github.com/biobridge/bridge/services/persistence/internal/store"
)

// ServiceName names the service in logs and traces.
const ServiceName = "persistence"

// MigrationsVersion identifies the embedded migrations (a hash of the
// files). Use it in test template names:
// testpg.New(t, "persistence-"+server.MigrationsVersion, server.Migrate).
var MigrationsVersion = store.MigrationsVersion

// Migrate applies the persistence migrations to the database at url and
// creates the current time partitions. Several processes may call it at
// once (golang-migrate holds an advisory lock).
func Migrate(ctx context.Context, url string) error {
	return store.Migrate(ctx, url, DefaultPartitionMonthsAhead)
}

// Server is a running persistence service.
type Server struct {
	cfg       Config
	logger    *slog.Logger
	reg       *prometheus.Registry
	m         *metrics.Metrics
	store     *store.Store
	rdb       redis.UniversalClient
	latest    *latestcache.Latest
	near      *latestcache.Near // nil: near-cache off
	audit     *audit.Writer
	committer *groupcommit.Committer[store.Op, store.OpResult]
	notifier  *store.Notifier
	grpc      *grpcserver.Server
	admin     *admin.Server

	stopping     chan struct{}
	stopOnce     sync.Once
	closeStorage sync.Once
}

// New checks cfg with Validate (its zero fields given LoadConfig's
// defaults first), connects to PostgreSQL (migrating the schema) and
// Redis, and binds both ports. Redis being down does not stop the service from starting:
// reads and writes then run on PostgreSQL alone and the cache is rebuilt
// once Redis is back.
func New(ctx context.Context, cfg Config, logger *slog.Logger) (_ *Server, err error) {
	cfg.setDefaults()
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("persistence: invalid configuration:\n%w", err)
	}
	tokens, err := auth.ParseServiceTokens(cfg.ServiceTokens)
	if err != nil {
		return nil, fmt.Errorf("persistence: SERVICE_TOKENS: %w", err)
	}
	acl, err := auth.ParseACL(cfg.ServiceACL)
	if err != nil {
		return nil, fmt.Errorf("persistence: SERVICE_ACL: %w", err)
	}
	s := &Server{cfg: cfg, logger: logger, reg: telemetry.NewRegistry(), stopping: make(chan struct{})}
	if s.m, err = metrics.New(s.reg); err != nil {
		return nil, err
	}
	if err := store.MigrateSchema(ctx, cfg.PostgresURL); err != nil {
		return nil, err
	}
	if s.store, err = store.Open(ctx, cfg.PostgresURL, logger.With("component", "store"), s.m); err != nil {
		return nil, err
	}
	if len(cfg.Common.PseudonymKey) > 0 {
		s.store.SetSubjects(logging.NewPseudonymizer(cfg.Common.PseudonymKey).Pseudonym)
	}
	defer func() {
		if err != nil {
			s.closeStores()
		}
	}()
	if err := s.store.EnsurePartitions(ctx, time.Now(), cfg.PartitionMonthsAhead); err != nil {
		// Writes still land in the default partitions; maintenance retries.
		s.m.MaintenanceErrors.Inc()
		logger.WarnContext(ctx, "partition maintenance failed at start", "err", err)
	}

	var cache *latestcache.Cache
	if cfg.RedisURL != "" {
		opts, err := redis.ParseURL(cfg.RedisURL)
		if err != nil {
			return nil, fmt.Errorf("persistence: REDIS_URL: %w", err)
		}
		// Short timeouts: a stalled Redis must cost a write milliseconds,
		// not seconds, before the write goes on without the cache.
		opts.DialTimeout = 500 * time.Millisecond
		opts.ReadTimeout = 500 * time.Millisecond
		opts.WriteTimeout = 500 * time.Millisecond
		opts.MaxRetries = 1
		opts.PoolSize = max(opts.PoolSize, 64)
		// RESP2: the cache needs no push notifications, and without them
		// every command skips a check for pending pushes.
		opts.Protocol = 2
		s.rdb = redis.NewClient(opts)
		cache = latestcache.New(s.rdb, cfg.RedisKeyPrefix, cfg.LatestCacheTTL)
		if !cfg.LatestNearCacheOff {
			s.near, err = latestcache.NewNear(latestcache.NearConfig{
				RedisURL: cfg.RedisURL, MaxBytes: cfg.LatestNearCacheMiB << 20,
				TTL: cfg.LatestNearCacheTTL, MaxStale: cfg.LatestNearCacheMaxStaleness,
				OnFlush: s.m.NearFlushes.Inc,
			})
			if err != nil {
				return nil, errors.New("persistence: REDIS_URL: invalid for the near-cache (set LATEST_NEAR_CACHE_ENABLED=false to turn it off)")
			}
			cache.WithNear(s.near, func(result string) { s.m.NearReads.WithLabelValues(result).Inc() })
		}
		if err := cache.Load(ctx); err != nil {
			logger.WarnContext(ctx, "redis unavailable at start, serving from postgres until it returns", "err", err)
		}
	}
	s.latest = latestcache.NewLatest(s.store, cache, s.m, logger.With("component", "latest"))
	s.audit = audit.New(s.store, audit.Config{Buffer: cfg.AuditBuffer, FlushInterval: cfg.AuditFlushInterval}, s.m, logger.With("component", "audit"))
	s.committer = groupcommit.New(groupcommit.Config{
		Window:      cfg.GroupCommitWindow,
		MaxOps:      cfg.GroupCommitMaxEvents,
		Concurrency: cfg.GroupCommitConcurrency,
	}, s.applyAndCache, groupcommit.Metrics{Requests: s.m.GroupRequests, Wait: s.m.GroupWait, Isolations: s.m.GroupIsolations})
	s.notifier = store.NewNotifier()

	lim := limiter.New("persistence_rpcs", cfg.MaxConcurrentRPCs, time.Second, s.reg)
	s.grpc, err = grpcserver.New(grpcserver.Config{Addr: cfg.GRPCAddr, TLS: cfg.TLS, GracePeriod: cfg.GracePeriod},
		grpcserver.Options{
			TracerProvider: cfg.TracerProvider,
			Service:        ServiceName,
			Logger:         logger,
			Registry:       s.reg,
			Auth:           auth.ServiceHook(tokens, acl),
			ACL:            acl,
			ExtraUnary: []grpc.UnaryServerInterceptor{lim.UnaryInterceptor(
				persistencev1.PersistenceService_WriteEvents_FullMethodName,
				persistencev1.PersistenceService_DeleteRecords_FullMethodName,
				biometricsv1.BiometricsService_GetLatest_FullMethodName,
				biometricsv1.BiometricsService_QueryReadings_FullMethodName,
			)},
		})
	if err != nil {
		return nil, err
	}
	persistencev1.RegisterPersistenceServiceServer(s.grpc.Registrar(),
		api.NewPersistence(s.store, s.committer, s.notifier, s.m, logger, s.stopping, cfg.OutboxPollInterval).WithLatest(s.latest))
	biometricsv1.RegisterBiometricsServiceServer(s.grpc.Registrar(),
		api.NewBiometrics(s.store, s.latest, s.audit, s.m, logger, s.stopping, cfg.WatchResyncInterval, cfg.WatchMaxStreams))

	// Redis is deliberately not a readiness check: the service keeps
	// working without it (cache_errors_total shows the outage).
	s.admin = admin.New(cfg.AdminAddr, s.reg, logger, admin.Check{Name: "postgres", Fn: s.store.Ping})
	if err := s.grpc.Listen(); err != nil {
		s.committer.Close()
		return nil, err
	}
	if err := s.admin.Listen(); err != nil {
		s.committer.Close()
		return nil, errors.Join(err, s.grpc.Close())
	}
	return s, nil
}

// GRPCAddr is the bound gRPC address.
func (s *Server) GRPCAddr() string { return s.grpc.Addr() }

// AdminAddr is the bound admin HTTP address.
func (s *Server) AdminAddr() string { return s.admin.Addr() }

// Registry returns the Prometheus registry (tests and benchmarks read it).
func (s *Server) Registry() *prometheus.Registry { return s.reg }

// Serve runs until ctx ends, then shuts down in order: long polls and
// watches end, health goes NOT_SERVING, in-flight calls finish (bounded
// by the grace period), queued writes finish, the audit buffer is flushed,
// and the stores are closed. It returns nil on a clean stop.
func (s *Server) Serve(ctx context.Context) error {
	bg, cancelBg := context.WithCancel(context.WithoutCancel(ctx))
	var wg sync.WaitGroup
	auditDone := make(chan struct{})
	go func() {
		defer close(auditDone)
		s.audit.Run()
	}()
	wg.Go(func() { s.notifier.Run(bg, s.store) })
	wg.Go(func() { s.maintain(bg) })
	wg.Go(func() { s.latest.RunRepairs(bg, 500*time.Millisecond) })
	if s.near != nil {
		wg.Go(func() { s.near.Run(bg) })
	}
	stop := context.AfterFunc(ctx, s.stop)
	defer stop()

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.grpc.Serve(gctx) })
	g.Go(func() error { return s.admin.Serve(gctx) })
	err := g.Wait()

	s.stop()
	s.committer.Close()
	flushCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	s.audit.Close(flushCtx)
	cancel()
	<-auditDone
	cancelBg()
	wg.Wait()
	s.closeStores()
	return err
}

// applyAndCache is one group-commit transaction: the write, then the
// latest-cache update, before any of its callers is answered (a caller that
// reads after its write sees it).
func (s *Server) applyAndCache(ctx context.Context, ops []store.Op) ([]store.OpResult, error) {
	res, changes, err := s.store.Apply(ctx, ops)
	if err != nil {
		return nil, err
	}
	if len(changes) > 0 {
		s.latest.AfterCommit(ctx, changes)
	}
	return res, nil
}

// Run is New followed by Serve.
func Run(ctx context.Context, cfg Config, logger *slog.Logger) error {
	s, err := New(ctx, cfg, logger)
	if err != nil {
		return err
	}
	return s.Serve(ctx)
}

func (s *Server) stop() {
	s.stopOnce.Do(func() { close(s.stopping) })
}

func (s *Server) closeStores() {
	s.closeStorage.Do(func() {
		if s.rdb != nil {
			if err := s.rdb.Close(); err != nil {
				s.logger.Warn("close redis", "err", err)
			}
		}
		if s.store != nil {
			s.store.Close()
		}
	})
}

// maintain creates partitions ahead of time and drops the ones past the
// retention policy, periodically (the first run right away: creation ran
// in New, retention has not).
func (s *Server) maintain(ctx context.Context) {
	t := time.NewTicker(s.cfg.MaintenanceInterval)
	defer t.Stop()
	first := true
	for {
		if !first {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if err := s.store.EnsurePartitions(ctx, time.Now(), s.cfg.PartitionMonthsAhead); err != nil && ctx.Err() == nil {
				s.m.MaintenanceErrors.Inc()
				s.logger.WarnContext(ctx, "partition maintenance failed", "err", err)
			}
		}
		first = false
		if _, err := s.store.DropExpiredPartitions(ctx, time.Now(), s.retention()); err != nil && ctx.Err() == nil {
			s.m.MaintenanceErrors.Inc()
			s.logger.WarnContext(ctx, "partition retention failed", "err", err)
		}
	}
}

func (s *Server) retention() store.Retention {
	return store.Retention{Readings: s.cfg.RetentionReadings, Events: s.cfg.RetentionEvents, Audit: s.cfg.RetentionAudit}
}

// FlushAudit writes the buffered audit entries now and waits for them
// (tests; shutdown flushes by itself).
func (s *Server) FlushAudit(ctx context.Context) { s.audit.Flush(ctx) }

// NearCacheBarrier waits until every invalidation Redis sent this
// replica's near-cache before the call has been applied (tests: it makes a
// write acknowledged by another replica visible here at once). It returns
// nil when the near-cache is off.
func (s *Server) NearCacheBarrier(ctx context.Context) error {
	if s.near == nil {
		return nil
	}
	return s.near.Barrier(ctx)
}
