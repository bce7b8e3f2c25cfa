// Package service holds what every service binary does the same way: read
// the shared configuration (logging, pseudonym key), build the logger and
// tracing, and run the service until its context ends. It keeps each
// cmd/<svc>/main.go down to one call, so the binaries cannot drift apart.
package service

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/biobridge/bridge/pkg/buildinfo"
	"github.com/biobridge/bridge/pkg/config"
	"github.com/biobridge/bridge/pkg/logging"
	"github.com/biobridge/bridge/pkg/telemetry"
)

// Common is the configuration every service shares. Every service's Config
// embeds it (LoadConfig reads it with LoadCommon), which gives the Config
// the Shared method Main needs.
type Common struct {
	// LogFormat is LOG_FORMAT: "json" (default) or "text".
	LogFormat string
	// LogLevel is LOG_LEVEL: debug, info (default), warn or error.
	LogLevel slog.Level
	// PseudonymKey is LOG_PSEUDONYM_KEY (required, at least 16 bytes): the
	// key of the HMAC that turns user ids into log pseudonyms.
	PseudonymKey []byte
}

// LoadCommon reads the shared variables into c, recording problems in l.
func LoadCommon(l *config.Loader) Common {
	c := Common{LogFormat: l.String("LOG_FORMAT", "json")}
	l.Check("LOG_FORMAT", c.LogFormat == "json" || c.LogFormat == "text", `must be "json" or "text"`)
	if err := c.LogLevel.UnmarshalText([]byte(l.String("LOG_LEVEL", "info"))); err != nil {
		l.Check("LOG_LEVEL", false, "must be debug, info, warn or error")
	}
	c.PseudonymKey = []byte(l.Required("LOG_PSEUDONYM_KEY"))
	if len(c.PseudonymKey) > 0 {
		l.Check("LOG_PSEUDONYM_KEY", len(c.PseudonymKey) >= 16, "must be at least 16 bytes")
	}
	return c
}

// Shared returns the shared configuration; a Config that embeds Common has
// it through the embedding.
func (c Common) Shared() Common { return c }

// Config is what Main needs of a service's configuration.
type Config interface {
	// Shared returns the settings every service shares.
	Shared() Common
}

// Logger builds the service's logger.
func (c Common) Logger(w io.Writer, service string) *slog.Logger {
	return logging.New(w, logging.Options{Format: c.LogFormat, Level: c.LogLevel, PseudonymKey: c.PseudonymKey, Service: service})
}

// Spec describes one service binary.
type Spec[C Config] struct {
	// Name is the service name used in logs and traces.
	Name string
	// Load reads and validates the service's whole configuration: every
	// service's LoadConfig.
	Load func(getenv func(string) string) (C, error)
	// Run runs the service until ctx ends.
	Run func(ctx context.Context, cfg C, logger *slog.Logger) error
	// HealthAddr returns the gRPC address `<binary> healthcheck` probes.
	HealthAddr func(cfg C) string
	// Probe, when set, replaces the gRPC probe (for HTTP-only binaries).
	Probe func(ctx context.Context, cfg C) error
}

// Main is the whole of a service's run function: `version` as the first
// argument prints the build's version, `healthcheck` probes the running
// service (for container health checks); anything else starts it. Every
// configuration problem is reported at once.
func Main[C Config](ctx context.Context, args []string, getenv func(string) string, stdout io.Writer, spec Spec[C]) error {
	if len(args) > 1 && args[1] == "version" {
		_, err := fmt.Fprintf(stdout, "%s %s\n", spec.Name, buildinfo.Version())
		return err
	}
	cfg, err := spec.Load(getenv)
	if err != nil {
		return fmt.Errorf("invalid configuration for %s:\n%w", spec.Name, indent(err))
	}
	if len(args) > 1 && args[1] == "healthcheck" {
		if spec.Probe != nil {
			return spec.Probe(ctx, cfg)
		}
		return HealthCheck(ctx, spec.HealthAddr(cfg))
	}
	logger := cfg.Shared().Logger(stdout, spec.Name)
	logger.Info("starting", slog.String("version", buildinfo.Version()))
	shutdown, err := telemetry.SetupTracing(ctx, spec.Name, getenv)
	if err != nil {
		return fmt.Errorf("set up tracing: %w", err)
	}
	runErr := spec.Run(ctx, cfg, logger)
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	return errors.Join(runErr, shutdown(sctx))
}

// Exec is a service binary's main: Main with the process's arguments,
// environment and standard output, until SIGINT or SIGTERM. When Main fails
// it prints the error to standard error and exits with status 1.
func Exec[C Config](spec Spec[C]) {
	ExecFunc(func(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
		return Main(ctx, args, getenv, stdout, spec)
	})
}

// ExecFunc is the main of a command that is not a service (a bench, a
// checker, the devstack): run with the process's arguments, environment
// and standard output, until SIGINT or SIGTERM; when run fails it prints
// the error to standard error and exits with status 1.
func ExecFunc(run func(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args, os.Getenv, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

// HealthCheck asks the gRPC health service at addr whether the server is
// serving. A listen address like ":9101" is probed on loopback.
func HealthCheck(ctx context.Context, addr string) error {
	if strings.HasPrefix(addr, ":") {
		addr = "127.0.0.1" + addr
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("healthcheck %s: %w", addr, err)
	}
	defer func() { _ = conn.Close() }() // nothing was sent that a close could lose
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return fmt.Errorf("healthcheck %s: %w", addr, err)
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("healthcheck %s: %s", addr, resp.GetStatus())
	}
	return nil
}

func indent(err error) error {
	lines := strings.Split(err.Error(), "\n")
	for i, l := range lines {
		lines[i] = "  " + l
	}
	return errors.New(strings.Join(lines, "\n"))
}
