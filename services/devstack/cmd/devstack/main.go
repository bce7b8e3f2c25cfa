// Command devstack runs the whole suite in one process: every service on its
// own loopback port, the vendor emulator and, unless KAFKA_BROKERS is set, an
// embedded Kafka-protocol broker. `make run` starts it. `devstack version`
// prints the build's version; `devstack healthcheck` asks every service of a
// running stack whether it is ready (the devstack image's HEALTHCHECK).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/biobridge/bridge/pkg/buildinfo"
	"github.com/biobridge/bridge/pkg/logging"
	"github.com/biobridge/bridge/services/devstack/stack"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args, os.Getenv, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "devstack:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	// Subcommands for containers: the image's HEALTHCHECK runs
	// `devstack healthcheck` with the container's environment.
	if len(args) > 1 {
		switch args[1] {
		case "version":
			_, err := fmt.Fprintln(stdout, "devstack", buildinfo.Version())
			return err
		case "healthcheck":
			return stack.HealthCheck(ctx, getenv)
		}
	}
	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	dataDir := fs.String("data-dir", ".devstack", "where the embedded Kafka broker keeps its data")
	demo := fs.Bool("demo", false, "connect emulated users and keep producing WHOOP, Oura and HealthKit data")
	demoInterval := fs.Duration("demo-interval", 5*time.Second, "how often demo mode produces data")
	verbose := fs.Bool("v", false, "debug logging")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	key := getenv("LOG_PSEUDONYM_KEY")
	logger := logging.New(stdout, logging.Options{Format: "text", Level: level, PseudonymKey: []byte(key)})

	logger.Info("starting", slog.String("version", buildinfo.Version()))
	s, err := stack.Start(ctx, stack.Options{Getenv: getenv, DataDir: *dataDir, Logger: logger})
	if err != nil {
		return err
	}
	if err := s.Banner(stdout); err != nil {
		return err
	}
	if *demo {
		go func() {
			if err := s.RunDemo(ctx, *demoInterval, stdout); err != nil && ctx.Err() == nil {
				logger.Error("demo stopped", slog.Any("err", err))
			}
		}()
	}
	err = s.Serve(ctx)
	logger.Info("devstack stopped")
	return err
}
