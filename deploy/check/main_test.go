package main

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"sort"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/deploy/check/internal/dashboard"
	"github.com/biobridge/bridge/deploy/check/internal/rules"
	"github.com/biobridge/bridge/deploy/check/internal/testrepo"
)

func runCheck(t *testing.T, repo string, args ...string) (string, error) {
	t.Helper()
	var out bytes.Buffer
	all := append([]string{"check"}, args...)
	all = append(all, "-repo", repo)
	err := run(context.Background(), all, os.Getenv, &out)
	return out.String(), err
}

// requireDockerCompose skips on a developer machine without Debian's
// docker-compose, but fails in CI (CI=true), where it must be installed.
func requireDockerCompose(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("docker-compose"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("docker-compose is not installed (apt-get install -y docker-compose)")
		}
		t.Skip("docker-compose is not installed (apt-get install -y docker-compose)")
	}
}

func TestRepositoryPassesEveryStaticCheck(t *testing.T) {
	t.Parallel()
	root := testrepo.Root(t)
	out, err := runCheck(t, root, "kustomize")
	require.NoError(t, err)
	require.Contains(t, out, "ok   kustomize deploy/kubernetes/base")
	require.Contains(t, out, "ok   kustomize deploy/kubernetes/overlays/production")
	_, err = runCheck(t, root, "rules")
	require.NoError(t, err)
	requireDockerCompose(t)
	out, err = runCheck(t, root, "compose")
	require.NoError(t, err)
	require.Contains(t, out, "compose.yaml + compose.tls.yaml")
}

type mutation struct {
	name      string
	file      string
	old, new  string
	appendTxt string
	wantErr   string
}

func (m mutation) apply(t *testing.T, root string) {
	t.Helper()
	if m.appendTxt != "" {
		testrepo.Append(t, root, m.file, m.appendTxt)
		return
	}
	testrepo.Replace(t, root, m.file, m.old, m.new)
}

func TestKustomizeFailsOnBrokenManifests(t *testing.T) {
	t.Parallel()
	base := "deploy/kubernetes/base/"
	prod := "deploy/kubernetes/overlays/production/"
	tests := []mutation{
		{name: "misspelled field", file: base + "ingest.yaml", old: "readinessProbe:", new: "readinesProbe:", wantErr: `unknown field "spec.template.spec.containers[0].readinesProbe"`},
		{name: "field at the wrong level", file: base + "publisher.yaml", old: "      terminationGracePeriodSeconds: 30", new: "      terminationGracePeriodSeconds: 30\n      replicas: 2", wantErr: `unknown field "spec.template.spec.replicas"`},
		{name: "unknown api version", file: base + "gateway.yaml", old: "apiVersion: autoscaling/v2", new: "apiVersion: autoscaling/v3", wantErr: "autoscaling/v3"},
		{name: "wrong value type", file: base + "persistence.yaml", old: "maxUnavailable: 1", new: "maxUnavailable: [1]", wantErr: "persistence"},
		{name: "network policy selector typo", file: base + "networkpolicies.yaml", old: "app.kubernetes.io/name: gateway\n      ports:\n        - protocol: TCP\n          port: grpc", new: "app.kubernetes.io/name: gatewy\n      ports:\n        - protocol: TCP\n          port: grpc", wantErr: "matches no Deployment's pods"},
		{name: "service target port typo", file: base + "tokenbroker.yaml", old: "targetPort: grpc", new: "targetPort: grcp", wantErr: `targetPort "grcp" is not a port name`},
		{name: "probe on a missing port", file: base + "ingest.yaml", old: "port: 9101\n            periodSeconds: 5", new: "port: 9111\n            periodSeconds: 5", wantErr: "readiness probe: grpc port 9111 is not a container port"},
		{name: "writable root file system", file: base + "gateway.yaml", old: "readOnlyRootFilesystem: true", new: "readOnlyRootFilesystem: false", wantErr: "readOnlyRootFilesystem must be true"},
		{name: "root user", file: base + "publisher.yaml", old: "runAsNonRoot: true", new: "runAsNonRoot: false", wantErr: "runAsNonRoot must be true"},
		{name: "no memory limit", file: base + "persistence.yaml", old: "            limits:\n              memory: 1Gi\n", new: "", wantErr: "memory limit"},
		{name: "no preStop", file: base + "ingest.yaml", old: "          lifecycle:\n            preStop:\n              sleep:\n                seconds: 5\n", new: "", wantErr: "preStop"},
		{name: "short grace period", file: base + "ingest.yaml", old: "terminationGracePeriodSeconds: 30", new: "terminationGracePeriodSeconds: 5", wantErr: "terminationGracePeriodSeconds"},
		{name: "hpa points at nothing", file: base + "publisher.yaml", old: "    kind: Deployment\n    name: publisher", new: "    kind: Deployment\n    name: publsher", wantErr: "no HorizontalPodAutoscaler"},
		{name: "pdb selects nothing", file: base + "gateway.yaml", old: "  maxUnavailable: 1\n  selector:\n    matchLabels:\n      app.kubernetes.io/name: gateway", new: "  maxUnavailable: 1\n  selector:\n    matchLabels:\n      app.kubernetes.io/name: gw", wantErr: "no PodDisruptionBudget"},
		{name: "secret without an example", file: base + "ingest.yaml", old: "name: biobridge-ingest", new: "name: biobridge-ingest-secrets", wantErr: `Secret "biobridge-ingest-secrets" has no example`},
		{name: "committed secret", file: base + "kustomization.yaml", appendTxt: "\nsecretGenerator:\n  - name: leaked\n    literals: [\"SERVICE_TOKEN=abc\"]\n", wantErr: "Secrets must not be committed"},
		{name: "service monitor port typo", file: base + "servicemonitor.yaml", old: "- port: admin", new: "- port: metrics", wantErr: `has no port named "metrics"`},
		{name: "rule edited by hand", file: base + "prometheusrule.yaml", old: "> 300", new: "> 600", wantErr: "differs from deploy/prometheus/alerts.yaml"},
		{name: "base image make images does not build", file: base + "ingest.yaml", old: "image: biobridge/ingest:dev", new: "image: biobridge/ingest", wantErr: `Deployment ingest: image "biobridge/ingest", but make images builds biobridge/ingest:dev`},
		{name: "production images from two builds", file: prod + "kustomization.yaml", old: "newName: registry.example.com/biobridge/publisher\n    newTag: \"1.0.0\"", new: "newName: registry.example.com/biobridge/publisher\n    newTag: \"1.0.1\"", wantErr: "publisher: image \"registry.example.com/biobridge/publisher:1.0.1\" is not from the same build"},
		{name: "unpinned production image", file: prod + "kustomization.yaml", old: "newTag: \"1.0.0\"", new: "newTag: latest", wantErr: "must be pinned"},
		{name: "patch test no longer holds", file: prod + "patches/stores-ingest.yaml", old: "value: 5432", new: "value: 5433", wantErr: "kustomize build"},
		{name: "ingress to an internal service", file: prod + "ingress.yaml", old: "name: gateway\n                port:\n                  name: http\n          - path: /openapi.json", new: "name: persistence\n                port:\n                  name: grpc\n          - path: /openapi.json", wantErr: "only the gateway may be reachable from outside"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			root := testrepo.Copy(t)
			_, err := runCheck(t, root, "kustomize")
			require.NoError(t, err, "the unmodified copy must pass")
			tt.apply(t, root)
			_, err = runCheck(t, root, "kustomize")
			require.ErrorContains(t, err, tt.wantErr)
		})
	}
}

func TestRulesFailOnBrokenAlertsRunbookOrDashboard(t *testing.T) {
	t.Parallel()
	tests := []mutation{
		{name: "expression does not parse", file: alertsPath, old: "max(publisher_outbox_oldest_pending_age_seconds) > 300", new: "max(publisher_outbox_oldest_pending_age_seconds > 300", wantErr: "parse"},
		{name: "misspelled key", file: alertsPath, old: "        for: 5m\n", new: "        fr: 5m\n", wantErr: `unknown field "fr"`},
		{name: "bad duration", file: alertsPath, old: "for: 15m", new: "for: 15 minutes", wantErr: "for"},
		{name: "no severity", file: alertsPath, old: "severity: critical", new: "severity: page", wantErr: "labels.severity"},
		{name: "runbook section missing", file: runbookPath, old: "## BiobridgeDeadJobs", new: "## Dead jobs", wantErr: `fragment "biobridgedeadjobs" is not a heading`},
		{name: "runbook section without alert", file: runbookPath, appendTxt: "\n## BiobridgeSomethingElse\n\nText.\n", wantErr: `section "BiobridgeSomethingElse" has no alert`},
		{name: "generated rule stale", file: alertsPath, old: "> 0.05", new: "> 0.10", wantErr: "is not generated from"},
		{name: "dashboard expression does not parse", file: dashboardPath, old: `max(publisher_dead_letters_pending)`, new: `max(publisher_dead_letters_pending`, wantErr: "parse"},
		{name: "dashboard data source hard-coded", file: dashboardPath, old: `"uid": "${datasource}"`, new: `"uid": "P1809F7CD0C75ACF3"`, wantErr: "datasource must be"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			root := testrepo.Copy(t)
			_, err := runCheck(t, root, "rules")
			require.NoError(t, err, "the unmodified copy must pass")
			tt.apply(t, root)
			_, err = runCheck(t, root, "rules")
			require.ErrorContains(t, err, tt.wantErr)
		})
	}
}

func TestRulesWriteRegeneratesThePrometheusRule(t *testing.T) {
	t.Parallel()
	root := testrepo.Copy(t)
	testrepo.Replace(t, root, alertsPath, "> 0.05", "> 0.10")
	_, err := runCheck(t, root, "kustomize")
	require.ErrorContains(t, err, "differs from deploy/prometheus/alerts.yaml")
	_, err = runCheck(t, root, "rules", "-write")
	require.NoError(t, err)
	_, err = runCheck(t, root, "kustomize")
	require.NoError(t, err)
}

func TestComposeFailsOnBrokenFiles(t *testing.T) {
	t.Parallel()
	requireDockerCompose(t)
	c := "deploy/compose/"
	tests := []mutation{
		{name: "misspelled key", file: c + "compose.yaml", old: "  stop_grace_period: 20s", new: "  stop_grace_periode: 20s", wantErr: "stop_grace_periode"},
		{name: "unknown service in depends_on", file: c + "compose.yaml", old: "      ingest:\n        condition: service_healthy", new: "      ingst:\n        condition: service_healthy", wantErr: "ingst"},
		{name: "required secret missing from the example env", file: c + ".env.example", old: "OPERATOR_SERVICE_TOKEN=change-me-operator-token\n", new: "", wantErr: "OPERATOR_SERVICE_TOKEN"},
		{name: "service without cmd directory", file: c + "compose.yaml", old: "SERVICE: tokenbroker", new: "SERVICE: token-broker", wantErr: "services/token-broker/cmd/token-broker does not exist"},
		{name: "admin port not scraped", file: c + "prometheus.yml", old: "ingest:9201", new: "ingest:9210", wantErr: "Prometheus does not scrape its admin port ingest:9201"},
		{name: "wrong job name", file: c + "prometheus.yml", old: "job_name: publisher", new: "job_name: relay", wantErr: `scraped as job "relay"`},
		{name: "mounted file renamed", file: c + "compose.yaml", old: "../prometheus/alerts.yaml:", new: "../prometheus/alerts.yml:", wantErr: "alerts.yml does not exist"},
		{name: "min.insync.replicas lowered", file: c + "compose.yaml", old: `KAFKA_MIN_INSYNC_REPLICAS: "2"`, new: `KAFKA_MIN_INSYNC_REPLICAS: "1"`, wantErr: "KAFKA_MIN_INSYNC_REPLICAS"},
		{name: "tls override typo", file: c + "compose.tls.yaml", old: "  publisher:\n    volumes", new: "  publsher:\n    volumes", wantErr: "compose.yaml + compose.tls.yaml"},
		{name: "dockerfile runs as root", file: "deploy/docker/Dockerfile", old: "USER 65532:65532", new: "USER root", wantErr: "non-root USER"},
		{name: "dockerfile without healthcheck", file: "deploy/docker/Dockerfile", old: `CMD ["/service", "healthcheck"]`, new: `CMD ["/service"]`, wantErr: "HEALTHCHECK"},
		{name: "dockerfile builds its own way", file: "deploy/docker/Dockerfile", old: `scripts/images.sh rootfs "${SERVICE}" /out/rootfs`, new: `go build -o /out/rootfs/service ./services/${SERVICE}/cmd/${SERVICE}`, wantErr: "scripts/images.sh rootfs"},
		{name: "image name make images does not build", file: c + "compose.yaml", old: "image: biobridge/ingest:dev", new: "image: biobridge/ingest:latest", wantErr: `service ingest: image "biobridge/ingest:latest", but make images builds biobridge/ingest:dev`},
		{name: "images.env renames the images", file: "deploy/docker/images.env", old: "IMAGE_REPO=biobridge", new: "IMAGE_REPO=bb", wantErr: "but make images builds bb/gateway:dev"},
		{name: "dockerignore drops a module", file: "deploy/docker/Dockerfile.dockerignore", appendTxt: "pkg\n", wantErr: `"pkg" excludes pkg`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			root := testrepo.Copy(t)
			tt.apply(t, root)
			_, err := runCheck(t, root, "compose")
			require.ErrorContains(t, err, tt.wantErr)
		})
	}
}

// exposition serves every metric the dashboard and the alerts reference,
// except those in drop, in the text format: histograms as real
// histogram families so the _bucket suffix handling is exercised.
func exposition(t *testing.T, root string, drop map[string]bool) string {
	t.Helper()
	data, err := os.ReadFile(root + "/" + alertsPath)
	require.NoError(t, err)
	f, err := rules.Parse(data)
	require.NoError(t, err)
	refs, recorded, err := rules.Refs(f, alertsPath)
	require.NoError(t, err)
	data, err = os.ReadFile(root + "/" + dashboardPath)
	require.NoError(t, err)
	d, err := dashboard.Parse(data)
	require.NoError(t, err)
	drefs, err := dashboard.Refs(d, dashboardPath)
	require.NoError(t, err)
	names := map[string]bool{}
	for _, r := range append(refs, drefs...) {
		if !recorded[r.Metric] && r.Metric != "up" && !drop[r.Metric] {
			names[r.Metric] = true
		}
	}
	sorted := make([]string, 0, len(names))
	for n := range names {
		sorted = append(sorted, n)
	}
	sort.Strings(sorted)
	var b strings.Builder
	for _, n := range sorted {
		if base, ok := strings.CutSuffix(n, "_bucket"); ok {
			fmt.Fprintf(&b, "# TYPE %s histogram\n%s_bucket{le=\"+Inf\"} 1\n%s_sum 1\n%s_count 1\n", base, base, base, base)
			continue
		}
		fmt.Fprintf(&b, "# TYPE %s gauge\n%s 0\n", n, n)
	}
	return b.String()
}

func TestMetricsPassesWhenEverythingIsExported(t *testing.T) {
	t.Parallel()
	root := testrepo.Root(t)
	body := exposition(t, root, nil)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, body) }))
	t.Cleanup(srv.Close)
	out, err := runCheck(t, root, "metrics", "-url", srv.URL)
	require.NoError(t, err)
	require.Contains(t, out, "ok   metrics")
}

func TestMetricsFailsOnARenamedMetric(t *testing.T) {
	t.Parallel()
	root := testrepo.Root(t)
	// The publisher "renamed" its DLQ gauge: the alert and two panels break.
	body := exposition(t, root, map[string]bool{"publisher_dead_letters_pending": true}) +
		"# TYPE publisher_dlq_pending gauge\npublisher_dlq_pending 0\n"
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, body) }))
	t.Cleanup(srv.Close)
	_, err := runCheck(t, root, "metrics", "-url", srv.URL)
	require.ErrorContains(t, err, "deploy/prometheus/alerts.yaml: BiobridgeDeadLettersGrowing: publisher_dead_letters_pending")
	require.ErrorContains(t, err, `deploy/grafana/biobridge.json: panel "Dead letters pending": publisher_dead_letters_pending`)
}

func TestMetricsWaitsForMetricsToAppear(t *testing.T) {
	t.Parallel()
	root := testrepo.Root(t)
	full := exposition(t, root, nil)
	partial := exposition(t, root, map[string]bool{"biobridge_tokenbroker_refresh_failures_total": true})
	var scrapes atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		// The first scrape lacks a labelled counter nobody has touched yet.
		if scrapes.Add(1) == 1 {
			fmt.Fprint(w, partial)
			return
		}
		fmt.Fprint(w, full)
	}))
	t.Cleanup(srv.Close)
	_, err := runCheck(t, root, "metrics", "-url", srv.URL, "-wait", "1m")
	require.NoError(t, err)
	require.GreaterOrEqual(t, scrapes.Load(), int32(2))
}

func TestMetricsReportsUnreachableEndpoints(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out bytes.Buffer
	err := run(ctx, []string{"check", "metrics", "-repo", testrepo.Root(t), "-url", srv.URL + "/metrics"}, os.Getenv, &out)
	require.ErrorContains(t, err, "scrape")
}
