package kube

import (
	"testing"

	"github.com/stretchr/testify/require"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestSelectorMatches(t *testing.T) {
	t.Parallel()
	pod := map[string]string{"app.kubernetes.io/name": "ingest", "tier": "data"}
	tests := []struct {
		name string
		sel  metav1.LabelSelector
		want bool
	}{
		{"empty selects all", metav1.LabelSelector{}, true},
		{"match labels", metav1.LabelSelector{MatchLabels: map[string]string{"app.kubernetes.io/name": "ingest"}}, true},
		{"label typo", metav1.LabelSelector{MatchLabels: map[string]string{"app.kubernetes.io/name": "ingset"}}, false},
		{"in", metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app.kubernetes.io/name", Operator: metav1.LabelSelectorOpIn, Values: []string{"gateway", "ingest"}}}}, true},
		{"not in", metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "tier", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"data"}}}}, false},
		{"exists", metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "tier", Operator: metav1.LabelSelectorOpExists}}}, true},
		{"does not exist", metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "tier", Operator: metav1.LabelSelectorOpDoesNotExist}}}, false},
	}
	for _, tt := range tests {
		s, err := selectorOf(&tt.sel)
		require.NoError(t, err)
		require.Equal(t, tt.want, s.matches(pod), tt.name)
	}
	_, err := selectorOf(&metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "a", Operator: "Like"}}})
	require.Error(t, err)
}

func TestPinned(t *testing.T) {
	t.Parallel()
	for img, want := range map[string]bool{
		"biobridge/ingest":                         false,
		"registry.example.com:5000/biobridge/x":    false,
		"registry.example.com:5000/biobridge/x:v1": true,
		"biobridge/x:latest":                       false,
		"biobridge/x@sha256:0123":                  true,
	} {
		require.Equal(t, want, pinned(img), img)
	}
}
