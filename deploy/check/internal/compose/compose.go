// Package compose validates deploy/compose and the Dockerfile without a
// container engine: docker-compose (Debian's package) validates the files
// against the Compose schema and resolves them; this package then checks
// the wiring that schema cannot know about: every service is built from a
// real cmd/ directory, is health-checked and scraped by Prometheus, the
// mounted files exist, and Kafka is the three-broker cluster the docs
// promise.
package compose

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"sigs.k8s.io/yaml"

	"github.com/biobridge/bridge/deploy/check/internal/acl"
)

// FileSets are the combinations of compose files that must validate.
var FileSets = [][]string{
	{"compose.yaml"},
	{"compose.yaml", "compose.tls.yaml"},
}

// EnvExample is the committed example env file; validation uses it in
// place of the real, git-ignored .env.
const EnvExample = ".env.example"

// Config runs `docker-compose config` on files in dir with the example env
// file and returns the resolved configuration. A schema violation, an
// unknown key or an unset required variable is an error with
// docker-compose's own message.
func Config(ctx context.Context, dockerCompose, dir string, files []string) ([]byte, error) {
	if _, err := exec.LookPath(dockerCompose); err != nil {
		return nil, fmt.Errorf("%s not found (Debian: apt-get update && apt-get install -y docker-compose): %w", dockerCompose, err)
	}
	args := []string{"--env-file", EnvExample}
	for _, f := range files {
		args = append(args, "-f", f)
	}
	args = append(args, "config")
	cmd := exec.CommandContext(ctx, dockerCompose, args...)
	cmd.Dir = dir
	// compose.yaml reads its env_file path from BIOBRIDGE_ENV_FILE so the
	// check can use the example instead of a real .env.
	cmd.Env = append(os.Environ(), "BIOBRIDGE_ENV_FILE="+EnvExample)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return nil, fmt.Errorf("docker-compose %s config: %w\n%s", strings.Join(files, " + "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.Bytes(), nil
}

// Project is the resolved compose configuration, as much as the checks read.
type Project struct {
	Services map[string]Service `json:"services"`
}

// Service is one resolved compose service.
type Service struct {
	Image       string            `json:"image"`
	Build       *Build            `json:"build"`
	Environment map[string]string `json:"environment"`
	Healthcheck *struct {
		Test    []string `json:"test"`
		Disable bool     `json:"disable"`
	} `json:"healthcheck"`
	ReadOnly bool     `json:"read_only"`
	Volumes  []string `json:"volumes"`
}

// Build is a service's build section.
type Build struct {
	Context    string            `json:"context"`
	Dockerfile string            `json:"dockerfile"`
	Args       map[string]string `json:"args"`
}

// Parse decodes `docker-compose config` output.
func Parse(resolved []byte) (Project, error) {
	var p Project
	if err := yaml.Unmarshal(resolved, &p); err != nil {
		return Project{}, fmt.Errorf("decode resolved compose config: %w", err)
	}
	return p, nil
}

type prometheusConfig struct {
	RuleFiles     []string `json:"rule_files"`
	ScrapeConfigs []struct {
		JobName       string `json:"job_name"`
		StaticConfigs []struct {
			Targets []string `json:"targets"`
		} `json:"static_configs"`
	} `json:"scrape_configs"`
}

// Wiring checks a resolved project against the repository at repo: the
// things a typo or a rename would silently break.
func Wiring(p Project, repo, prometheusYML string) error {
	var errs []error
	fail := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }

	promData, err := os.ReadFile(prometheusYML)
	if err != nil {
		return fmt.Errorf("read prometheus config: %w", err)
	}
	var prom prometheusConfig
	// Not strict: only the scrape targets and rule files are read here.
	if err := yaml.Unmarshal(promData, &prom); err != nil {
		return fmt.Errorf("%s: %w", prometheusYML, err)
	}
	scraped := map[string]string{}
	for _, sc := range prom.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			for _, t := range st.Targets {
				scraped[t] = sc.JobName
			}
		}
	}

	// Mounts of git-ignored paths (certs/) are made by the operator, not
	// committed; they need not exist here.
	var userMade []string
	if gi, err := os.ReadFile(filepath.Join(filepath.Dir(prometheusYML), ".gitignore")); err == nil {
		for _, l := range strings.Split(string(gi), "\n") {
			if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
				userMade = append(userMade, filepath.Join(filepath.Dir(prometheusYML), strings.TrimSuffix(l, "/")))
			}
		}
	}
	built := map[string]bool{}
	kafkaBrokers := 0
	for name, s := range p.Services {
		if err := acl.ReadersOnlyRead(s.Environment["SERVICE_ACL"]); err != nil {
			fail("service %s: %v", name, err)
		}
		for _, v := range s.Volumes {
			src, _, _ := strings.Cut(v, ":")
			if filepath.IsAbs(src) && !slices.Contains(userMade, filepath.Clean(src)) {
				if _, err := os.Stat(src); err != nil {
					fail("service %s: mounted path %s does not exist", name, src)
				}
			}
		}
		if s.Environment["KAFKA_PROCESS_ROLES"] != "" {
			kafkaBrokers++
			for k, want := range map[string]string{
				"KAFKA_MIN_INSYNC_REPLICAS":                      "2",
				"KAFKA_DEFAULT_REPLICATION_FACTOR":               "3",
				"KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR":         "3",
				"KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR": "3",
			} {
				if got := s.Environment[k]; got != want {
					fail("service %s: %s is %q, want %q", name, k, got, want)
				}
			}
			if n := len(strings.Split(s.Environment["KAFKA_CONTROLLER_QUORUM_VOTERS"], ",")); n != 3 {
				fail("service %s: KAFKA_CONTROLLER_QUORUM_VOTERS lists %d voters, want 3", name, n)
			}
		}
		if s.Build == nil {
			continue
		}
		svc := s.Build.Args["SERVICE"]
		if svc == "" {
			fail("service %s: build without the SERVICE build arg", name)
			continue
		}
		built[svc] = true
		if _, err := os.Stat(filepath.Join(s.Build.Context, "go.work")); err != nil {
			fail("service %s: build context %s is not the repository root (no go.work)", name, s.Build.Context)
		}
		if _, err := os.Stat(filepath.Join(s.Build.Context, s.Build.Dockerfile)); err != nil {
			fail("service %s: dockerfile %s not found in the build context", name, s.Build.Dockerfile)
		}
		if st, err := os.Stat(filepath.Join(repo, "services", svc, "cmd", svc)); err != nil || !st.IsDir() {
			fail("service %s: SERVICE=%s but services/%s/cmd/%s does not exist", name, svc, svc, svc)
		}
		if s.Healthcheck == nil || s.Healthcheck.Disable || !slices.Contains(s.Healthcheck.Test, "healthcheck") {
			fail("service %s: healthcheck must run the binary's healthcheck mode", name)
		}
		if !s.ReadOnly {
			fail("service %s: read_only must be true", name)
		}
		adminVar := strings.ToUpper(svc) + "_ADMIN_ADDR"
		addr := s.Environment[adminVar]
		if addr == "" {
			fail("service %s: %s is not set", name, adminVar)
			continue
		}
		port := addr[strings.LastIndex(addr, ":")+1:]
		target := name + ":" + port
		if job, ok := scraped[target]; !ok {
			fail("service %s: Prometheus does not scrape its admin port %s", name, target)
		} else if job != svc {
			fail("service %s: scraped as job %q, want %q (the alerts and dashboard group by job)", name, job, svc)
		}
	}
	if kafkaBrokers < 3 {
		fail("want three Kafka brokers in KRaft mode, found %d", kafkaBrokers)
	}
	// Every service binary (not devstack, not benchmarks) must run in compose.
	cmds, _ := filepath.Glob(filepath.Join(repo, "services", "*", "cmd", "*"))
	for _, c := range cmds {
		svc := filepath.Base(c)
		if svc != filepath.Base(filepath.Dir(filepath.Dir(c))) || svc == "devstack" {
			continue
		}
		if !built[svc] {
			fail("services/%s/cmd/%s is not built by any compose service", svc, svc)
		}
	}
	if len(prom.RuleFiles) == 0 {
		fail("%s: no rule_files", prometheusYML)
	}
	return errors.Join(errs...)
}

// Images checks that every service compose builds is tagged with the name
// `make images` gives that service's image (name(svc)), so `docker compose
// up` and `make images` make and use the same images.
func Images(p Project, name func(svc string) string) error {
	var errs []error
	names := make([]string, 0, len(p.Services))
	for n := range p.Services {
		names = append(names, n)
	}
	slices.Sort(names)
	for _, n := range names {
		s := p.Services[n]
		if s.Build == nil || s.Build.Args["SERVICE"] == "" {
			continue
		}
		if want := name(s.Build.Args["SERVICE"]); s.Image != want {
			errs = append(errs, fmt.Errorf("service %s: image %q, but make images builds %s", n, s.Image, want))
		}
	}
	return errors.Join(errs...)
}
