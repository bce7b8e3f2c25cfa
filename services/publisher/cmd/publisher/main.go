// Command publisher relays the transactional outbox to Kafka and serves
// PublisherService. Configuration comes from the environment (see
// server.Config). `publisher healthcheck` checks a running instance's gRPC
// health, for container health checks.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"google.golang.org/grpc/health/grpc_health_v1"

	"github.com/biobridge/bridge/pkg/config"
	"github.com/biobridge/bridge/pkg/grpcclient"
	"github.com/biobridge/bridge/pkg/logging"
	"github.com/biobridge/bridge/pkg/telemetry"
	"github.com/biobridge/bridge/services/publisher/server"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args, os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, err)
		stop()
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	if len(args) > 1 && args[1] == "healthcheck" {
		return healthcheck(ctx, getenv)
	}
	cfg, err := server.LoadConfig(getenv)
	if err != nil {
		return fmt.Errorf("invalid configuration:\n%w", err)
	}
	logger := logging.New(stdout, logging.Options{
		Format:       cfg.LogFormat,
		Level:        cfg.LogLevel,
		PseudonymKey: cfg.PseudonymKey,
		Service:      "publisher",
	})
	shutdown, err := telemetry.SetupTracing(ctx, "publisher", getenv)
	if err != nil {
		return fmt.Errorf("set up tracing: %w", err)
	}
	defer func() {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if err := shutdown(sctx); err != nil {
			logger.Warn("flush traces failed", "err", err)
		}
	}()
	return server.Run(ctx, cfg, logger)
}

// healthcheck asks the local gRPC server for its health.
func healthcheck(ctx context.Context, getenv func(string) string) error {
	addr := getenv("PUBLISHER_GRPC_ADDR")
	if addr == "" {
		addr = ":9104"
	}
	if addr[0] == ':' {
		addr = "127.0.0.1" + addr
	}
	// A TLS server needs a TLS check; with mutual TLS our own certificate
	// is the client certificate.
	l := config.New(getenv)
	tlsFiles := l.TLS()
	if err := l.Err(); err != nil {
		return err
	}
	conn, err := grpcclient.Dial(addr, grpcclient.Config{TLS: tlsFiles, ServerName: "localhost"})
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close() }()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	resp, err := grpc_health_v1.NewHealthClient(conn).Check(ctx, &grpc_health_v1.HealthCheckRequest{})
	if err != nil {
		return fmt.Errorf("health check: %w", err)
	}
	if resp.GetStatus() != grpc_health_v1.HealthCheckResponse_SERVING {
		return fmt.Errorf("health check: %s", resp.GetStatus())
	}
	return nil
}
