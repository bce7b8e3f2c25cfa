// Package server runs the publisher: it relays the persistence service's
// transactional outbox to Kafka (biometrics.events.v1 and
// biometrics.connections.v1, keyed by user id, CloudEvents headers),
// dead-letters what can never be published to biometrics.events.v1.dlq and
// serves PublisherService (status, dead-letter list and replay). It holds no
// durable state of its own: the outbox is the backlog and the dead-letter
// topic is the dead-letter record.
package server

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"

	publisherv1 "github.com/biobridge/bridge/gen/go/biobridge/publisher/v1"
	"github.com/biobridge/bridge/pkg/admin"
	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/pkg/grpcclient"
	"github.com/biobridge/bridge/pkg/grpcserver"
	"github.com/biobridge/bridge/pkg/telemetry"
	"github.com/biobridge/bridge/services/publisher/internal/api"
	"github.com/biobridge/bridge/services/publisher/internal/deadletter"
	"github.com/biobridge/bridge/services/publisher/internal/relay"
	"github.com/biobridge/bridge/services/publisher/kafka"
	"github.com/biobridge/bridge/services/publisher/outbox"
)

// Server is a running publisher.
type Server struct {
	cfg    Config
	logger *slog.Logger
	kafka  *kafka.Conn
	conn   *grpc.ClientConn
	relay  *relay.Relay
	topics *kafka.Durability
	grpc   *grpcserver.Server
	admin  *admin.Server
}

// New checks cfg with Validate, connects to Kafka (creating missing
// topics), prepares the persistence client and binds the gRPC and admin listeners. It fails when
// no Kafka broker answers: an orchestrator restarts it.
func New(ctx context.Context, cfg Config, logger *slog.Logger) (_ *Server, err error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Holder == "" {
		host, _ := os.Hostname()
		cfg.Holder = fmt.Sprintf("%s-%d", host, os.Getpid())
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("publisher: invalid configuration:\n%w", err)
	}
	s := &Server{cfg: cfg, logger: logger}
	defer func() {
		if err != nil {
			if s.grpc != nil {
				err = errors.Join(err, s.grpc.Close())
			}
			err = errors.Join(err, s.close())
		}
	}()

	kcfg := kafka.Config{
		Brokers:                   cfg.KafkaBrokers,
		Version:                   cfg.KafkaVersion,
		ClientID:                  cfg.KafkaClientID,
		MaxMessageBytes:           cfg.MaxMessageBytes,
		DeadLetterMaxMessageBytes: cfg.DeadLetterMaxMessageBytes,
		Partitions:                int32(cfg.TopicPartitions),
		ReplicationFactor:         int16(cfg.ReplicationFactor),
		MinInsyncReplicas:         cfg.MinInsyncReplicas,
		CreateTopics:              cfg.CreateTopics,
		SendTimeout:               SendTimeout(cfg.LeaseDuration),
	}
	if cfg.KafkaTLS {
		if kcfg.TLS, err = grpcclient.ClientTLSConfig(cfg.TLS, ""); err != nil {
			return nil, fmt.Errorf("kafka tls: %w", err)
		}
	}
	if s.kafka, err = kafka.Connect(ctx, kcfg, logger); err != nil {
		return nil, err
	}
	if s.conn, err = grpcclient.Dial(cfg.PersistenceTarget, grpcclient.Config{TLS: cfg.TLS, ServiceToken: cfg.ServiceToken, TracerProvider: cfg.TracerProvider}); err != nil {
		return nil, err
	}
	ob := outbox.New(s.conn)

	reg := telemetry.NewRegistry()
	// A topic less durable than configured does not stop the publisher
	// (the outbox would only grow); it fails readiness and says why.
	s.topics = kafka.NewDurability(s.kafka.Client, kcfg, reg, logger)
	_ = s.topics.Check()
	letters := deadletter.New(s.kafka.DeadLetterReader, s.kafka.Producer, s.kafka.DeadLetter, reg, logger, cfg.DeadLetterScanInterval)
	s.relay = relay.New(relay.Config{
		Holder:         cfg.Holder,
		Workers:        cfg.Workers,
		BatchSize:      cfg.BatchSize,
		LeaseDuration:  cfg.LeaseDuration,
		SendBound:      kafka.SendBound(kafka.SaramaConfig(kcfg, cfg.MaxMessageBytes)),
		WaitTimeout:    cfg.WaitTimeout,
		PollInterval:   cfg.PollInterval,
		MaxAttempts:    cfg.MaxAttempts,
		BackoffInitial: cfg.BackoffInitial,
		BackoffMax:     cfg.BackoffMax,
	}, relay.Deps{
		TracerProvider: cfg.TracerProvider,
		Outbox:         ob,
		Producer:       s.kafka.Producer,
		DeadLetter:     s.kafka.DeadLetter,
		Metrics:        relay.NewMetrics(reg),
		Logger:         logger,
		Ping:           s.kafka.Ping,
		OnDeadLetter:   letters.Invalidate,
	})

	if s.grpc, err = grpcserver.New(grpcserver.Config{Addr: cfg.GRPCAddr, TLS: cfg.TLS}, grpcserver.Options{
		TracerProvider: cfg.TracerProvider,
		Service:        "publisher",
		Logger:         logger,
		Registry:       reg,
		Auth:           auth.ServiceHook(cfg.ServiceTokens, cfg.ServiceACL),
		ACL:            cfg.ServiceACL,
	}); err != nil {
		return nil, err
	}
	publisherv1.RegisterPublisherServiceServer(s.grpc.Registrar(), api.New(s.relay, ob, letters, logger))
	if err = s.grpc.Listen(); err != nil {
		return nil, err
	}
	s.admin = admin.New(cfg.AdminAddr, reg, logger,
		admin.Check{Name: "kafka", Fn: func(context.Context) error { return s.kafka.Ping() }},
		admin.Check{Name: "kafka_topics", Fn: s.topics.Ready},
		admin.Check{Name: "persistence", Fn: func(ctx context.Context) error {
			_, err := ob.Stats(ctx)
			return err
		}},
	)
	if err = s.admin.Listen(); err != nil {
		return nil, err
	}
	return s, nil
}

// SendTimeout is the budget of one producer call for a lease of d: a third
// of it, so a fresh lease covers two calls and the heartbeat, renewing
// every third, keeps it so. A slow cluster needs a longer lease, not a call
// that outlives the lease.
func SendTimeout(d time.Duration) time.Duration {
	return d / 3
}

// GRPCAddr is the bound PublisherService address.
func (s *Server) GRPCAddr() string { return s.grpc.Addr() }

// Counters returns the relay's totals since start (what GetStatus reports,
// without asking the outbox for its backlog).
func (s *Server) Counters() relay.Counters { return s.relay.Counters() }

// AdminAddr is the bound admin HTTP address.
func (s *Server) AdminAddr() string { return s.admin.Addr() }

// Serve relays and serves until ctx is done. On the way out the gRPC
// server goes NOT_SERVING and stops gracefully, the relay finishes its
// current wave and acks it, then the producers flush and every connection
// closes. It returns nil on a clean stop.
func (s *Server) Serve(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return s.grpc.Serve(gctx) })
	g.Go(func() error { return s.admin.Serve(gctx) })
	g.Go(func() error { return s.relay.Run(gctx) })
	g.Go(func() error {
		s.relay.Monitor(gctx, s.cfg.StatsInterval, s.kafka.Ping)
		return nil
	})
	g.Go(func() error {
		s.topics.Run(gctx, s.cfg.TopicCheckInterval)
		return nil
	})
	s.logger.Info("publisher running", "grpc_addr", s.GRPCAddr(), "admin_addr", s.AdminAddr(),
		"holder", s.cfg.Holder, "brokers", s.cfg.KafkaBrokers, "persistence", s.cfg.PersistenceTarget)
	err := g.Wait()
	return errors.Join(err, s.close())
}

// close releases what New acquired: the producers are flushed by Close.
func (s *Server) close() error {
	var errs []error
	if s.kafka != nil {
		errs = append(errs, s.kafka.Close())
	}
	if s.conn != nil {
		if err := s.conn.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close persistence connection: %w", err))
		}
	}
	return errors.Join(errs...)
}

// Run is New followed by Serve.
func Run(ctx context.Context, cfg Config, logger *slog.Logger) error {
	s, err := New(ctx, cfg, logger)
	if err != nil {
		return err
	}
	return s.Serve(ctx)
}
