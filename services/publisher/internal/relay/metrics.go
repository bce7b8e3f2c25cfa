package relay

import (
	"sync"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/biobridge/bridge/pkg/topics"
)

// Metrics are the relay's Prometheus metrics. Labels carry topics, classes
// and reasons only: never user ids or event ids.
type Metrics struct {
	published      *prometheus.CounterVec
	failures       *prometheus.CounterVec
	deadLettered   *prometheus.CounterVec
	ackFailures    prometheus.Counter
	leaseFailures  prometheus.Counter
	leaseRenewals  *prometheus.CounterVec
	leaseStops     prometheus.Counter
	latency        prometheus.Histogram
	batchEntries   prometheus.Histogram
	kafkaConnected prometheus.Gauge
	outboxPending  prometheus.Gauge
	outboxLeased   prometheus.Gauge
	oldestAge      prometheus.Gauge
}

// NewMetrics registers the relay's metrics on reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	f := promauto.With(reg)
	m := &Metrics{
		published: f.NewCounterVec(prometheus.CounterOpts{
			Name: "publisher_published_total",
			Help: "Outbox entries published to their Kafka topic.",
		}, []string{"topic"}),
		failures: f.NewCounterVec(prometheus.CounterOpts{
			Name: "publisher_publish_failures_total",
			Help: "Failed publish attempts by class (transient, permanent, unknown) and reason.",
		}, []string{"class", "reason"}),
		deadLettered: f.NewCounterVec(prometheus.CounterOpts{
			Name: "publisher_dead_lettered_total",
			Help: "Outbox entries sent to the dead-letter topic, by reason.",
		}, []string{"reason"}),
		ackFailures: f.NewCounter(prometheus.CounterOpts{
			Name: "publisher_ack_failures_total",
			Help: "AckOutbox calls that failed; their entries are published again after the lease expires.",
		}),
		leaseRenewals: f.NewCounterVec(prometheus.CounterOpts{
			Name: "publisher_lease_renewals_total",
			Help: "RenewOutboxLease calls while a batch was being sent, by result (renewed, lost, error).",
		}, []string{"result"}),
		leaseStops: f.NewCounter(prometheus.CounterOpts{
			Name: "publisher_lease_stops_total",
			Help: "Batches stopped because the outbox lease would have run out before a send finished; their rest was given back.",
		}),
		leaseFailures: f.NewCounter(prometheus.CounterOpts{
			Name: "publisher_lease_failures_total",
			Help: "LeaseOutbox calls that failed (persistence unreachable).",
		}),
		latency: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "publisher_commit_to_publish_seconds",
			Help:    "Time from an outbox entry's commit to its acknowledgement after Kafka accepted it.",
			Buckets: []float64{.002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900},
		}),
		batchEntries: f.NewHistogram(prometheus.HistogramOpts{
			Name:    "publisher_lease_batch_entries",
			Help:    "Entries per leased batch.",
			Buckets: prometheus.ExponentialBuckets(1, 4, 7),
		}),
		kafkaConnected: f.NewGauge(prometheus.GaugeOpts{
			Name: "publisher_kafka_connected",
			Help: "1 when the last produce or metadata request reached a broker, else 0.",
		}),
		outboxPending: f.NewGauge(prometheus.GaugeOpts{
			Name: "publisher_outbox_pending_entries",
			Help: "Outbox entries not yet published (the backlog).",
		}),
		outboxLeased: f.NewGauge(prometheus.GaugeOpts{
			Name: "publisher_outbox_leased_entries",
			Help: "Outbox entries currently leased by a publisher.",
		}),
		oldestAge: f.NewGauge(prometheus.GaugeOpts{
			Name: "publisher_outbox_oldest_pending_age_seconds",
			Help: "Age of the oldest unpublished outbox entry (0 when none).",
		}),
	}
	// The label values dashboards and alerts look at exist from the start,
	// at zero, so that rate() and increase() also see the first failure.
	for _, topic := range []string{topics.Events, topics.Connections} {
		m.published.WithLabelValues(topic)
	}
	for _, cr := range [][2]string{{"transient", "broker_unavailable"}, {"permanent", "message_too_large"}, {"unknown", "unknown"}} {
		m.failures.WithLabelValues(cr[0], cr[1])
	}
	for _, reason := range []string{"message_too_large", "invalid_record", "max_attempts_exceeded"} {
		m.deadLettered.WithLabelValues(reason)
	}
	return m
}

// Counters are the relay's totals since start, for GetStatus.
type Counters struct {
	Published    int64
	Failed       int64
	DeadLettered int64
	Connected    bool
	LastError    string
}

// state holds what GetStatus reports; Prometheus counters cannot be read
// back cheaply, so the relay keeps its own totals too.
type state struct {
	published    atomic.Int64
	failed       atomic.Int64
	deadLettered atomic.Int64
	connected    atomic.Bool

	mu        sync.Mutex
	lastError string
}

func (s *state) setLastError(msg string) {
	s.mu.Lock()
	s.lastError = msg
	s.mu.Unlock()
}

func (s *state) counters() Counters {
	s.mu.Lock()
	defer s.mu.Unlock()
	return Counters{
		Published:    s.published.Load(),
		Failed:       s.failed.Load(),
		DeadLettered: s.deadLettered.Load(),
		Connected:    s.connected.Load(),
		LastError:    s.lastError,
	}
}
