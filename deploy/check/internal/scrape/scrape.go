// Package scrape reads Prometheus text expositions and reports which
// referenced metrics no endpoint exports.
package scrape

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/biobridge/bridge/deploy/check/internal/promql"
)

// Builtin are series Prometheus itself creates for every target or rule;
// no exporter has them.
var Builtin = map[string]bool{
	"up": true, "scrape_duration_seconds": true, "scrape_samples_scraped": true,
	"scrape_samples_post_metric_relabeling": true, "scrape_series_added": true,
	"ALERTS": true, "ALERTS_FOR_STATE": true,
}

// Fetch scrapes url and returns the series names it exports.
func Fetch(ctx context.Context, client *http.Client, url string) (map[string]bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	// The classic text format: counter families keep their _total suffix.
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scrape %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scrape %s: %s", url, resp.Status)
	}
	return Parse(resp.Body)
}

// Parse reads a text exposition and returns its series names: a histogram
// family x yields x_bucket, x_sum and x_count; a summary yields x, x_sum
// and x_count; any other family its own name.
func Parse(r io.Reader) (map[string]bool, error) {
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("parse exposition: %w", err)
	}
	out := map[string]bool{}
	for name, f := range fams {
		if len(f.GetMetric()) == 0 {
			continue
		}
		switch f.GetType() {
		case dto.MetricType_HISTOGRAM, dto.MetricType_GAUGE_HISTOGRAM:
			out[name+"_bucket"] = true
			out[name+"_sum"] = true
			out[name+"_count"] = true
		case dto.MetricType_SUMMARY:
			out[name] = true
			out[name+"_sum"] = true
			out[name+"_count"] = true
		default:
			out[name] = true
		}
	}
	return out, nil
}

// Missing returns the refs whose metric is neither exported, recorded by a
// rule, nor built into Prometheus, sorted.
func Missing(refs []promql.Ref, exported, recorded map[string]bool) []promql.Ref {
	var out []promql.Ref
	for _, r := range refs {
		if !exported[r.Metric] && !recorded[r.Metric] && !Builtin[r.Metric] {
			out = append(out, r)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

// FetchAll scrapes every url and merges what they export.
func FetchAll(ctx context.Context, client *http.Client, urls []string) (map[string]bool, error) {
	all := map[string]bool{}
	var errs []error
	for _, u := range urls {
		names, err := Fetch(ctx, client, u)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for n := range names {
			all[n] = true
		}
	}
	return all, errors.Join(errs...)
}
