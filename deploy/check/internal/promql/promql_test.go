package promql

import (
	"testing"

	"github.com/stretchr/testify/require"
)

func TestMetricNames(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		expr    string
		want    []string
		wantErr string
	}{
		{
			name: "histogram quantile with label matchers",
			expr: `histogram_quantile(0.99, sum by (le) (rate(grpc_server_handling_seconds_bucket{grpc_method="GetLatest"}[5m])))`,
			want: []string{"grpc_server_handling_seconds_bucket"},
		},
		{
			name: "binary operation with vector matching and duplicates",
			expr: `sum by (job) (rate(a_total[5m])) / on (job) group_left sum by (job) (rate(b_total[5m])) and a_total`,
			want: []string{"a_total", "b_total"},
		},
		{
			name: "name given as a label matcher",
			expr: `{__name__="up", job="gateway"} == 0`,
			want: []string{"up"},
		},
		{
			name: "recording rule names with colons",
			expr: `sum(biobridge:gateway_webhook_requests:rate5m{code="503"})`,
			want: []string{"biobridge:gateway_webhook_requests:rate5m"},
		},
		{name: "syntax error", expr: `sum(rate(a_total[5m])`, wantErr: "parse"},
		{name: "unknown function", expr: `rote(a_total[5m])`, wantErr: "parse"},
		{name: "selector without a name", expr: `{job="x"}`, wantErr: "no metric name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			got, err := MetricNames(tt.expr)
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestSubstituteGrafana(t *testing.T) {
	t.Parallel()
	got := SubstituteGrafana(`rate(x_total{vendor=~"$vendor"}[$__rate_interval]) + rate(y_total[${__interval}])`)
	require.Equal(t, `rate(x_total{vendor=~"$vendor"}[5m]) + rate(y_total[5m])`, got)
	names, err := MetricNames(got)
	require.NoError(t, err)
	require.Equal(t, []string{"x_total", "y_total"}, names)
}
