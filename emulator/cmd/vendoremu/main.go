// Command vendoremu runs the WHOOP + Oura emulator on its own (devstack
// embeds the package instead). Configuration is read from the environment
// (see emulator.ConfigFromEnv) plus:
//
//	VENDOREMU_ADDR           listen address, default 127.0.0.1:8090 (flag -addr)
//	VENDOREMU_USERS          comma list of emulated users to create at start
//	VENDOREMU_HISTORY_DAYS   days of history to generate for them, default 0
//	VENDOREMU_DEMO_INTERVAL  when set, keep producing data for connected users (flag -demo)
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/biobridge/bridge/emulator"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args, os.Getenv, os.Stdout)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "vendoremu:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	logger := slog.New(slog.NewJSONHandler(stdout, nil))
	cfg, cfgErr := emulator.ConfigFromEnv(getenv)
	var errs []error
	if cfgErr != nil {
		errs = append(errs, cfgErr)
	}

	fs := flag.NewFlagSet(args[0], flag.ContinueOnError)
	fs.SetOutput(stdout)
	addrDefault := getenv("VENDOREMU_ADDR")
	if addrDefault == "" {
		addrDefault = emulator.DefaultAddr
	}
	var demoDefault time.Duration
	if v := getenv("VENDOREMU_DEMO_INTERVAL"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			errs = append(errs, fmt.Errorf("VENDOREMU_DEMO_INTERVAL: invalid duration %q", v))
		}
		demoDefault = d
	}
	historyDays := 0
	if v := getenv("VENDOREMU_HISTORY_DAYS"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 400 {
			errs = append(errs, fmt.Errorf("VENDOREMU_HISTORY_DAYS: want 0..400, got %q", v))
		}
		historyDays = n
	}
	var users []string
	for _, name := range strings.Split(getenv("VENDOREMU_USERS"), ",") {
		if name = strings.TrimSpace(name); name != "" {
			users = append(users, name)
		}
	}
	addr := fs.String("addr", addrDefault, "listen address")
	demo := fs.Duration("demo", demoDefault, "demo interval (0 = off)")
	if err := fs.Parse(args[1:]); err != nil {
		errs = append(errs, fmt.Errorf("parse flags: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}

	emu, err := emulator.New(cfg, logger)
	if err != nil {
		return err
	}
	for _, name := range users {
		if _, err := emu.AddUser(emulator.UserSpec{Name: name}); err != nil {
			return fmt.Errorf("add user %s: %w", name, err)
		}
		if historyDays > 0 {
			if _, err := emu.GenerateHistory(ctx, emulator.HistorySpec{User: name, Days: historyDays}); err != nil {
				return fmt.Errorf("generate history for %s: %w", name, err)
			}
		}
	}
	if *demo > 0 {
		go func() {
			if err := emu.RunDemo(ctx, *demo); err != nil {
				logger.Error("demo stopped", "err", err)
			}
		}()
	}
	return emu.Serve(ctx, *addr)
}
