// Package limiter bounds concurrency with load shedding: a request waits at
// most a fixed budget for a slot and is then rejected with
// RESOURCE_EXHAUSTED and a retry hint, instead of queueing without bound
// while its client times out anyway. In-use, waiting and wait-time metrics
// make saturation visible before shedding starts.
package limiter

import (
	"context"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/biobridge/bridge/pkg/apperr"
)

// RetryAfter is the retry hint sent with shed requests.
const RetryAfter = time.Second

// metrics are shared by every limiter on a registry (label "limiter"), so
// several limiters can be created on the same registry; promauto cannot be
// used because it panics on the second registration.
type metrics struct {
	inUse   *prometheus.GaugeVec
	waiting *prometheus.GaugeVec
	wait    *prometheus.HistogramVec
	shed    *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) metrics {
	m := metrics{
		inUse: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "biobridge_limiter_in_use",
			Help: "Slots currently held.",
		}, []string{"limiter"}),
		waiting: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "biobridge_limiter_waiting",
			Help: "Requests currently waiting for a slot.",
		}, []string{"limiter"}),
		wait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "biobridge_limiter_wait_seconds",
			Help:    "Time spent waiting for a slot, including waits that ended in shedding.",
			Buckets: []float64{0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5},
		}, []string{"limiter"}),
		shed: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "biobridge_limiter_shed_total",
			Help: "Requests rejected because no slot freed up within the wait budget.",
		}, []string{"limiter"}),
	}
	if reg == nil {
		return m
	}
	m.inUse = register(reg, m.inUse)
	m.waiting = register(reg, m.waiting)
	m.wait = register(reg, m.wait)
	m.shed = register(reg, m.shed)
	return m
}

// register registers c, or returns the collector already registered under
// the same name so a second limiter on one registry shares the vectors. A
// conflicting, different metric of the same name (a programming error that
// tests catch when they gather the registry) leaves c unregistered: the
// limiter still limits, its metrics are just not exported.
func register[T prometheus.Collector](reg prometheus.Registerer, c T) T {
	if err := reg.Register(c); err != nil {
		if are, ok := err.(prometheus.AlreadyRegisteredError); ok {
			if existing, ok := are.ExistingCollector.(T); ok {
				return existing
			}
		}
	}
	return c
}

// Limiter is a counting semaphore with a wait budget.
type Limiter struct {
	name       string
	slots      chan struct{}
	waitBudget time.Duration

	inUse   prometheus.Gauge
	waiting prometheus.Gauge
	wait    prometheus.Observer
	shed    prometheus.Counter
}

// New returns a limiter allowing max concurrent holders (at least 1) whose
// Acquire waits at most waitBudget. reg may be nil (no metrics).
func New(name string, max int, waitBudget time.Duration, reg prometheus.Registerer) *Limiter {
	if max < 1 {
		max = 1
	}
	m := newMetrics(reg)
	return &Limiter{
		name:       name,
		slots:      make(chan struct{}, max),
		waitBudget: waitBudget,
		inUse:      m.inUse.WithLabelValues(name),
		waiting:    m.waiting.WithLabelValues(name),
		wait:       m.wait.WithLabelValues(name),
		shed:       m.shed.WithLabelValues(name),
	}
}

// Acquire takes a slot, waiting at most the wait budget (and never past
// ctx). The returned release must be called exactly once; extra calls are
// no-ops. Past the budget the error is an *apperr.Error with Code
// ResourceExhausted, Reason "overloaded" and RetryAfter; when ctx ends first
// the error is ctx.Err().
func (l *Limiter) Acquire(ctx context.Context) (release func(), err error) {
	// Fast path: a free slot costs no timer.
	select {
	case l.slots <- struct{}{}:
		l.wait.Observe(0)
		return l.acquired(), nil
	default:
	}
	start := time.Now()
	l.waiting.Inc()
	defer l.waiting.Dec()
	timer := time.NewTimer(l.waitBudget)
	defer timer.Stop()
	select {
	case l.slots <- struct{}{}:
		l.wait.Observe(time.Since(start).Seconds())
		return l.acquired(), nil
	case <-timer.C:
		l.wait.Observe(time.Since(start).Seconds())
		l.shed.Inc()
		return nil, apperr.E(apperr.ResourceExhausted, "overloaded", "server overloaded, retry later").
			WithRetryAfter(RetryAfter)
	case <-ctx.Done():
		l.wait.Observe(time.Since(start).Seconds())
		return nil, ctx.Err()
	}
}

func (l *Limiter) acquired() func() {
	l.inUse.Inc()
	var once sync.Once
	return func() {
		once.Do(func() {
			l.inUse.Dec()
			<-l.slots
		})
	}
}

// UnaryInterceptor limits the given full method names
// ("/biobridge.ingest.v1.IngestService/HandleWhoopWebhook"); other methods
// pass through. With no methods given, every method is limited.
func (l *Limiter) UnaryInterceptor(methods ...string) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if len(methods) > 0 && !slices.Contains(methods, info.FullMethod) {
			return handler(ctx, req)
		}
		release, err := l.Acquire(ctx)
		if err != nil {
			return nil, err
		}
		defer release()
		return handler(ctx, req)
	}
}
