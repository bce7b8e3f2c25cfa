// Package rules loads and lints the Prometheus rule file shared by compose
// and Kubernetes (deploy/prometheus/alerts.yaml), renders it as a
// PrometheusRule, and lists the metrics each rule queries.
package rules

import (
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"

	"github.com/prometheus/common/model"
	"sigs.k8s.io/yaml"

	"github.com/biobridge/bridge/deploy/check/internal/promql"
)

// File is a Prometheus rule file. Its JSON names are those of both the
// rule-file format and the PrometheusRule spec, so one type serves both.
type File struct {
	Groups []Group `json:"groups"`
}

// Group is a rule group.
type Group struct {
	Name     string `json:"name"`
	Interval string `json:"interval,omitempty"`
	Rules    []Rule `json:"rules"`
}

// Rule is an alerting rule (Alert set) or a recording rule (Record set).
type Rule struct {
	Record        string            `json:"record,omitempty"`
	Alert         string            `json:"alert,omitempty"`
	Expr          string            `json:"expr"`
	For           string            `json:"for,omitempty"`
	KeepFiringFor string            `json:"keep_firing_for,omitempty"`
	Labels        map[string]string `json:"labels,omitempty"`
	Annotations   map[string]string `json:"annotations,omitempty"`
}

// Name is the alert or record name.
func (r Rule) Name() string {
	if r.Alert != "" {
		return r.Alert
	}
	return r.Record
}

// Parse decodes a rule file strictly: an unknown or misspelled key is an
// error, as Prometheus itself would refuse it.
func Parse(data []byte) (File, error) {
	var f File
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return File{}, fmt.Errorf("decode rule file: %w", err)
	}
	return f, nil
}

var severities = map[string]bool{"critical": true, "warning": true, "info": true}

// Lint checks what Prometheus checks (expressions parse, durations are
// valid, names are unique) and what operators rely on: every alert has a
// severity, a summary, a description and a runbook_url whose fragment is a
// heading of the runbook, and every alert-like heading of the runbook has
// an alert.
func Lint(f File, runbook []byte) error {
	var errs []error
	anchors := Anchors(runbook)
	groups := map[string]bool{}
	alerts := map[string]bool{}
	records := map[string]bool{}
	for _, g := range f.Groups {
		if g.Name == "" {
			errs = append(errs, errors.New("a group has no name"))
		}
		if groups[g.Name] {
			errs = append(errs, fmt.Errorf("group %q: defined twice", g.Name))
		}
		groups[g.Name] = true
		if g.Interval != "" {
			if _, err := model.ParseDuration(g.Interval); err != nil {
				errs = append(errs, fmt.Errorf("group %q: interval: %w", g.Name, err))
			}
		}
		for i, r := range g.Rules {
			where := fmt.Sprintf("group %q rule %d (%s)", g.Name, i, r.Name())
			if (r.Alert == "") == (r.Record == "") {
				errs = append(errs, fmt.Errorf("%s: exactly one of alert and record must be set", where))
			}
			if _, err := promql.MetricNames(r.Expr); err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", where, err))
			}
			for name, d := range map[string]string{"for": r.For, "keep_firing_for": r.KeepFiringFor} {
				if d == "" {
					continue
				}
				if _, err := model.ParseDuration(d); err != nil {
					errs = append(errs, fmt.Errorf("%s: %s: %w", where, name, err))
				}
			}
			if r.Record != "" {
				if !model.UTF8Validation.IsValidMetricName(r.Record) || !strings.Contains(r.Record, ":") {
					errs = append(errs, fmt.Errorf("%s: record name must be level:metric:operations", where))
				}
				if records[r.Record] {
					errs = append(errs, fmt.Errorf("%s: recorded twice", where))
				}
				records[r.Record] = true
				continue
			}
			if alerts[r.Alert] {
				errs = append(errs, fmt.Errorf("%s: alert defined twice", where))
			}
			alerts[r.Alert] = true
			errs = append(errs, lintAlert(where, r, anchors)...)
		}
	}
	for _, a := range anchorsLikeAlerts(runbook) {
		if !alerts[a] {
			errs = append(errs, fmt.Errorf("runbook: section %q has no alert of that name", a))
		}
	}
	return errors.Join(errs...)
}

func lintAlert(where string, r Rule, anchors map[string]bool) []error {
	var errs []error
	if !severities[r.Labels["severity"]] {
		errs = append(errs, fmt.Errorf("%s: labels.severity must be critical, warning or info, not %q", where, r.Labels["severity"]))
	}
	for _, k := range []string{"summary", "description", "runbook_url"} {
		if strings.TrimSpace(r.Annotations[k]) == "" {
			errs = append(errs, fmt.Errorf("%s: annotations.%s is empty", where, k))
		}
	}
	if raw := r.Annotations["runbook_url"]; raw != "" {
		u, err := url.Parse(raw)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("%s: runbook_url: %w", where, err))
		case !strings.HasSuffix(u.Path, "docs/runbook.md"):
			errs = append(errs, fmt.Errorf("%s: runbook_url must point at docs/runbook.md", where))
		case !anchors[u.Fragment]:
			errs = append(errs, fmt.Errorf("%s: runbook_url fragment %q is not a heading of docs/runbook.md", where, u.Fragment))
		case u.Fragment != strings.ToLower(r.Alert):
			errs = append(errs, fmt.Errorf("%s: runbook_url fragment %q should be the alert's own section %q", where, u.Fragment, strings.ToLower(r.Alert)))
		}
	}
	return errs
}

var (
	heading    = regexp.MustCompile(`(?m)^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$`)
	notSlugged = regexp.MustCompile(`[^\p{L}\p{N}_ -]`)
	alertLike  = regexp.MustCompile(`^Biobridge[A-Za-z0-9]+$`)
)

// Anchors returns the GitHub-style anchors of a Markdown document's
// headings: lower case, punctuation dropped, spaces turned into hyphens.
func Anchors(md []byte) map[string]bool {
	out := map[string]bool{}
	for _, m := range heading.FindAllSubmatch(md, -1) {
		text := strings.ToLower(strings.TrimSpace(string(m[1])))
		text = strings.ReplaceAll(text, "`", "")
		text = notSlugged.ReplaceAllString(text, "")
		out[strings.ReplaceAll(text, " ", "-")] = true
	}
	return out
}

func anchorsLikeAlerts(md []byte) []string {
	var out []string
	for _, m := range heading.FindAllSubmatch(md, -1) {
		t := strings.Trim(strings.TrimSpace(string(m[1])), "`")
		if alertLike.MatchString(t) {
			out = append(out, t)
		}
	}
	return out
}

// Refs lists every metric the rules query, and the names the recording
// rules produce (which need no exporter).
func Refs(f File, source string) (refs []promql.Ref, recorded map[string]bool, err error) {
	recorded = map[string]bool{}
	var errs []error
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				recorded[r.Record] = true
			}
			names, err := promql.MetricNames(r.Expr)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %s: %w", source, r.Name(), err))
				continue
			}
			for _, n := range names {
				refs = append(refs, promql.Ref{Source: source, Where: r.Name(), Metric: n})
			}
		}
	}
	return refs, recorded, errors.Join(errs...)
}

// PrometheusRuleName is the name of the generated PrometheusRule.
const PrometheusRuleName = "biobridge"

// header starts the generated PrometheusRule file.
const header = `# GENERATED by ` + "`go run ./deploy/check rules -write`" + ` from
# deploy/prometheus/alerts.yaml. Do not edit: edit alerts.yaml and
# regenerate; ` + "`go run ./deploy/check kustomize`" + ` fails when they differ.
`

// PrometheusRule renders f as a monitoring.coreos.com/v1 PrometheusRule.
func PrometheusRule(f File) ([]byte, error) {
	obj := struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name string `json:"name"`
		} `json:"metadata"`
		Spec File `json:"spec"`
	}{APIVersion: "monitoring.coreos.com/v1", Kind: "PrometheusRule", Spec: f}
	obj.Metadata.Name = PrometheusRuleName
	body, err := yaml.Marshal(obj)
	if err != nil {
		return nil, fmt.Errorf("encode prometheus rule: %w", err)
	}
	var b bytes.Buffer
	b.WriteString(header)
	b.Write(body)
	return b.Bytes(), nil
}
