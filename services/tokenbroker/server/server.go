// Package server runs the token broker: biobridge.tokens.v1.TokenBrokerService
// over gRPC, its admin endpoints, and the background work (connection-event
// relay, proactive refresh, re-encryption after a key rotation, expired
// state cleanup). It is the one package other modules (devstack, tests,
// benchmarks) compose; everything else is internal.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	tokensv1 "github.com/biobridge/bridge/gen/go/biobridge/tokens/v1"
	"github.com/biobridge/bridge/pkg/admin"
	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/pkg/grpcclient"
	"github.com/biobridge/bridge/pkg/grpcserver"
	"github.com/biobridge/bridge/pkg/logging"
	"github.com/biobridge/bridge/pkg/periodic"
	"github.com/biobridge/bridge/pkg/pgstore"
	"github.com/biobridge/bridge/pkg/ratebudget"
	"github.com/biobridge/bridge/pkg/telemetry"
	"github.com/biobridge/bridge/services/tokenbroker/internal/api"
	"github.com/biobridge/bridge/services/tokenbroker/internal/broker"
	"github.com/biobridge/bridge/services/tokenbroker/internal/relay"
	"github.com/biobridge/bridge/services/tokenbroker/internal/store"
	"github.com/biobridge/bridge/services/tokenbroker/internal/tokencrypt"
	"github.com/biobridge/bridge/services/tokenbroker/internal/tokenlock"
	"github.com/biobridge/bridge/services/tokenbroker/internal/vendors"
	"github.com/biobridge/bridge/services/tokenbroker/tokencache"
)

// Schema is the PostgreSQL schema the broker owns.
const Schema = store.Schema

// Migrate applies the broker's embedded migrations to the database at url
// (pkg/testpg templates, devstack).
func Migrate(ctx context.Context, url string) error { return store.Migrations.Migrate(ctx, url) }

// MigrationsVersion changes whenever a migration does (a hash of the
// migration files), for naming test template databases.
func MigrationsVersion() string { return store.Migrations.Version() }

// Server is a running token broker.
type Server struct {
	cfg         Config
	log         *slog.Logger
	reg         *prometheus.Registry
	pool        *pgxpool.Pool
	redis       *redis.Client
	httpClient  *http.Client
	persistConn *grpc.ClientConn
	grpc        *grpcserver.Server
	admin       *admin.Server
	broker      *broker.Broker
	relay       *relay.Relay
	// firstPasses is closed once Serve's maintenance loops (proactive
	// refresh, expired-state cleanup) have each run once.
	firstPasses chan struct{}
}

// New checks cfg (its zero tunables given LoadConfig's defaults) with
// Validate, connects to PostgreSQL (migrating the schema) and Redis, builds
// the broker and binds both listeners, so GRPCAddr and AdminAddr are known
// before Serve.
func New(ctx context.Context, cfg Config, logger *slog.Logger) (_ *Server, err error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid configuration:\n%w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	keys, err := tokencrypt.Parse(cfg.TokenEncryptionKeys)
	if err != nil {
		return nil, fmt.Errorf("TOKEN_ENCRYPTION_KEYS: %w", err)
	}
	services, err := auth.ParseServiceTokens(cfg.ServiceTokens)
	if err != nil {
		return nil, fmt.Errorf("SERVICE_TOKENS: %w", err)
	}
	acl, err := auth.ParseACL(cfg.ServiceACL)
	if err != nil {
		return nil, fmt.Errorf("SERVICE_ACL: %w", err)
	}
	userTokens := cfg.UserTokens
	if len(userTokens.Secret) == 0 {
		userTokens.Secret = cfg.UserTokenSecret
	}
	users, err := auth.NewUserTokenVerifier(ctx, userTokens, logger)
	if err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: logger, reg: telemetry.NewRegistry(), firstPasses: make(chan struct{})}
	defer func() {
		if err != nil {
			s.close()
		}
	}()

	if err := Migrate(ctx, cfg.PostgresURL); err != nil {
		return nil, err
	}
	if s.pool, err = pgstore.Connect(ctx, cfg.PostgresURL, logger); err != nil {
		return nil, err
	}
	ropts, err := redis.ParseURL(cfg.RedisURL)
	if err != nil {
		return nil, errors.New("REDIS_URL: invalid redis url")
	}
	s.redis = redis.NewClient(ropts)
	if err := s.redis.Ping(ctx).Err(); err != nil {
		return nil, fmt.Errorf("ping redis %s: %w", ropts.Addr, err)
	}

	s.httpClient = newVendorHTTPClient(cfg.RefreshTimeout)
	vendorMap := map[string]*vendors.Vendor{}
	for name, vc := range map[string]VendorConfig{vendors.Whoop: cfg.Whoop, vendors.Oura: cfg.Oura} {
		if !vc.Configured() {
			continue
		}
		v, err := vendors.New(name, vendors.Credentials{
			ClientID: vc.ClientID, ClientSecret: vc.ClientSecret, APIURL: vc.APIURL, AuthorizeURL: vc.AuthorizeURL,
		}, cfg.PublicBaseURL, s.httpClient)
		if err != nil {
			return nil, err
		}
		v.SetBudget(ratebudget.New(s.redis, cfg.RedisKeyPrefix, name, cfg.budgetWindows(name), cfg.RateBudgetSlack))
		vendorMap[name] = v
	}

	st := store.New(s.pool)
	if len(cfg.Common.PseudonymKey) > 0 {
		st.SetSubjects(logging.NewPseudonymizer(cfg.Common.PseudonymKey).Pseudonym)
	}
	var persist persistencev1.PersistenceServiceClient
	if cfg.PersistenceTarget != "" {
		s.persistConn, err = grpcclient.Dial(cfg.PersistenceTarget, grpcclient.Config{
			TracerProvider:     cfg.TracerProvider,
			TLS:                cfg.TLS,
			ServiceToken:       cfg.ServiceToken,
			IdempotentServices: []string{persistencev1.PersistenceService_ServiceDesc.ServiceName},
		})
		if err != nil {
			return nil, err
		}
		persist = persistencev1.NewPersistenceServiceClient(s.persistConn)
	}
	s.relay = relay.New(relay.Config{Interval: cfg.RelayInterval}, st, persist, s.reg, logger)
	cache := tokencache.New(s.redis, cfg.RedisKeyPrefix)
	s.broker = broker.New(broker.Config{
		SafetyMargin: cfg.SafetyMargin, RefreshTimeout: cfg.RefreshTimeout, LockLease: cfg.LockLease,
		StateTTL: cfg.StateTTL, ProactiveWindow: cfg.ProactiveWindow, ActiveWindow: cfg.ActiveWindow,
		PublicBaseURL: cfg.PublicBaseURL, StorePatience: cfg.StorePatience, ReturnURLs: cfg.ReturnURLs,
	}, broker.Deps{
		Store: st, Cache: cache, Locker: tokenlock.New(s.redis), Keys: keys, Vendors: vendorMap,
		Metrics: broker.NewMetrics(s.reg), Logger: logger.With("component", "broker"), EventsWritten: s.relay.Kick,
	})

	authn := &api.Authenticator{Services: services, ACL: acl, Users: users}
	s.grpc, err = grpcserver.New(grpcserver.Config{Addr: cfg.GRPCAddr, TLS: cfg.TLS}, grpcserver.Options{
		TracerProvider: cfg.TracerProvider,
		Service:        "tokenbroker", Logger: logger, Registry: s.reg, Auth: authn.Auth, ACL: acl,
	})
	if err != nil {
		return nil, err
	}
	tokensv1.RegisterTokenBrokerServiceServer(s.grpc.Registrar(), api.New(s.broker))
	if err := s.grpc.Listen(); err != nil {
		return nil, err
	}
	s.admin = admin.New(cfg.AdminAddr, s.reg, logger,
		admin.Check{Name: "postgres", Fn: st.Ping},
		admin.Check{Name: "redis", Fn: func(ctx context.Context) error { return s.redis.Ping(ctx).Err() }},
	)
	if err := s.admin.Listen(); err != nil {
		return nil, err
	}
	names := make([]string, 0, len(vendorMap))
	for n := range vendorMap {
		names = append(names, n)
	}
	logger.Info("token broker ready", "grpc_addr", s.GRPCAddr(), "admin_addr", s.AdminAddr(),
		"vendors", names, "encryption_key", keys.PrimaryID(), "persistence", cfg.PersistenceTarget != "")
	return s, nil
}

// newVendorHTTPClient is the pooled client for vendor calls. Per-call
// deadlines come from contexts; the client timeout is a backstop.
func newVendorHTTPClient(callTimeout time.Duration) *http.Client {
	return &http.Client{
		Timeout: callTimeout + 5*time.Second,
		Transport: &http.Transport{
			Proxy:                 http.ProxyFromEnvironment,
			DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			ForceAttemptHTTP2:     true,
			MaxIdleConns:          100,
			MaxIdleConnsPerHost:   32,
			IdleConnTimeout:       90 * time.Second,
			TLSHandshakeTimeout:   5 * time.Second,
			ResponseHeaderTimeout: callTimeout,
			ExpectContinueTimeout: time.Second,
		},
	}
}

// GRPCAddr is the bound gRPC address.
func (s *Server) GRPCAddr() string { return s.grpc.Addr() }

// AdminAddr is the bound admin HTTP address.
func (s *Server) AdminAddr() string { return s.admin.Addr() }

// budgetWindows are the windows of vendor's shared rate budget; they must
// match ingest's (same variables), or the two would disagree on the limit.
func (c Config) budgetWindows(vendor string) []ratebudget.Window {
	if vendor == vendors.Oura {
		return []ratebudget.Window{{Limit: c.OuraRateLimit, Period: c.OuraRateWindow}}
	}
	return []ratebudget.Window{
		{Limit: c.WhoopRateLimit, Period: c.WhoopRateWindow},
		{Limit: c.WhoopDailyLimit, Period: 24 * time.Hour},
	}
}

// FirstPassesDone is closed once Serve's maintenance loops have each run
// their first pass, which they do at once: the proactive refresh of
// connections about to expire and the cleanup of expired authorization
// states. A test that expires tokens or states by hand waits for it, or a
// late first pass (a busy machine) would refresh or delete them under it.
func (s *Server) FirstPassesDone() <-chan struct{} { return s.firstPasses }

// Registry is the server's metrics registry (tests, benchmarks).
func (s *Server) Registry() *prometheus.Registry { return s.reg }

// Serve serves until ctx ends, then stops accepting calls (health
// NOT_SERVING, bounded graceful stop), waits for refreshes in flight and
// closes the stores. It returns nil on a clean stop.
func (s *Server) Serve(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.grpc.Serve(gctx) })
	g.Go(func() error { return s.admin.Serve(gctx) })
	g.Go(func() error { s.relay.Run(gctx); return nil })
	var first sync.WaitGroup
	once := func(fn func(context.Context)) func(context.Context) {
		first.Add(1)
		var done sync.Once
		return func(ctx context.Context) { fn(ctx); done.Do(first.Done) }
	}
	proactive, cleanStates := once(s.proactive), once(s.cleanStates)
	go func() { first.Wait(); close(s.firstPasses) }()
	g.Go(func() error { periodic.Every(gctx, s.cfg.ProactiveInterval, proactive); return nil })
	g.Go(func() error { periodic.Every(gctx, time.Minute, cleanStates); return nil })
	g.Go(func() error { s.reencrypt(gctx); return nil })
	err := g.Wait()
	// A refresh the vendor already answered must reach the store.
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.RefreshTimeout+5*time.Second)
	if derr := s.broker.Drain(dctx); derr != nil {
		s.log.Warn("refreshes still running at shutdown; results not yet stored stay parked in Redis", "err", derr)
	}
	cancel()
	s.broker.Stop()
	s.close()
	return err
}

// Run is New followed by Serve.
func Run(ctx context.Context, cfg Config, logger *slog.Logger) error {
	s, err := New(ctx, cfg, logger)
	if err != nil {
		return err
	}
	return s.Serve(ctx)
}

func (s *Server) close() {
	if s.grpc != nil {
		if err := s.grpc.Close(); err != nil {
			s.log.Warn("close grpc server", "err", err)
		}
	}
	if s.persistConn != nil {
		if err := s.persistConn.Close(); err != nil {
			s.log.Warn("close persistence client", "err", err)
		}
	}
	if s.httpClient != nil {
		s.httpClient.CloseIdleConnections()
	}
	if s.redis != nil {
		if err := s.redis.Close(); err != nil {
			s.log.Warn("close redis", "err", err)
		}
	}
	if s.pool != nil {
		s.pool.Close()
	}
}

func (s *Server) proactive(ctx context.Context) {
	n, err := s.broker.RefreshExpiring(ctx, 100)
	if err != nil && ctx.Err() == nil {
		s.log.Warn("proactive refresh scan failed", "err", err)
	} else if n > 0 {
		s.log.Debug("proactive refresh", "connections", n)
	}
}

func (s *Server) cleanStates(ctx context.Context) {
	if _, err := s.broker.DeleteExpiredStates(ctx); err != nil && ctx.Err() == nil {
		s.log.Warn("delete expired oauth states failed", "err", err)
	}
}

// reencrypt moves rows sealed with an old key to the primary key once at
// start (each later write seals with the primary key anyway).
func (s *Server) reencrypt(ctx context.Context) {
	done, failed, err := s.broker.Reencrypt(ctx)
	switch {
	case err != nil && ctx.Err() == nil:
		s.log.Error("token re-encryption pass failed", "err", err, "reencrypted", done, "failed", failed)
	case done > 0 || failed > 0:
		s.log.Info("token re-encryption pass finished", "reencrypted", done, "failed", failed)
	}
}
