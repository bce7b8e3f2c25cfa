// Command tokenbroker runs the token broker: vendor OAuth connections with
// encrypted storage and rotation-safe refresh.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/biobridge/bridge/pkg/service"
	"github.com/biobridge/bridge/services/tokenbroker/server"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args, os.Getenv, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	return service.Main(ctx, args, getenv, stdout, service.Spec[server.Config]{
		Name: "tokenbroker",
		Load: func(getenv func(string) string) (server.Config, service.Common, error) {
			cfg, err := server.LoadConfig(getenv)
			return cfg, cfg.Common, err
		},
		Run:        server.Run,
		HealthAddr: func(c server.Config) string { return c.GRPCAddr },
	})
}
