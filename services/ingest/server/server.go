// Package server composes the ingest service: its gRPC API, the durable
// webhook job queue with its fetch workers, the vendor clients, and the
// admin HTTP port. devstack and tests run it in process through New and
// Serve; cmd/ingest runs it as a binary.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/redis/go-redis/v9"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	ingestv1 "github.com/biobridge/bridge/gen/go/biobridge/ingest/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	tokensv1 "github.com/biobridge/bridge/gen/go/biobridge/tokens/v1"
	"github.com/biobridge/bridge/pkg/admin"
	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/pkg/groupcommit"
	"github.com/biobridge/bridge/pkg/grpcclient"
	"github.com/biobridge/bridge/pkg/grpcserver"
	"github.com/biobridge/bridge/pkg/limiter"
	"github.com/biobridge/bridge/pkg/logging"
	"github.com/biobridge/bridge/pkg/periodic"
	"github.com/biobridge/bridge/pkg/pgstore"
	"github.com/biobridge/bridge/pkg/ratebudget"
	"github.com/biobridge/bridge/pkg/telemetry"
	"github.com/biobridge/bridge/services/ingest/internal/api"
	"github.com/biobridge/bridge/services/ingest/internal/completeness"
	"github.com/biobridge/bridge/services/ingest/internal/erasure"
	"github.com/biobridge/bridge/services/ingest/internal/store"
	"github.com/biobridge/bridge/services/ingest/internal/webhook"
	"github.com/biobridge/bridge/services/ingest/internal/worker"
	"github.com/biobridge/bridge/services/ingest/oura"
	"github.com/biobridge/bridge/services/ingest/vendorhttp"
	"github.com/biobridge/bridge/services/ingest/whoop"
)

// Migrate applies ingest's migrations (schema "ingest") to the database at
// url. New does it too; tests use it to build template databases.
func Migrate(ctx context.Context, url string) error { return store.Migrations.Migrate(ctx, url) }

// MigrationsVersion changes whenever a migration does (for test template names).
func MigrationsVersion() string { return store.Migrations.Version() }

// Server is a running ingest service.
type Server struct {
	cfg     Config
	logger  *slog.Logger
	reg     *prometheus.Registry
	grpc    *grpcserver.Server
	admin   *admin.Server
	persist *grpc.ClientConn
	broker  *grpc.ClientConn
	db      *pgxpool.Pool
	rdb     *redis.Client
	pool    *worker.Pool
	// enqueuer group-commits webhook jobs; closed after the gRPC server.
	enqueuer *store.GroupEnqueuer
	vendors  []*vendorhttp.Client
	loops    *completeness.Loops
	subs     *oura.Subscriptions
	subsM    *subscriptionMetrics
}

// Methods and the credential each one needs.
const (
	methodWhoopWebhook = "/biobridge.ingest.v1.IngestService/HandleWhoopWebhook"
	methodOuraWebhook  = "/biobridge.ingest.v1.IngestService/HandleOuraWebhook"
	methodOuraVerify   = "/biobridge.ingest.v1.IngestService/VerifyOuraWebhook"
	methodPush         = "/biobridge.ingest.v1.IngestService/PushHealthKitSamples"
	methodIngestEvents = "/biobridge.ingest.v1.IngestService/IngestEvents"
	methodListJobs     = "/biobridge.ingest.v1.IngestService/ListJobs"
	methodRetryJobs    = "/biobridge.ingest.v1.IngestService/RetryJobs"
	methodBackfills    = "/biobridge.ingest.v1.IngestService/GetBackfillProgress"
	methodDeleteUser   = "/biobridge.ingest.v1.IngestService/DeleteUserData"
)

// authenticate is the grpcserver auth hook. It fails closed: a method it
// does not list (one added to the proto later) is refused until someone
// decides which credential it needs.
func authenticate(tokens *auth.ServiceTokens, acl *auth.ACL, users *auth.UserVerifier) func(context.Context, string) (context.Context, error) {
	return func(ctx context.Context, method string) (context.Context, error) {
		switch method {
		case methodWhoopWebhook, methodOuraWebhook, methodOuraVerify:
			// Webhooks are authenticated by their signatures, the Oura
			// handshake by its verification token.
			return ctx, nil
		case methodPush:
			sub, err := users.Verify(auth.BearerToken(ctx))
			if err != nil {
				return ctx, err
			}
			return auth.WithUser(ctx, sub), nil
		case methodIngestEvents, methodListJobs, methodRetryJobs, methodBackfills, methodDeleteUser:
			return auth.ServiceAuth(ctx, tokens, acl, method)
		}
		return ctx, auth.MethodNotListed(method)
	}
}

// vendors are the vendors ingest fetches from.
var vendors = []string{worker.VendorWhoop, worker.VendorOura}

// New checks cfg with Validate (its zero fields given LoadConfig's
// defaults first), connects to PostgreSQL (migrating schema "ingest"),
// builds the clients and binds its ports (":0" works), ready to Serve.
func New(ctx context.Context, cfg Config, logger *slog.Logger) (_ *Server, err error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid configuration:\n%w", err)
	}
	tokens, err := auth.ParseServiceTokens(cfg.ServiceTokens)
	if err != nil {
		return nil, fmt.Errorf("SERVICE_TOKENS: %w", err)
	}
	acl, err := auth.ParseACL(cfg.ServiceACL)
	if err != nil {
		return nil, fmt.Errorf("SERVICE_ACL: %w", err)
	}
	users := auth.NewUserVerifier(cfg.UserTokenSecret)
	s := &Server{cfg: cfg, logger: logger, reg: telemetry.NewRegistry()}
	defer func() {
		if err != nil {
			if s.grpc != nil {
				err = errors.Join(err, s.grpc.Close())
			}
			err = errors.Join(err, s.closeClients(context.Background()))
		}
	}()

	if err := Migrate(ctx, cfg.PostgresURL); err != nil {
		return nil, err
	}
	if s.db, err = pgstore.Connect(ctx, cfg.PostgresURL, logger); err != nil {
		return nil, err
	}
	ropts, err := redis.ParseURL(cfg.RedisURL)
	if err != nil {
		return nil, fmt.Errorf("REDIS_URL: %w", err)
	}
	s.rdb = redis.NewClient(ropts)
	if s.persist, err = grpcclient.Dial(cfg.PersistenceTarget, grpcclient.Config{TLS: cfg.TLS, ServiceToken: cfg.ServiceToken, TracerProvider: cfg.TracerProvider}); err != nil {
		return nil, fmt.Errorf("dial persistence: %w", err)
	}
	if s.broker, err = grpcclient.Dial(cfg.TokenBrokerTarget, grpcclient.Config{TLS: cfg.TLS, ServiceToken: cfg.ServiceToken, TracerProvider: cfg.TracerProvider,
		IdempotentServices: []string{"biobridge.tokens.v1.TokenBrokerService"}}); err != nil {
		return nil, fmt.Errorf("dial token broker: %w", err)
	}

	vm := vendorhttp.NewMetrics(s.reg)
	whoopBudget := ratebudget.New(s.rdb, cfg.RedisKeyPrefix, worker.VendorWhoop, []ratebudget.Window{
		{Limit: cfg.WhoopRateLimit, Period: cfg.WhoopRateWindow},
		{Limit: cfg.WhoopDailyLimit, Period: 24 * time.Hour},
	}, cfg.RateBudgetSlack)
	ouraBudget := ratebudget.New(s.rdb, cfg.RedisKeyPrefix, worker.VendorOura, []ratebudget.Window{
		{Limit: cfg.OuraRateLimit, Period: cfg.OuraRateWindow},
	}, cfg.RateBudgetSlack)
	whoopClient, err := vendorhttp.New(vendorhttp.Config{
		TracerProvider: cfg.TracerProvider,
		Vendor:         worker.VendorWhoop, BaseURL: cfg.WhoopAPIURL + whoop.APIPath,
		ConnectTimeout: cfg.VendorConnectTimeout, RequestTimeout: cfg.VendorRequestTimeout, MaxConns: cfg.VendorMaxConns,
		// WHOOP's limit is per app: a 429 stops every replica.
		Budget: whoopBudget, PauseOn429: true, Metrics: vm, Logger: logger,
		BackgroundShare: float64(cfg.BackgroundRatePercent) / 100,
	})
	if err != nil {
		return nil, err
	}
	s.vendors = append(s.vendors, whoopClient)
	ouraClient, err := vendorhttp.New(vendorhttp.Config{
		TracerProvider: cfg.TracerProvider,
		Vendor:         worker.VendorOura, BaseURL: cfg.OuraAPIURL,
		ConnectTimeout: cfg.VendorConnectTimeout, RequestTimeout: cfg.VendorRequestTimeout, MaxConns: cfg.VendorMaxConns,
		// Oura limits per token as well: one user's 429 must not stop the others.
		Budget: ouraBudget, PauseOn429: false, Metrics: vm, Logger: logger,
		BackgroundShare: float64(cfg.BackgroundRatePercent) / 100,
	})
	if err != nil {
		return nil, err
	}
	s.vendors = append(s.vendors, ouraClient)

	jobStore := store.New(s.db)
	fetcher := worker.NewFetcher(worker.FetchConfig{
		PendingDelay: cfg.PendingScoreDelay, PendingMaxAge: cfg.PendingScoreMaxAge,
	}, tokensv1.NewTokenBrokerServiceClient(s.broker), persistencev1.NewPersistenceServiceClient(s.persist),
		whoop.NewAPI(whoopClient), oura.NewAPI(ouraClient), s.reg, logger)
	host, _ := os.Hostname()
	owner := host + ":" + strconv.Itoa(os.Getpid())
	brokerClient := tokensv1.NewTokenBrokerServiceClient(s.broker)
	// The pool and the collector wake each other; the closure breaks the
	// construction cycle.
	var wake func()
	collector := worker.NewCollector(fetcher, jobStore, func() { wake() }, logger)
	s.pool = worker.NewPool(jobStore, map[string]worker.Handler{
		worker.KindWebhook:         fetcher,
		worker.KindBackfill:        collector,
		worker.KindReconcile:       collector,
		worker.KindConnectionEvent: worker.NewNotifier(fetcher),
	}, worker.Config{
		TracerProvider: cfg.TracerProvider,
		Owner:          owner,
		Workers:        cfg.Workers, Lease: cfg.JobLease, PollInterval: cfg.PollInterval, MaxAttempts: cfg.JobMaxAttempts,
		RetryBase: cfg.RetryBase, RetryMax: cfg.RetryMax, ShutdownGrace: cfg.ShutdownGrace, Retention: cfg.JobRetention,
		MaxBackground: cfg.BackgroundWorkers, Vendors: vendors,
	}, s.reg, logger)
	wake = s.pool.Wake
	s.loops = completeness.New(completeness.Config{
		Owner: owner, Vendors: vendors,
		BackfillDays: cfg.BackfillDays, SyncInterval: cfg.ConnectionSyncInterval,
		ReconcileInterval: cfg.ReconcileInterval, ReconcileWindow: cfg.ReconcileWindow,
		StaleAfter: cfg.StaleAfter, StaleCheckInterval: cfg.StaleCheckInterval,
	}, jobStore, brokerClient, s.pool.Wake, s.reg, logger)
	fetcher.SetArrivals(s.loops)
	s.subsM = newSubscriptionMetrics(s.reg)
	switch {
	case cfg.OuraClientID != "" && cfg.PublicBaseURL != "" && cfg.OuraVerificationToken != "":
		s.subs = oura.NewSubscriptions(oura.SubscriptionConfig{
			APIURL: cfg.OuraAPIURL, ClientID: cfg.OuraClientID, ClientSecret: string(cfg.OuraClientSecret),
			CallbackURL: cfg.PublicBaseURL + "/v1/webhooks/oura", VerificationToken: cfg.OuraVerificationToken,
			RenewBefore: cfg.OuraSubscriptionRenewBefore,
		})
	case cfg.OuraClientID != "" || cfg.PublicBaseURL != "":
		logger.Warn("oura webhook subscriptions are not kept: OURA_CLIENT_ID, PUBLIC_BASE_URL and OURA_VERIFICATION_TOKEN are all needed")
	}

	s.grpc, err = grpcserver.New(grpcserver.Config{Addr: cfg.GRPCAddr, TLS: cfg.TLS, GracePeriod: cfg.ShutdownGrace}, grpcserver.Options{
		TracerProvider: cfg.TracerProvider,
		Service:        "ingest",
		Logger:         logger,
		Registry:       s.reg,
		Auth:           authenticate(tokens, acl, users),
		ACL:            acl,
	})
	if err != nil {
		return nil, fmt.Errorf("build grpc server: %w", err)
	}
	eraserCfg := erasure.Config{AfterStep: cfg.ErasureAfterStep}
	if len(cfg.PseudonymKey) > 0 {
		eraserCfg.Subject = logging.NewPseudonymizer(cfg.PseudonymKey).Pseudonym
	}
	eraser := erasure.New(eraserCfg, s.db, brokerClient, persistencev1.NewPersistenceServiceClient(s.persist), s.reg, logger)
	tolerance := webhook.Options{Tolerance: cfg.WebhookTolerance}
	s.enqueuer = store.NewGroupEnqueuer(jobStore, webhookGroupCommit, webhookGroupMetrics(s.reg))
	handler := api.New(api.Deps{
		Persistence: persistencev1.NewPersistenceServiceClient(s.persist),
		Limiter:     limiter.New("ingest_pushes", cfg.MaxConcurrentPushes, cfg.WaitBudget, s.reg),
		Webhooks: api.Webhooks{
			Whoop:   webhook.NewWhoopVerifier(cfg.WhoopClientSecret, tolerance),
			Oura:    webhook.NewOuraVerifier(cfg.OuraClientSecret, tolerance),
			Jobs:    jobStore,
			Enqueue: s.enqueuer.Enqueue,
			Limiter: limiter.New("ingest_webhooks", cfg.MaxConcurrentWebhooks, cfg.WebhookWaitBudget, s.reg),
			Wake:    s.pool.Wake,
		},
		Erasure:  eraser,
		Logger:   logger,
		Registry: s.reg,
	}, api.Options{
		MaxSamples:            cfg.HealthKitMaxSamples,
		OuraVerificationToken: cfg.OuraVerificationToken,
	})
	ingestv1.RegisterIngestServiceServer(s.grpc.Registrar(), handler)

	s.admin = admin.New(cfg.AdminAddr, s.reg, logger,
		// Webhooks need only PostgreSQL to be acknowledged; HealthKit
		// pushes need persistence. The token broker and the vendors are
		// the workers' business and do not make ingest unready.
		admin.Check{Name: "postgres", Fn: func(ctx context.Context) error { return s.db.Ping(ctx) }},
		admin.Check{Name: "persistence", Fn: func(ctx context.Context) error {
			resp, err := healthpb.NewHealthClient(s.persist).Check(ctx, &healthpb.HealthCheckRequest{})
			if err != nil {
				return err
			}
			if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				return errors.New(resp.GetStatus().String())
			}
			return nil
		}},
	)
	if err := s.grpc.Listen(); err != nil {
		return nil, fmt.Errorf("listen grpc: %w", err)
	}
	if err := s.admin.Listen(); err != nil {
		return nil, fmt.Errorf("listen admin: %w", err)
	}
	return s, nil
}

// GRPCAddr is the bound gRPC address.
func (s *Server) GRPCAddr() string { return s.grpc.Addr() }

// AdminAddr is the bound admin HTTP address.
func (s *Server) AdminAddr() string { return s.admin.Addr() }

// Registry is the service's metrics registry (tests read it).
func (s *Server) Registry() *prometheus.Registry { return s.reg }

// Serve runs until ctx ends, then shuts down: the gRPC server drains (health
// NOT_SERVING first), running jobs get the grace period and are released
// after it, vendor calls in flight finish, and the stores are closed.
func (s *Server) Serve(ctx context.Context) error {
	s.logger.InfoContext(ctx, "ingest serving", slog.String("grpc", s.GRPCAddr()), slog.String("admin", s.AdminAddr()),
		slog.Int("workers", s.cfg.Workers))
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.grpc.Serve(gctx) })
	g.Go(func() error { return s.admin.Serve(gctx) })
	g.Go(func() error { return s.pool.Run(gctx) })
	g.Go(func() error { return s.loops.Run(gctx) })
	g.Go(func() error { periodic.Every(gctx, 5*time.Second, s.measureBudgets); return nil })
	if s.subs != nil {
		g.Go(func() error { s.keepSubscriptions(gctx); return nil })
	}
	err := g.Wait()
	cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), s.cfg.ShutdownGrace+5*time.Second)
	defer cancel()
	return errors.Join(err, s.closeClients(cctx))
}

func (s *Server) closeClients(ctx context.Context) error {
	var errs []error
	if s.enqueuer != nil {
		s.enqueuer.Close()
	}
	for _, v := range s.vendors {
		errs = append(errs, v.Close(ctx))
	}
	for _, c := range []*grpc.ClientConn{s.persist, s.broker} {
		if c != nil {
			if err := c.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close grpc client: %w", err))
			}
		}
	}
	if s.rdb != nil {
		if err := s.rdb.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close redis: %w", err))
		}
	}
	if s.db != nil {
		s.db.Close()
	}
	return errors.Join(errs...)
}

// webhookGroupCommit merges the job inserts of concurrent webhooks into
// shared transactions. No window: a webhook that finds a transaction slot
// free starts at once (no added latency when traffic is light); while every
// slot is busy, webhooks queue and the next transaction takes all of them,
// so batches grow with the load by themselves. Two slots: fewer, larger
// transactions cost PostgreSQL less per webhook than four (on two cores,
// 64 senders: about 11 webhooks a transaction instead of 6, a quarter more
// webhooks a second and a lower p99; BENCHMARKS.md), and a transaction
// that stalls (a lock wait) still leaves one slot to the others. One slot
// measured faster still, but would hold every webhook behind such a stall.
var webhookGroupCommit = groupcommit.Config{Window: 0, MaxOps: 500, Concurrency: 2, TxTimeout: 10 * time.Second}

func webhookGroupMetrics(reg prometheus.Registerer) groupcommit.Metrics {
	f := promauto.With(reg)
	return groupcommit.Metrics{
		Requests: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "biobridge_ingest_webhook_group_commit_requests",
			Help:    "Webhook jobs committed together in one transaction.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 10),
		}),
		Wait: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "biobridge_ingest_webhook_group_commit_wait_seconds",
			Help:    "Time a webhook job waited for a transaction slot before its transaction started.",
			Buckets: []float64{0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1},
		}),
		Isolations: f.NewCounter(prometheus.CounterOpts{
			Name: "biobridge_ingest_webhook_group_commit_isolations_total",
			Help: "Shared webhook-job transactions that failed and were retried one webhook at a time, so one bad job fails alone.",
		}),
	}
}

// Run builds and serves the service until ctx ends.
func Run(ctx context.Context, cfg Config, logger *slog.Logger) error {
	s, err := New(ctx, cfg, logger)
	if err != nil {
		return err
	}
	return s.Serve(ctx)
}
