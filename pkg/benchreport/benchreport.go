// Package benchreport records benchmark results in one shape so `make bench`
// can merge every service's measurements into BENCHMARKS.md and
// benchmarks.json. Each result carries a baseline measured in the same run:
// a number without a comparison on this shared two-core machine says little.
package benchreport

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// Result is one measurement. Ratio is oriented so that bigger is always
// better: value/baseline for throughputs, baseline/value for latencies.
type Result struct {
	Name     string  `json:"name"`
	Value    float64 `json:"value"`
	Unit     string  `json:"unit"`
	Baseline float64 `json:"baseline"`
	Ratio    float64 `json:"ratio"`
	Notes    string  `json:"notes"`
}

// Higher builds a result where a bigger value is better (throughput).
func Higher(name, unit string, value, baseline float64, notes string) Result {
	r := Result{Name: name, Unit: unit, Value: value, Baseline: baseline, Notes: notes}
	if baseline != 0 {
		r.Ratio = value / baseline
	}
	return r
}

// Lower builds a result where a smaller value is better (latency, counts of
// bad things).
func Lower(name, unit string, value, baseline float64, notes string) Result {
	r := Result{Name: name, Unit: unit, Value: value, Baseline: baseline, Notes: notes}
	if value != 0 {
		r.Ratio = baseline / value
	}
	return r
}

// Group is the file one benchmark program writes.
type Group struct {
	Group   string   `json:"group"`
	Method  string   `json:"method"`
	Results []Result `json:"results"`
}

// Save writes the results of one group to dir/<group>.json, replacing an
// earlier run of the same group.
func Save(dir, group string, results []Result) error {
	return SaveGroup(dir, Group{Group: group, Results: results})
}

// SaveGroup is Save with a description of the method used.
func SaveGroup(dir string, g Group) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("create bench dir: %w", err)
	}
	b, err := json.MarshalIndent(g, "", "  ")
	if err != nil {
		return fmt.Errorf("encode results of %s: %w", g.Group, err)
	}
	path := filepath.Join(dir, g.Group+".json")
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// Load reads every group file in dir.
func Load(dir string) ([]Group, error) {
	paths, err := filepath.Glob(filepath.Join(dir, "*.json"))
	if err != nil {
		return nil, fmt.Errorf("list %s: %w", dir, err)
	}
	groups := make([]Group, 0, len(paths))
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", p, err)
		}
		var g Group
		if err := json.Unmarshal(b, &g); err != nil {
			return nil, fmt.Errorf("decode %s: %w", p, err)
		}
		groups = append(groups, g)
	}
	return groups, nil
}
