// Package server composes the ingest service: its gRPC API, the admin HTTP
// port and the connections to persistence. devstack and tests run it in
// process through New and Serve; cmd/ingest runs it as a binary.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	ingestv1 "github.com/biobridge/bridge/gen/go/biobridge/ingest/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	"github.com/biobridge/bridge/pkg/admin"
	"github.com/biobridge/bridge/pkg/apperr"
	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/pkg/grpcclient"
	"github.com/biobridge/bridge/pkg/grpcserver"
	"github.com/biobridge/bridge/pkg/limiter"
	"github.com/biobridge/bridge/pkg/telemetry"
	"github.com/biobridge/bridge/services/ingest/internal/api"
)

// Server is a running ingest service.
type Server struct {
	cfg     Config
	logger  *slog.Logger
	grpc    *grpcserver.Server
	admin   *admin.Server
	persist *grpc.ClientConn
}

// Methods and the credential each one needs.
const (
	methodPush         = "/biobridge.ingest.v1.IngestService/PushHealthKitSamples"
	methodIngestEvents = "/biobridge.ingest.v1.IngestService/IngestEvents"
	methodListJobs     = "/biobridge.ingest.v1.IngestService/ListJobs"
	methodRetryJobs    = "/biobridge.ingest.v1.IngestService/RetryJobs"
)

// New builds the service and binds its ports (":0" works), ready to Serve.
func New(ctx context.Context, cfg Config, logger *slog.Logger) (*Server, error) {
	tokens, err := auth.ParseServiceTokens(cfg.ServiceTokens)
	if err != nil {
		return nil, fmt.Errorf("SERVICE_TOKENS: %w", err)
	}
	users := auth.NewUserVerifier(cfg.UserTokenSecret)
	reg := telemetry.NewRegistry()

	persist, err := grpcclient.Dial(cfg.PersistenceTarget, grpcclient.Config{TLS: cfg.TLS})
	if err != nil {
		return nil, fmt.Errorf("dial persistence: %w", err)
	}
	s := &Server{cfg: cfg, logger: logger, persist: persist}

	s.grpc, err = grpcserver.New(grpcserver.Config{Addr: cfg.GRPCAddr, TLS: cfg.TLS}, grpcserver.Options{
		Service:  "ingest",
		Logger:   logger,
		Registry: reg,
		Auth: func(ctx context.Context, method string) (context.Context, error) {
			switch method {
			case methodPush:
				sub, err := users.Verify(auth.BearerToken(ctx))
				if err != nil {
					return ctx, err
				}
				return auth.WithUser(ctx, sub), nil
			case methodIngestEvents, methodListJobs, methodRetryJobs:
				name, ok := tokens.Authenticate(auth.BearerToken(ctx))
				if !ok {
					return ctx, apperr.E(apperr.Unauthenticated, "invalid_service_token", "a valid service token is required")
				}
				return auth.WithCaller(ctx, name), nil
			}
			// Webhooks are authenticated by their signatures, the Oura
			// handshake by its verification token.
			return ctx, nil
		},
	})
	if err != nil {
		_ = persist.Close()
		return nil, fmt.Errorf("build grpc server: %w", err)
	}
	handler := api.New(api.Deps{
		Persistence: persistencev1.NewPersistenceServiceClient(persist),
		Limiter:     limiter.New("ingest_writes", cfg.MaxConcurrentWrites, cfg.WaitBudget, reg),
		Logger:      logger,
		Registry:    reg,
	}, api.Options{
		ServiceToken:          cfg.ServiceToken,
		MaxSamples:            cfg.HealthKitMaxSamples,
		OuraVerificationToken: cfg.OuraVerificationToken,
	})
	ingestv1.RegisterIngestServiceServer(s.grpc.Registrar(), handler)

	s.admin = admin.New(cfg.AdminAddr, reg, logger, admin.Check{
		Name: "persistence",
		Fn: func(ctx context.Context) error {
			resp, err := healthpb.NewHealthClient(persist).Check(ctx, &healthpb.HealthCheckRequest{})
			if err != nil {
				return err
			}
			if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
				return errors.New(resp.GetStatus().String())
			}
			return nil
		},
	})
	if err := s.grpc.Listen(); err != nil {
		_ = persist.Close()
		return nil, fmt.Errorf("listen grpc: %w", err)
	}
	if err := s.admin.Listen(); err != nil {
		_ = persist.Close()
		return nil, fmt.Errorf("listen admin: %w", err)
	}
	return s, nil
}

// GRPCAddr is the bound gRPC address.
func (s *Server) GRPCAddr() string { return s.grpc.Addr() }

// AdminAddr is the bound admin HTTP address.
func (s *Server) AdminAddr() string { return s.admin.Addr() }

// Serve runs until ctx ends, then shuts down gracefully.
func (s *Server) Serve(ctx context.Context) error {
	s.logger.InfoContext(ctx, "ingest serving", slog.String("grpc", s.GRPCAddr()), slog.String("admin", s.AdminAddr()))
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.grpc.Serve(gctx) })
	g.Go(func() error { return s.admin.Serve(gctx) })
	err := g.Wait()
	if cerr := s.persist.Close(); cerr != nil {
		err = errors.Join(err, fmt.Errorf("close persistence client: %w", cerr))
	}
	return err
}

// Run builds and serves the service until ctx ends.
func Run(ctx context.Context, cfg Config, logger *slog.Logger) error {
	s, err := New(ctx, cfg, logger)
	if err != nil {
		return err
	}
	return s.Serve(ctx)
}
