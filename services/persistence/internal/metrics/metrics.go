// Package metrics defines the persistence service's Prometheus metrics on an
// explicit registry. Labels never carry user ids or values: the value
// histogram is labelled by metric and source only.
package metrics

import (
	"errors"
	"fmt"
	"math"
	"sort"

	"github.com/prometheus/client_golang/prometheus"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	"github.com/biobridge/bridge/pkg/catalog"
)

const ns = "biobridge_persistence"

// Metrics holds every metric the service records.
type Metrics struct {
	// Writes.
	RowsWritten     *prometheus.CounterVec // table
	EventsWritten   *prometheus.CounterVec // status: inserted, updated, duplicate, rejected, deleted, ...
	Rejections      *prometheus.CounterVec // level (event, reading), reason
	TxSeconds       *prometheus.HistogramVec
	TxEvents        prometheus.Histogram
	TxRetries       prometheus.Counter
	GroupRequests   prometheus.Histogram
	GroupWait       prometheus.Histogram
	GroupIsolations prometheus.Counter
	// values holds the accepted-value histograms' observers by metric and
	// source, resolved once: writes observe every reading.
	values map[string]*[5]prometheus.Observer
	// bounds are each metric's bucket upper bounds (see ObserveValue).
	bounds map[string][]float64

	// Latest cache.
	CacheErrors      *prometheus.CounterVec // op
	CacheRepairs     *prometheus.CounterVec // result
	CacheReads       *prometheus.CounterVec // result: hit, miss, error
	CacheInvalidated prometheus.Counter
	NearReads        *prometheus.CounterVec // result: hit, miss, bypass
	NearFlushes      prometheus.Counter

	// Outbox.
	OutboxLeased  prometheus.Counter
	OutboxAcked   prometheus.Counter
	OutboxNacked  prometheus.Counter
	OutboxWritten *prometheus.CounterVec // topic

	// Audit.
	AuditWritten prometheus.Counter
	AuditDropped prometheus.Counter
	AuditErrors  prometheus.Counter

	// Partitions.
	PartitionsCreated prometheus.Counter
	PartitionsDropped *prometheus.CounterVec // table
	MaintenanceErrors prometheus.Counter

	// Erasure.
	UsersErased prometheus.Counter
	// WritesRefused counts events and deletions refused because their user
	// was erased.
	WritesRefused prometheus.Counter

	// Watches.
	WatchStreams prometheus.Gauge
}

// Nop returns metrics registered nowhere (tools, migrations).
func Nop() *Metrics {
	m, _ := New(prometheus.NewRegistry())
	return m
}

// New creates the metrics and registers them on reg.
func New(reg prometheus.Registerer) (*Metrics, error) {
	m := &Metrics{
		RowsWritten: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "rows_written_total",
			Help: "Rows inserted, by table.",
		}, []string{"table"}),
		EventsWritten: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "events_total",
			Help: "Events handled by WriteEvents and DeleteRecords, by outcome (inserted, updated, duplicate, rejected, deleted, already_deleted, not_found).",
		}, []string{"status"}),
		Rejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "rejections_total",
			Help: "Rejected events and readings, by level and reason.",
		}, []string{"level", "reason"}),
		TxSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: ns, Name: "tx_seconds",
			Help:    "Duration of write transactions, by outcome.",
			Buckets: []float64{0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5},
		}, []string{"result"}),
		TxEvents: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Name: "tx_events",
			Help:    "Events (record versions and deletions) per write transaction.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 15),
		}),
		TxRetries: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "tx_retries_total",
			Help: "Write transactions retried after a deadlock, serialization failure or lock timeout.",
		}),
		GroupRequests: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Name: "group_commit_requests",
			Help:    "Calls merged into one group-commit transaction.",
			Buckets: prometheus.ExponentialBuckets(1, 2, 10),
		}),
		GroupWait: prometheus.NewHistogram(prometheus.HistogramOpts{
			Namespace: ns, Name: "group_commit_wait_seconds",
			Help:    "Time a call waited in the group-commit queue before its transaction started.",
			Buckets: []float64{0.0001, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1},
		}),
		GroupIsolations: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "group_commit_isolations_total",
			Help: "Group-commit transactions that failed and were retried call by call, so one caller's failure does not fail the others.",
		}),
		CacheErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "cache_errors_total",
			Help: "Latest-cache (Redis) operations that failed, by operation. Writes and reads continue on PostgreSQL.",
		}, []string{"op"}),
		CacheRepairs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "cache_repairs_total",
			Help: "Latest-cache entries rebuilt from PostgreSQL, by trigger (read_miss, after_error) and result.",
		}, []string{"trigger", "result"}),
		CacheReads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "cache_reads_total",
			Help: "Latest-value reads, by result: hit (Redis), miss or error (answered from PostgreSQL).",
		}, []string{"result"}),
		CacheInvalidated: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "cache_invalidations_total",
			Help: "Cache entries dropped because an update arrived out of commit order or after a lost update.",
		}),
		NearReads: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "near_cache_reads_total",
			Help: "Latest-cache hash reads through the per-replica near-cache, by result: hit (served from this process), miss (read from Redis and kept) or bypass (read from Redis without the near-cache: it is off, not connected, its invalidations are not confirmed recent enough, or the user was just written here).",
		}, []string{"result"}),
		NearFlushes: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "near_cache_flushes_total",
			Help: "Near-cache flushes: its Redis connection closed (the entries it tracked are dropped) or Redis flushed its databases.",
		}),
		OutboxLeased: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "outbox_leased_total", Help: "Outbox entries leased.",
		}),
		OutboxAcked: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "outbox_acked_total", Help: "Outbox entries acknowledged (published).",
		}),
		OutboxNacked: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "outbox_nacked_total", Help: "Outbox entries released after a failed publish.",
		}),
		OutboxWritten: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "outbox_written_total", Help: "Outbox entries committed, by topic.",
		}, []string{"topic"}),
		AuditWritten: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "audit_written_total", Help: "Audit records written.",
		}),
		AuditDropped: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "audit_dropped_total",
			Help: "Audit records lost because the buffer was full or PostgreSQL kept failing. Alert on any increase.",
		}),
		AuditErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "audit_write_errors_total", Help: "Failed audit batch inserts (retried).",
		}),
		PartitionsCreated: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "partitions_created_total", Help: "Time partitions created.",
		}),
		PartitionsDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: ns, Name: "partitions_dropped_total", Help: "Time partitions dropped by the retention policy, by table.",
		}, []string{"table"}),
		UsersErased: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "users_erased_total", Help: "Users whose data was erased (DeleteUserData).",
		}),
		WritesRefused: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "erased_user_writes_refused_total", Help: "Events, deletions and connection events refused because their user was erased.",
		}),
		MaintenanceErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Namespace: ns, Name: "maintenance_errors_total", Help: "Failed partition maintenance runs.",
		}),
		WatchStreams: prometheus.NewGauge(prometheus.GaugeOpts{
			Namespace: ns, Name: "watch_streams", Help: "Open WatchLatest streams.",
		}),
		values: map[string]*[5]prometheus.Observer{},
		bounds: map[string][]float64{},
	}
	cs := []prometheus.Collector{
		m.RowsWritten, m.EventsWritten, m.Rejections, m.TxSeconds, m.TxEvents, m.TxRetries,
		m.GroupRequests, m.GroupWait, m.GroupIsolations,
		m.CacheErrors, m.CacheRepairs, m.CacheReads, m.CacheInvalidated, m.NearReads, m.NearFlushes,
		m.OutboxLeased, m.OutboxAcked, m.OutboxNacked, m.OutboxWritten,
		m.AuditWritten, m.AuditDropped, m.AuditErrors,
		m.PartitionsCreated, m.PartitionsDropped, m.MaintenanceErrors, m.WatchStreams,
		m.UsersErased, m.WritesRefused,
	}
	for _, p := range []string{"readings", "events", "audit_log"} {
		m.PartitionsDropped.WithLabelValues(p)
	}
	// One histogram per catalog metric, each with buckets spread over the
	// metric's valid range (a heart rate and a step count share no useful
	// bucket layout). They share one name; the metric is a constant label.
	for _, cm := range catalog.All() {
		h := prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace:   ns,
			Name:        "reading_value",
			Help:        "Accepted reading values in canonical units, by metric and source, to spot implausible data. Values are counted at their bucket's upper bound, so _sum reveals no exact reading.",
			ConstLabels: prometheus.Labels{"metric": cm.Name},
			Buckets:     valueBuckets(cm),
		}, []string{"source"})
		m.bounds[cm.Name] = valueBuckets(cm)
		var obs [5]prometheus.Observer
		for i := range obs {
			obs[i] = h.WithLabelValues(SourceLabel(biometricsv1.Source(i)))
		}
		m.values[cm.Name] = &obs
		cs = append(cs, h)
	}
	var errs []error
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("register persistence metrics: %w", err)
	}
	return m, nil
}

// valueBuckets spreads 10 buckets linearly over the metric's range
// (category metrics get one bucket per code).
func valueBuckets(m catalog.Metric) []float64 {
	if m.Kind == catalog.Category {
		var b []float64
		for v := m.Min; v <= m.Max; v++ {
			b = append(b, v)
		}
		return b
	}
	const n = 10
	step := (m.Max - m.Min) / n
	b := make([]float64, 0, n+1)
	for i := 0; i <= n; i++ {
		v := m.Min + float64(i)*step
		// Round to 4 significant digits so bucket labels stay readable.
		if v != 0 {
			mag := math.Pow(10, math.Floor(math.Log10(math.Abs(v)))-3)
			v = math.Round(v/mag) * mag
		}
		b = append(b, v)
	}
	return b
}

// ObserveValue records an accepted value. The histogram observes the upper
// bound of the value's bucket, not the value: the bucket counts are the
// same, but the exported _sum can no longer be differenced between scrapes
// to recover one user's exact reading in a quiet deployment.
func (m *Metrics) ObserveValue(metric string, source biometricsv1.Source, v float64) {
	obs, ok := m.values[metric]
	if !ok || int(source) < 0 || int(source) >= len(obs) {
		return
	}
	obs[source].Observe(bucketBound(m.bounds[metric], v))
}

// bucketBound is the smallest bound >= v (the last bound past the range).
func bucketBound(bounds []float64, v float64) float64 {
	i := sort.SearchFloat64s(bounds, v)
	if i == len(bounds) {
		i = len(bounds) - 1
	}
	return bounds[i]
}

// SourceLabel is the label value of a source ("whoop", "oura", ...).
func SourceLabel(s biometricsv1.Source) string {
	switch s {
	case biometricsv1.Source_SOURCE_WHOOP:
		return "whoop"
	case biometricsv1.Source_SOURCE_OURA:
		return "oura"
	case biometricsv1.Source_SOURCE_HEALTHKIT:
		return "healthkit"
	case biometricsv1.Source_SOURCE_INTERNAL:
		return "internal"
	}
	return "unspecified"
}
