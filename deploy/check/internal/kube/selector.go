package kube

import (
	"fmt"
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// selector is a label selector reduced to what the manifests use:
// matchLabels and In/NotIn/Exists/DoesNotExist expressions.
type selector struct {
	match map[string]string
	exprs []metav1.LabelSelectorRequirement
}

func selectorOf(ls *metav1.LabelSelector) (selector, error) {
	if ls == nil {
		return selector{}, nil
	}
	for _, e := range ls.MatchExpressions {
		switch e.Operator {
		case metav1.LabelSelectorOpIn, metav1.LabelSelectorOpNotIn, metav1.LabelSelectorOpExists, metav1.LabelSelectorOpDoesNotExist:
		default:
			return selector{}, fmt.Errorf("unknown operator %q", e.Operator)
		}
	}
	return selector{match: ls.MatchLabels, exprs: ls.MatchExpressions}, nil
}

func (s selector) empty() bool { return len(s.match) == 0 && len(s.exprs) == 0 }

func (s selector) matches(labels map[string]string) bool {
	for k, v := range s.match {
		if labels[k] != v {
			return false
		}
	}
	for _, e := range s.exprs {
		v, ok := labels[e.Key]
		switch e.Operator {
		case metav1.LabelSelectorOpIn:
			if !ok || !slices.Contains(e.Values, v) {
				return false
			}
		case metav1.LabelSelectorOpNotIn:
			if ok && slices.Contains(e.Values, v) {
				return false
			}
		case metav1.LabelSelectorOpExists:
			if !ok {
				return false
			}
		case metav1.LabelSelectorOpDoesNotExist:
			if ok {
				return false
			}
		}
	}
	return true
}
