// Command chaos runs the Biometric Bridge as production runs it (every
// service its own process, two replicas of ingest, publisher and token
// broker, private PostgreSQL, Redis and Kafka behind TCP proxies, the
// vendor emulator), injects one fault per scenario while a seeded load
// runs, and checks what the clients were told against what was stored and
// published. It writes RELIABILITY.md and exits 1 when a checker count is
// not what it must be.
//
//	go run ./services/devstack/cmd/chaos [-seed 18] [-scenarios baseline,kafka-down] [-out RELIABILITY.md]
//
// Every port is in [-port-base, -port-base+999] (default 28000); the
// machine's shared PostgreSQL and Redis are never used.
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
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/biobridge/bridge/services/publisher/kafkadev"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	var err error
	if len(os.Args) > 1 && os.Args[1] == "kafka" {
		err = runKafka(ctx, os.Args[2:])
	} else {
		err = run(ctx, os.Args[1:], os.Stdout)
	}
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "chaos:", err)
		os.Exit(1)
	}
}

// runKafka is the broker as a process of its own: killing and starting it
// again on the same data directory is a broker restart.
func runKafka(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("chaos kafka", flag.ContinueOnError)
	addr := fs.String("addr", "", "listen address")
	adv := fs.String("advertise", "", "address clients are told to use (the proxy)")
	data := fs.String("data", "", "data directory")
	if err := fs.Parse(args); err != nil {
		return err
	}
	b, err := kafkadev.StartConfig(ctx, kafkadev.Config{Addr: *addr, Advertise: *adv, DataDir: *data,
		Logger: slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))})
	if err != nil {
		return err
	}
	<-ctx.Done()
	return b.Close()
}

func run(ctx context.Context, args []string, stdout io.Writer) (err error) {
	fs := flag.NewFlagSet("chaos", flag.ContinueOnError)
	seed := fs.Uint64("seed", 18, "seed of the load")
	only := fs.String("scenarios", "", "comma-separated scenarios to run (default all: "+strings.Join(scenarioNames(), ",")+")")
	out := fs.String("out", "RELIABILITY.md", "report to write (empty: none)")
	base := fs.Int("port-base", 28000, "first port of the block every listener is taken from")
	pgBin := fs.String("pg-bin", "/usr/lib/postgresql/15/bin", "directory holding initdb and postgres")
	keep := fs.Bool("keep", false, "keep the run's directory (logs, data) instead of removing it")
	short := fs.Bool("short", false, "shorter load and faults (CI)")
	shared := fs.Bool("shared-users", false, "let every push client write for every user (concurrent pushes of one user)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	selected, err := selectScenarios(*only)
	if err != nil {
		return err
	}
	root, err := repoRoot()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "chaos-")
	if err != nil {
		return err
	}
	logf := func(format string, a ...any) {
		fmt.Fprintf(stdout, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, a...)...)
	}
	s := &suite{dir: dir, ports: ports{*base}, pgBin: *pgBin, seed: *seed}
	defer func() {
		err = errors.Join(err, s.close())
		if *keep || err != nil {
			logf("logs and data kept in %s", dir)
		} else {
			_ = os.RemoveAll(dir)
		}
	}()
	self, err := os.Executable()
	if err != nil {
		return err
	}
	binDir := filepath.Join(dir, "bin")
	logf("building the service binaries into %s", binDir)
	if err := build(ctx, root, binDir); err != nil {
		return err
	}
	logf("starting the suite (ports %d-%d, run dir %s)", *base, *base+999, dir)
	if err := s.start(ctx, self, binDir); err != nil {
		return err
	}
	var results []result
	failed := false
	for _, sc := range selected {
		logf("scenario %s: %s", sc.name, sc.what)
		r, err := runScenario(ctx, s, sc, *seed, *short, *shared, logf)
		if err != nil {
			return fmt.Errorf("scenario %s: %w", sc.name, err)
		}
		results = append(results, r)
		logf("scenario %s: %s", sc.name, r.verdict())
		if !r.counts.ok() {
			failed = true
		}
	}
	if *out != "" {
		path := *out
		if !filepath.IsAbs(path) {
			path = filepath.Join(root, path)
		}
		if err := writeReport(path, results, *seed, *short, *shared); err != nil {
			return err
		}
		logf("wrote %s", *out)
	}
	if failed {
		return errors.New("a checker count is not what it must be (see the report)")
	}
	return nil
}

// repoRoot is the directory holding go.work.
func repoRoot() (string, error) {
	d, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(d, "go.work")); err == nil {
			return d, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", errors.New("run from inside the repository (no go.work found)")
		}
		d = parent
	}
}
