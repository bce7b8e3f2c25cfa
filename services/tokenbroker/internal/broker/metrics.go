package broker

import (
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/biobridge/bridge/services/tokenbroker/internal/vendors"
)

// Refresh outcomes (label values of refreshes_total).
const (
	OutcomeSuccess = "success"
	// OutcomeLostRace: the vendor said invalid_grant but the store showed
	// another holder had already rotated the tokens; their tokens were used.
	OutcomeLostRace = "lost_race"
	// OutcomeBroken: invalid_grant with nobody else having rotated: the
	// connection is dead and was marked broken.
	OutcomeBroken = "broken"
	// OutcomeSuperseded: the vendor refreshed, but the connection was
	// reconnected or revoked meanwhile, so the result was discarded.
	OutcomeSuperseded = "superseded"
	// OutcomeError: the vendor could not be reached or failed; nothing changed.
	OutcomeError = "error"
)

// Metrics are the broker's Prometheus metrics. Labels carry vendors,
// outcomes and reasons, never user ids.
type Metrics struct {
	Refreshes       *prometheus.CounterVec
	RefreshFailures *prometheus.CounterVec
	RefreshSeconds  *prometheus.HistogramVec
	LockWait        *prometheus.HistogramVec
	CacheHits       *prometheus.CounterVec
	CacheMisses     *prometheus.CounterVec
	// RejectedTokens counts access tokens callers reported as rejected by
	// the vendor.
	RejectedTokens *prometheus.CounterVec
	// ParkedResults counts refresh results parked in Redis because the
	// store could not take them.
	ParkedResults   *prometheus.CounterVec
	Reencrypted     prometheus.Counter
	ReencryptFailed prometheus.Counter
}

// NewMetrics registers the metrics on reg, every known label combination
// initialized at zero: a labelled series appears on /metrics only after
// its first use otherwise, and the dashboards and alerts (and rate() over
// the first event) need it before.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := newMetrics(reg)
	for _, v := range []string{vendors.Whoop, vendors.Oura} {
		for _, o := range []string{OutcomeSuccess, OutcomeLostRace, OutcomeBroken, OutcomeSuperseded, OutcomeError} {
			m.Refreshes.WithLabelValues(v, o)
		}
		for _, r := range []string{vendors.ReasonInvalidGrant, vendors.ReasonInvalidClient, vendors.ReasonRateLimited,
			vendors.ReasonVendorError, vendors.ReasonTimeout, vendors.ReasonNetwork, vendors.ReasonNoRefreshToken,
			vendors.ReasonOther, ReasonStoreFailed} {
			m.RefreshFailures.WithLabelValues(v, r)
		}
		m.RefreshSeconds.WithLabelValues(v)
		m.LockWait.WithLabelValues(v)
		m.CacheHits.WithLabelValues(v)
		m.CacheMisses.WithLabelValues(v)
		m.RejectedTokens.WithLabelValues(v)
		m.ParkedResults.WithLabelValues(v)
	}
	return m
}

// ReasonStoreFailed is the refresh failure of a rotation the vendor did
// but the store could not record.
const ReasonStoreFailed = "store_failed"

func newMetrics(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg)
	return &Metrics{
		Refreshes: f.NewCounterVec(prometheus.CounterOpts{
			Name: "biobridge_tokenbroker_refreshes_total",
			Help: "Token refreshes this instance sent to a vendor, by outcome.",
		}, []string{"vendor", "outcome"}),
		RefreshFailures: f.NewCounterVec(prometheus.CounterOpts{
			Name: "biobridge_tokenbroker_refresh_failures_total",
			Help: "Failed token refreshes by reason (invalid_grant, timeout, rate_limited, ...).",
		}, []string{"vendor", "reason"}),
		RejectedTokens: f.NewCounterVec(prometheus.CounterOpts{
			Name: "biobridge_tokenbroker_rejected_tokens_total",
			Help: "Access tokens callers reported as rejected by the vendor (each may cause an early refresh).",
		}, []string{"vendor"}),
		ParkedResults: f.NewCounterVec(prometheus.CounterOpts{
			Name: "biobridge_tokenbroker_refresh_results_parked_total",
			Help: "Refresh results parked in Redis because the token store could not take them at once.",
		}, []string{"vendor"}),
		RefreshSeconds: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "biobridge_tokenbroker_refresh_seconds",
			Help:    "Duration of the vendor token refresh call.",
			Buckets: []float64{0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30},
		}, []string{"vendor"}),
		LockWait: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "biobridge_tokenbroker_lock_wait_seconds",
			Help:    "Time spent waiting for another holder's refresh of the same connection.",
			Buckets: []float64{0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60},
		}, []string{"vendor"}),
		CacheHits: f.NewCounterVec(prometheus.CounterOpts{
			Name: "biobridge_tokenbroker_cache_hits_total",
			Help: "GetAccessToken calls answered from the Redis token cache.",
		}, []string{"vendor"}),
		CacheMisses: f.NewCounterVec(prometheus.CounterOpts{
			Name: "biobridge_tokenbroker_cache_misses_total",
			Help: "GetAccessToken calls that had to read the store (and maybe refresh).",
		}, []string{"vendor"}),
		Reencrypted: f.NewCounter(prometheus.CounterOpts{
			Name: "biobridge_tokenbroker_reencrypted_total",
			Help: "Connections whose tokens were re-encrypted with the primary key.",
		}),
		ReencryptFailed: f.NewCounter(prometheus.CounterOpts{
			Name: "biobridge_tokenbroker_reencrypt_failures_total",
			Help: "Connections the re-encryption pass could not open (key missing or data corrupt).",
		}),
	}
}
