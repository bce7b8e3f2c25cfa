// Package promql finds the metric names that PromQL expressions query, so
// the dashboard and the alert rules can be checked against what the
// services export. It uses Prometheus' own parser: an expression Prometheus
// would reject fails here too.
package promql

import (
	"errors"
	"fmt"
	"regexp"
	"sort"

	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/promql/parser"
)

// Ref is one metric name used somewhere.
type Ref struct {
	// Source is the file, for example deploy/grafana/biobridge.json.
	Source string
	// Where is the panel or rule inside it.
	Where string
	// Metric is the series name the expression selects.
	Metric string
}

func (r Ref) String() string { return fmt.Sprintf("%s: %s: %s", r.Source, r.Where, r.Metric) }

// grafanaIntervals are Grafana's built-in range variables; Grafana replaces
// them before the query reaches Prometheus.
var grafanaIntervals = regexp.MustCompile(`\$\{?__(rate_interval|interval|range)(_ms|_s)?\}?`)

// SubstituteGrafana replaces Grafana's interval variables with a fixed
// duration so the expression parses. Other template variables are expected
// inside label matcher strings, where they are already valid PromQL.
func SubstituteGrafana(expr string) string {
	return grafanaIntervals.ReplaceAllString(expr, "5m")
}

// MetricNames parses expr and returns the distinct metric names its vector
// selectors use, sorted. A selector without a metric name (only labels)
// is an error: nothing could verify what it selects.
func MetricNames(expr string) ([]string, error) {
	e, err := parser.NewParser(parser.Options{}).ParseExpr(expr)
	if err != nil {
		return nil, fmt.Errorf("parse %q: %w", expr, err)
	}
	seen := map[string]bool{}
	var errs []error
	parser.Inspect(e, func(n parser.Node, _ []parser.Node) error {
		vs, ok := n.(*parser.VectorSelector)
		if !ok {
			return nil
		}
		name := vs.Name
		if name == "" {
			for _, m := range vs.LabelMatchers {
				if m.Name == model.MetricNameLabel && m.Type == labels.MatchEqual {
					name = m.Value
				}
			}
		}
		if name == "" {
			errs = append(errs, fmt.Errorf("selector %s in %q has no metric name", vs, expr))
			return nil
		}
		seen[name] = true
		return nil
	})
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	names := make([]string, 0, len(seen))
	for n := range seen {
		names = append(names, n)
	}
	sort.Strings(names)
	return names, nil
}
