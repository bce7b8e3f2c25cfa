// Package dashboard lints the Grafana dashboard JSON and lists the metrics
// its panels query.
package dashboard

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/biobridge/bridge/deploy/check/internal/promql"
)

// Dashboard is the part of Grafana's dashboard model the check reads.
type Dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []Panel `json:"panels"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

// Panel is a panel or a row (whose collapsed panels are nested).
type Panel struct {
	ID         int         `json:"id"`
	Type       string      `json:"type"`
	Title      string      `json:"title"`
	Datasource *Datasource `json:"datasource"`
	Targets    []Target    `json:"targets"`
	Panels     []Panel     `json:"panels"`
}

// Datasource names a Grafana data source.
type Datasource struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

// Target is one query of a panel.
type Target struct {
	RefID      string      `json:"refId"`
	Expr       string      `json:"expr"`
	Datasource *Datasource `json:"datasource"`
}

// Parse decodes a dashboard.
func Parse(data []byte) (Dashboard, error) {
	var d Dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		return Dashboard{}, fmt.Errorf("decode dashboard: %w", err)
	}
	return d, nil
}

// Lint checks that the dashboard has a stable uid, unique panel ids, that
// every query panel reads the dashboard's Prometheus data source variable
// (so the same JSON works in compose and in any Grafana), and that every
// expression parses.
func Lint(d Dashboard) error {
	var errs []error
	if d.UID == "" || d.Title == "" {
		errs = append(errs, errors.New("dashboard needs a uid and a title (provisioned links and alerts use the uid)"))
	}
	dsVar := ""
	for _, v := range d.Templating.List {
		if v.Type == "datasource" && v.Query == "prometheus" {
			dsVar = "${" + v.Name + "}"
		}
	}
	if dsVar == "" {
		errs = append(errs, errors.New(`templating: no variable of type "datasource" with query "prometheus"`))
	}
	ids := map[int]string{}
	walk(d.Panels, func(p Panel) {
		if prev, ok := ids[p.ID]; ok {
			errs = append(errs, fmt.Errorf("panel %q: id %d already used by %q", p.Title, p.ID, prev))
		}
		ids[p.ID] = p.Title
		if p.Type == "row" {
			return
		}
		if len(p.Targets) == 0 {
			errs = append(errs, fmt.Errorf("panel %q: no queries", p.Title))
		}
		okDS := func(ds *Datasource) bool { return ds.Type == "prometheus" && ds.UID == dsVar }
		if p.Datasource != nil && !okDS(p.Datasource) {
			errs = append(errs, fmt.Errorf("panel %q: datasource must be {type: prometheus, uid: %s}", p.Title, dsVar))
		}
		for _, t := range p.Targets {
			if (t.Datasource == nil && p.Datasource == nil) || (t.Datasource != nil && !okDS(t.Datasource)) {
				errs = append(errs, fmt.Errorf("panel %q query %s: datasource must be {type: prometheus, uid: %s}", p.Title, t.RefID, dsVar))
			}
			if strings.TrimSpace(t.Expr) == "" {
				errs = append(errs, fmt.Errorf("panel %q query %s: empty expr", p.Title, t.RefID))
				continue
			}
			if _, err := promql.MetricNames(promql.SubstituteGrafana(t.Expr)); err != nil {
				errs = append(errs, fmt.Errorf("panel %q query %s: %w", p.Title, t.RefID, err))
			}
		}
	})
	return errors.Join(errs...)
}

// Refs lists every metric the panels query.
func Refs(d Dashboard, source string) ([]promql.Ref, error) {
	var refs []promql.Ref
	var errs []error
	walk(d.Panels, func(p Panel) {
		for _, t := range p.Targets {
			if t.Expr == "" {
				continue
			}
			names, err := promql.MetricNames(promql.SubstituteGrafana(t.Expr))
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: panel %q: %w", source, p.Title, err))
				continue
			}
			for _, n := range names {
				refs = append(refs, promql.Ref{Source: source, Where: fmt.Sprintf("panel %q", p.Title), Metric: n})
			}
		}
	})
	return refs, errors.Join(errs...)
}

func walk(ps []Panel, f func(Panel)) {
	for _, p := range ps {
		f(p)
		walk(p.Panels, f)
	}
}
