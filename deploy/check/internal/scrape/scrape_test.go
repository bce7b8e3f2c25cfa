package scrape

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/deploy/check/internal/promql"
)

// A real client_golang registry served over HTTP, as the services do.
func TestFetchExpandsHistogramsAndSummaries(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	f := promauto.With(reg)
	f.NewCounter(prometheus.CounterOpts{Name: "a_total", Help: "h"}).Inc()
	f.NewHistogram(prometheus.HistogramOpts{Name: "b_seconds", Help: "h"}).Observe(1)
	f.NewSummary(prometheus.SummaryOpts{Name: "c_seconds", Help: "h"}).Observe(1)
	f.NewGauge(prometheus.GaugeOpts{Name: "d_entries", Help: "h"})
	// A vector nobody has used yet is not exported at all.
	f.NewCounterVec(prometheus.CounterOpts{Name: "e_total", Help: "h"}, []string{"reason"})
	srv := httptest.NewServer(promhttp.HandlerFor(reg, promhttp.HandlerOpts{EnableOpenMetrics: true}))
	t.Cleanup(srv.Close)

	got, err := Fetch(context.Background(), srv.Client(), srv.URL)
	require.NoError(t, err)
	want := []string{"a_total", "b_seconds_bucket", "b_seconds_sum", "b_seconds_count", "c_seconds", "c_seconds_sum", "c_seconds_count", "d_entries"}
	for _, n := range want {
		require.True(t, got[n], "missing %s in %v", n, got)
	}
	require.False(t, got["e_total"], "an unused vector is not exported")
	require.False(t, got["b_seconds"], "a histogram has no bare series")
}

func TestMissing(t *testing.T) {
	t.Parallel()
	refs := []promql.Ref{
		{Source: "d.json", Where: "p", Metric: "x_total"},
		{Source: "a.yaml", Where: "A", Metric: "y_seconds_bucket"},
		{Source: "a.yaml", Where: "B", Metric: "up"},
		{Source: "a.yaml", Where: "C", Metric: "job:x:rate5m"},
		{Source: "a.yaml", Where: "D", Metric: "gone_total"},
	}
	exported := map[string]bool{"x_total": true, "y_seconds_bucket": true}
	got := Missing(refs, exported, map[string]bool{"job:x:rate5m": true})
	require.Equal(t, []promql.Ref{{Source: "a.yaml", Where: "D", Metric: "gone_total"}}, got)
}

func TestParseRejectsGarbage(t *testing.T) {
	t.Parallel()
	_, err := Parse(strings.NewReader("this is { not an exposition\n"))
	require.Error(t, err)
}

func TestFetchReportsHTTPErrors(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(srv.Close)
	_, err := Fetch(context.Background(), srv.Client(), srv.URL)
	require.ErrorContains(t, err, "404")
}
