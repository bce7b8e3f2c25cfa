package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/biobridge/bridge/deploy/check/internal/compose"
	"github.com/biobridge/bridge/deploy/check/internal/dashboard"
	"github.com/biobridge/bridge/deploy/check/internal/images"
	"github.com/biobridge/bridge/deploy/check/internal/kube"
	"github.com/biobridge/bridge/deploy/check/internal/promql"
	"github.com/biobridge/bridge/deploy/check/internal/rules"
	"github.com/biobridge/bridge/deploy/check/internal/scrape"
	"sigs.k8s.io/yaml"
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

// Paths inside the repository.
const (
	alertsPath     = "deploy/prometheus/alerts.yaml"
	dashboardPath  = "deploy/grafana/biobridge.json"
	runbookPath    = "docs/runbook.md"
	kubePath       = "deploy/kubernetes"
	rulePath       = "deploy/kubernetes/base/prometheusrule.yaml"
	secretsPath    = "deploy/kubernetes/secrets"
	composePath    = "deploy/compose"
	dockerfilePath = "deploy/docker/Dockerfile"
)

const usage = `usage: check <subcommand> [flags]

  static      kustomize + compose + rules (what CI runs without a running stack)
  kustomize   render deploy/kubernetes base and overlays; strict decode; policy
  compose     docker-compose config on deploy/compose; Dockerfile and wiring
  rules       lint alerts.yaml, the runbook links and the dashboard
              (-write regenerates the PrometheusRule from alerts.yaml)
  metrics     -url http://host:port/metrics (repeatable) [-wait 1m]:
              every metric the dashboard and alerts query is exported

every subcommand takes -repo (default: the repository around the working directory)`

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	if len(args) < 2 {
		return errors.New(usage)
	}
	sub := args[1]
	fs := flag.NewFlagSet(sub, flag.ContinueOnError)
	fs.SetOutput(stdout)
	repoFlag := fs.String("repo", "", "repository root (default: found from the working directory)")
	write := fs.Bool("write", false, "rules: write the PrometheusRule generated from alerts.yaml")
	dockerCompose := fs.String("docker-compose", "docker-compose", "compose: the docker-compose binary")
	wait := fs.Duration("wait", 0, "metrics: keep scraping until every metric appears or this long has passed")
	var urls multiFlag
	fs.Var(&urls, "url", "metrics: a /metrics URL to scrape (repeat for every service)")
	if err := fs.Parse(args[2:]); err != nil {
		return err
	}
	repo := *repoFlag
	if repo == "" {
		wd, err := os.Getwd()
		if err != nil {
			return err
		}
		if repo, err = findRepo(wd); err != nil {
			return err
		}
	}
	c := checker{repo: repo, out: stdout}
	switch sub {
	case "static":
		return errors.Join(c.kustomize(), c.compose(ctx, *dockerCompose), c.rules(false))
	case "kustomize":
		return c.kustomize()
	case "compose":
		return c.compose(ctx, *dockerCompose)
	case "rules":
		return c.rules(*write)
	case "metrics":
		if len(urls) == 0 {
			return errors.New("metrics: give every service's /metrics URL with -url")
		}
		return c.metrics(ctx, urls, *wait)
	default:
		return fmt.Errorf("unknown subcommand %q\n%s", sub, usage)
	}
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, ",") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

// findRepo walks up from dir to the directory holding go.work and deploy/.
func findRepo(dir string) (string, error) {
	for d := dir; ; d = filepath.Dir(d) {
		_, e1 := os.Stat(filepath.Join(d, "go.work"))
		_, e2 := os.Stat(filepath.Join(d, "deploy"))
		if e1 == nil && e2 == nil {
			return d, nil
		}
		if filepath.Dir(d) == d {
			return "", fmt.Errorf("no repository (go.work and deploy/) around %s; pass -repo", dir)
		}
	}
}

type checker struct {
	repo string
	out  io.Writer
}

func (c checker) path(p string) string { return filepath.Join(c.repo, filepath.FromSlash(p)) }

func (c checker) ruleFile() (rules.File, error) {
	data, err := os.ReadFile(c.path(alertsPath))
	if err != nil {
		return rules.File{}, err
	}
	f, err := rules.Parse(data)
	if err != nil {
		return rules.File{}, fmt.Errorf("%s: %w", alertsPath, err)
	}
	return f, nil
}

// kustomize renders the base and every overlay and checks each.
func (c checker) kustomize() error {
	f, err := c.ruleFile()
	if err != nil {
		return err
	}
	ruleJSON, err := yaml.Marshal(f)
	if err != nil {
		return err
	}
	if ruleJSON, err = yaml.YAMLToJSON(ruleJSON); err != nil {
		return err
	}
	spec, err := kube.RuleSpec(ruleJSON)
	if err != nil {
		return err
	}
	examples := map[string]bool{}
	files, _ := filepath.Glob(filepath.Join(c.path(secretsPath), "*.env.example"))
	for _, f := range files {
		examples[strings.TrimSuffix(filepath.Base(f), ".env.example")] = true
	}
	set, err := images.Load(c.repo)
	if err != nil {
		return err
	}
	dirs := []string{c.path(kubePath + "/base")}
	overlays, _ := filepath.Glob(c.path(kubePath + "/overlays/*"))
	dirs = append(dirs, overlays...)
	var errs []error
	for _, dir := range dirs {
		rel, _ := filepath.Rel(c.repo, dir)
		overlay := strings.Contains(rel, "overlays")
		objs, err := kube.Load(dir)
		if err == nil {
			err = errors.Join(kube.Check(objs, kube.Policy{
				PinnedImages:   overlay,
				SecretExamples: examples,
				Rule:           spec,
			}), checkKubeImages(kube.DeploymentImages(objs), set, overlay))
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("kustomize %s:\n%w", rel, err))
			continue
		}
		fmt.Fprintf(c.out, "ok   kustomize %s: %d objects decode strictly and pass the policy\n", rel, len(objs))
	}
	return errors.Join(errs...)
}

// checkKubeImages holds the Deployments to the images `make images`
// builds: the base to the default names (deploy/docker/images.env), an
// overlay to one release build's names (any IMAGE_REPO and IMAGE_TAG, the
// same for every service).
func checkKubeImages(deployed map[string]string, set images.Set, overlay bool) error {
	if overlay {
		return images.CheckRelease(deployed)
	}
	var errs []error
	for name, img := range deployed {
		if want := set.Name(name); !slices.Contains(set.Services, name) || img != want {
			errs = append(errs, fmt.Errorf("Deployment %s: image %q, but make images builds %s (%s)", name, img, want, images.EnvPath))
		}
	}
	return errors.Join(errs...)
}

// compose validates every compose file set and the Dockerfile.
func (c checker) compose(ctx context.Context, dockerCompose string) error {
	var errs []error
	dir := c.path(composePath)
	imgs, err := images.Load(c.repo)
	if err != nil {
		return err
	}
	for _, set := range compose.FileSets {
		resolved, err := compose.Config(ctx, dockerCompose, dir, set)
		if err == nil {
			var p compose.Project
			if p, err = compose.Parse(resolved); err == nil {
				err = errors.Join(compose.Wiring(p, c.repo, filepath.Join(dir, "prometheus.yml")), compose.Images(p, imgs.Name))
			}
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("compose %s:\n%w", strings.Join(set, " + "), err))
			continue
		}
		fmt.Fprintf(c.out, "ok   compose %s: valid (docker-compose config) and wired\n", strings.Join(set, " + "))
	}
	df, err1 := os.ReadFile(c.path(dockerfilePath))
	ig, err2 := os.ReadFile(c.path(dockerfilePath + ".dockerignore"))
	gw, err3 := os.ReadFile(c.path("go.work"))
	if err := errors.Join(err1, err2, err3); err != nil {
		return errors.Join(append(errs, err)...)
	}
	if err := compose.Dockerfile(df, ig, gw); err != nil {
		errs = append(errs, err)
	} else {
		fmt.Fprintf(c.out, "ok   %s: static checks (make images-test runs the images this build path shares with it)\n", dockerfilePath)
	}
	return errors.Join(errs...)
}

// rules lints the alerts, their runbook links and the dashboard, and keeps
// the generated PrometheusRule in sync.
func (c checker) rules(write bool) error {
	f, err := c.ruleFile()
	if err != nil {
		return err
	}
	runbook, err := os.ReadFile(c.path(runbookPath))
	if err != nil {
		return err
	}
	var errs []error
	if err := rules.Lint(f, runbook); err != nil {
		errs = append(errs, fmt.Errorf("%s:\n%w", alertsPath, err))
	}
	gen, err := rules.PrometheusRule(f)
	if err != nil {
		return err
	}
	if write {
		if err := os.WriteFile(c.path(rulePath), gen, 0o644); err != nil {
			return err
		}
		fmt.Fprintf(c.out, "wrote %s\n", rulePath)
	} else if cur, err := os.ReadFile(c.path(rulePath)); err != nil || !bytes.Equal(cur, gen) {
		errs = append(errs, fmt.Errorf("%s is not generated from %s: run `go run ./deploy/check rules -write`", rulePath, alertsPath))
	}
	d, err := c.dashboard()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	if err := dashboard.Lint(d); err != nil {
		errs = append(errs, fmt.Errorf("%s:\n%w", dashboardPath, err))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	fmt.Fprintf(c.out, "ok   rules: %s lints, every alert has a runbook section, %s is in sync; %s lints\n", alertsPath, rulePath, dashboardPath)
	return nil
}

func (c checker) dashboard() (dashboard.Dashboard, error) {
	data, err := os.ReadFile(c.path(dashboardPath))
	if err != nil {
		return dashboard.Dashboard{}, err
	}
	d, err := dashboard.Parse(data)
	if err != nil {
		return dashboard.Dashboard{}, fmt.Errorf("%s: %w", dashboardPath, err)
	}
	return d, nil
}

// metrics scrapes the endpoints until every referenced metric is exported
// (or the wait is over) and lists what is missing.
func (c checker) metrics(ctx context.Context, urls []string, wait time.Duration) error {
	f, err := c.ruleFile()
	if err != nil {
		return err
	}
	ruleRefs, recorded, err := rules.Refs(f, alertsPath)
	if err != nil {
		return err
	}
	d, err := c.dashboard()
	if err != nil {
		return err
	}
	dashRefs, err := dashboard.Refs(d, dashboardPath)
	if err != nil {
		return err
	}
	refs := append(ruleRefs, dashRefs...)
	client := &http.Client{Timeout: 10 * time.Second}
	deadline := time.Now().Add(wait)
	for {
		exported, scrapeErr := scrape.FetchAll(ctx, client, urls)
		missing := scrape.Missing(refs, exported, recorded)
		if scrapeErr == nil && len(missing) == 0 {
			fmt.Fprintf(c.out, "ok   metrics: all %d references (%d distinct metrics) are exported by %d endpoints\n", len(refs), distinct(refs), len(urls))
			return nil
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			return missingError(missing, scrapeErr)
		}
		select {
		case <-ctx.Done():
		case <-time.After(2 * time.Second):
		}
	}
}

func distinct(refs []promql.Ref) int {
	m := map[string]bool{}
	for _, r := range refs {
		m[r.Metric] = true
	}
	return len(m)
}

func missingError(missing []promql.Ref, scrapeErr error) error {
	errs := []error{}
	if scrapeErr != nil {
		errs = append(errs, fmt.Errorf("scrape: %w", scrapeErr))
	}
	if len(missing) > 0 {
		var b strings.Builder
		fmt.Fprintf(&b, "%d references to metrics no endpoint exports:\n", len(missing))
		for _, m := range missing {
			fmt.Fprintf(&b, "  %s\n", m)
		}
		b.WriteString("(a metric vector with labels is exported only once a label set is used: initialize known label values at zero)")
		errs = append(errs, errors.New(b.String()))
	}
	return errors.Join(errs...)
}
