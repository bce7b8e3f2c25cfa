package kube

import (
	"encoding/json"
	"fmt"
	"reflect"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
)

// RuleSpec converts a rule file (in its JSON form, see package rules) into
// the PrometheusRule spec it must render as.
func RuleSpec(ruleFileJSON []byte) (*monitoringv1.PrometheusRuleSpec, error) {
	var spec monitoringv1.PrometheusRuleSpec
	if err := json.Unmarshal(ruleFileJSON, &spec); err != nil {
		return nil, fmt.Errorf("rule file as PrometheusRule spec: %w", err)
	}
	return &spec, nil
}

// checkPrometheusRules requires exactly one PrometheusRule whose spec equals
// the rule file, so compose and Kubernetes alert on the same rules.
func checkPrometheusRules(prs []*monitoringv1.PrometheusRule, want monitoringv1.PrometheusRuleSpec) []error {
	if len(prs) != 1 {
		return []error{fmt.Errorf("want exactly one PrometheusRule, rendered %d", len(prs))}
	}
	if !reflect.DeepEqual(prs[0].Spec, want) {
		return []error{fmt.Errorf("PrometheusRule %s differs from deploy/prometheus/alerts.yaml: run `go run ./deploy/check rules -write`", prs[0].Name)}
	}
	return nil
}

// PrometheusRuleSpecOf returns the spec of a decoded PrometheusRule (nil
// for any other object).
func PrometheusRuleSpecOf(obj any) *monitoringv1.PrometheusRuleSpec {
	if pr, ok := obj.(*monitoringv1.PrometheusRule); ok {
		return &pr.Spec
	}
	return nil
}
