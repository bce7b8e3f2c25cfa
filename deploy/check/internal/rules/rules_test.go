package rules

import (
	"testing"

	"github.com/stretchr/testify/require"
	"sigs.k8s.io/yaml"

	"github.com/biobridge/bridge/deploy/check/internal/kube"
)

const good = `
groups:
  - name: g
    rules:
      - record: job:x_total:rate5m
        expr: sum by (job) (rate(x_total[5m]))
      - alert: BiobridgeX
        expr: job:x_total:rate5m > 1
        for: 5m
        labels: {severity: warning}
        annotations:
          summary: s
          description: d
          runbook_url: https://example.com/bridge/docs/runbook.md#biobridgex
`

const runbook = "# Runbook\n\n## BiobridgeX\n\nWhat to do.\n"

func TestLint(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name, file, runbook, wantErr string
	}{
		{name: "good", file: good, runbook: runbook},
		{name: "record without colons", file: replace(good, "record: job:x_total:rate5m", "record: x_rate"), runbook: runbook, wantErr: "level:metric:operations"},
		{name: "alert and record", file: replace(good, "      - alert: BiobridgeX", "      - alert: BiobridgeX\n        record: a:b:c"), runbook: runbook, wantErr: "exactly one of alert and record"},
		{name: "no description", file: replace(good, "description: d", "description: ''"), runbook: runbook, wantErr: "annotations.description is empty"},
		{name: "runbook elsewhere", file: replace(good, "docs/runbook.md#", "docs/ops.md#"), runbook: runbook, wantErr: "must point at docs/runbook.md"},
		{name: "runbook of another alert", file: replace(good, "#biobridgex", "#biobridgey"), runbook: runbook + "## BiobridgeY\n", wantErr: "should be the alert's own section"},
		{name: "duplicate group", file: good + "  - name: g\n    rules: []\n", runbook: runbook, wantErr: "defined twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			f, err := Parse([]byte(tt.file))
			require.NoError(t, err)
			err = Lint(f, []byte(tt.runbook))
			if tt.wantErr == "" {
				require.NoError(t, err)
				return
			}
			require.ErrorContains(t, err, tt.wantErr)
		})
	}
}

func replace(s, old, new string) string {
	for i := 0; i+len(old) <= len(s); i++ {
		if s[i:i+len(old)] == old {
			return s[:i] + new + s[i+len(old):]
		}
	}
	panic("fixture does not contain " + old)
}

func TestAnchors(t *testing.T) {
	t.Parallel()
	a := Anchors([]byte("# Runbook\n## BiobridgeDeadJobs\n### `Before` you start!\nnot # a heading\n"))
	require.Equal(t, map[string]bool{"runbook": true, "biobridgedeadjobs": true, "before-you-start": true}, a)
}

// The generated PrometheusRule must decode strictly into the Prometheus
// Operator's type and carry exactly the rule file's groups.
func TestPrometheusRuleRoundTrip(t *testing.T) {
	t.Parallel()
	f, err := Parse([]byte(good))
	require.NoError(t, err)
	out, err := PrometheusRule(f)
	require.NoError(t, err)
	doc, err := yaml.YAMLToJSON(out)
	require.NoError(t, err)
	dec, err := kube.NewDecoder()
	require.NoError(t, err)
	obj, err := dec.Decode(doc)
	require.NoError(t, err)
	fy, err := yaml.Marshal(f)
	require.NoError(t, err)
	fj, err := yaml.YAMLToJSON(fy)
	require.NoError(t, err)
	want, err := kube.RuleSpec(fj)
	require.NoError(t, err)
	require.Equal(t, "PrometheusRule", obj.GetObjectKind().GroupVersionKind().Kind)
	require.Equal(t, want, kube.PrometheusRuleSpecOf(obj))
}

func TestRefsSeparatesRecordedNames(t *testing.T) {
	t.Parallel()
	f, err := Parse([]byte(good))
	require.NoError(t, err)
	refs, recorded, err := Refs(f, "alerts.yaml")
	require.NoError(t, err)
	require.Equal(t, map[string]bool{"job:x_total:rate5m": true}, recorded)
	var metrics []string
	for _, r := range refs {
		metrics = append(metrics, r.Metric)
	}
	require.Equal(t, []string{"x_total", "job:x_total:rate5m"}, metrics)
}
