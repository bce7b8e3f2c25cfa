// Command persistence runs the persistence service (PersistenceService and
// BiometricsService). `persistence healthcheck` probes a running instance.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/biobridge/bridge/pkg/service"
	"github.com/biobridge/bridge/services/persistence/server"
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
	return service.Main(ctx, args, getenv, stdout, service.Spec[server.Config]{
		Name: server.ServiceName,
		Load: func(getenv func(string) string) (server.Config, service.Common, error) {
			cfg, err := server.LoadConfig(getenv)
			return cfg, cfg.Common, err
		},
		Run:        server.Run,
		HealthAddr: func(cfg server.Config) string { return cfg.GRPCAddr },
	})
}
