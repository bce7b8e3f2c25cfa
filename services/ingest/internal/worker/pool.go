// Package worker runs ingest's fetch jobs: a pool of workers leases due jobs
// from the durable queue, keeps each lease alive while its job runs, hands
// the job to the handler registered for its kind, and records the outcome:
// done, retried later (with backoff and jitter, or at the time a rate limit
// or a pending score names), parked until the user reconnects a broken
// vendor connection, or dead after the last attempt.
//
// Nothing is held only in memory: a job is in PostgreSQL from the moment it
// is acknowledged until it is done or dead. If the process dies, its leases
// expire and other workers (or the restarted process) take the jobs over;
// the handlers' effects are idempotent downstream (persistence dedupes by
// record identity and content), so a job run twice has the effect of one.
package worker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/biobridge/bridge/pkg/telemetry"
	"github.com/biobridge/bridge/services/ingest/internal/store"
)

// Handler runs one kind of job.
type Handler interface {
	// Handle does the job's work and returns its outcome ("stored",
	// "unknown_user", ...; a short stable word, used as a metric label).
	// A *Retry error reschedules the job, a *Permanent error buries it, and
	// any other error is transient: retried with backoff until the last
	// attempt, then dead.
	Handle(ctx context.Context, j store.Job) (outcome string, err error)
}

// Retry asks for the job to run again after After. Count false means the
// wait is not the job's failure (a rate limit, a score still pending) and
// does not bring it closer to dead; Count true is a failed attempt, waited
// out with at least the pool's backoff.
type Retry struct {
	After time.Duration
	Count bool
	// Reason is a short stable word (a metric label).
	Reason string
	// Detail, when set, is recorded as the job's last error instead of
	// Reason (never PHI).
	Detail string
}

func (r *Retry) Error() string {
	if r.Detail != "" {
		return r.Detail
	}
	return r.Reason
}

// Permanent is a failure no retry can fix; the job is dead at once (an
// operator may still retry it with RetryJobs after fixing the cause).
type Permanent struct {
	Reason string
	Err    error
}

func (p *Permanent) Error() string {
	if p.Err != nil {
		return p.Reason + ": " + p.Err.Error()
	}
	return p.Reason
}

func (p *Permanent) Unwrap() error { return p.Err }

// Park sets the job aside until the user reconnects: the vendor connection
// it needs is broken, and running it again before then would only spend its
// attempts. UserID's connection at the job's vendor, generation Generation
// (its connected_at), is the one it waits on; a newer generation resumes
// it (store.Store.Resume). Reason is a short stable word, shown in ListJobs.
type Park struct {
	UserID     string
	Generation time.Time
	Reason     string
}

func (p *Park) Error() string { return p.Reason }

// Config tunes the pool.
type Config struct {
	// TracerProvider makes the spans (nil: the global one).
	TracerProvider trace.TracerProvider
	// Owner identifies this process in lease_owner (host and pid).
	Owner string
	// Workers is how many jobs run at once.
	Workers int
	// Lease is how long a job is held without renewal; the holder renews
	// it every Lease/3 while the job runs.
	Lease time.Duration
	// PollInterval is how often idle workers look for due jobs; enqueues
	// in this process wake them at once.
	PollInterval time.Duration
	// MaxAttempts is the attempts a job gets before it is dead.
	MaxAttempts int
	// RetryBase and RetryMax bound the exponential backoff between failed
	// attempts; the actual wait is drawn with full
	// jitter so a vendor outage does not end in a synchronized stampede.
	RetryBase time.Duration
	RetryMax  time.Duration
	// ShutdownGrace is how long running jobs may finish at shutdown before
	// they are cancelled and released.
	ShutdownGrace time.Duration
	// Retention is how long done jobs (and so their dedupe keys) are kept
	// (longer than any vendor's retry window).
	Retention time.Duration
	// MaintenanceInterval is how often queue depth is measured and old
	// jobs purged.
	MaintenanceInterval time.Duration
	// MaxBackground is how many background jobs (priority below
	// store.PriorityLive: backfill, reconciliation) run at once in this
	// process (0: Workers minus a quarter of them, at least one kept for
	// live work when Workers > 1): a backfill never occupies every worker
	// while webhooks wait.
	MaxBackground int
	// Vendors are the vendors whose queue-depth series start at zero.
	Vendors []string
}

// Defaults of the pool's settings, written once: ingest's configuration
// (INGEST_WORKERS, INGEST_JOB_LEASE, ...) reads its variables over them,
// and NewPool gives a zero field the same.
const (
	DefaultWorkers             = 8
	DefaultLease               = time.Minute
	DefaultPollInterval        = time.Second
	DefaultMaxAttempts         = 8
	DefaultRetryBase           = 2 * time.Second
	DefaultRetryMax            = 10 * time.Minute
	DefaultShutdownGrace       = 10 * time.Second
	DefaultRetention           = 7 * 24 * time.Hour
	DefaultMaintenanceInterval = 15 * time.Second
)

func (c *Config) setDefaults() {
	if c.Workers <= 0 {
		c.Workers = DefaultWorkers
	}
	if c.Lease <= 0 {
		c.Lease = DefaultLease
	}
	if c.PollInterval <= 0 {
		c.PollInterval = DefaultPollInterval
	}
	if c.MaxAttempts <= 0 {
		c.MaxAttempts = DefaultMaxAttempts
	}
	if c.RetryBase <= 0 {
		c.RetryBase = DefaultRetryBase
	}
	if c.RetryMax <= 0 {
		c.RetryMax = DefaultRetryMax
	}
	if c.ShutdownGrace <= 0 {
		c.ShutdownGrace = DefaultShutdownGrace
	}
	if c.Retention <= 0 {
		c.Retention = DefaultRetention
	}
	if c.MaintenanceInterval <= 0 {
		c.MaintenanceInterval = DefaultMaintenanceInterval
	}
	if c.MaxBackground <= 0 || c.MaxBackground > c.Workers {
		c.MaxBackground = c.Workers
		if c.Workers > 1 {
			c.MaxBackground = c.Workers - max(1, c.Workers/4)
		}
	}
}

// Pool runs jobs.
type Pool struct {
	cfg      Config
	store    *store.Store
	handlers map[string]Handler
	logger   *slog.Logger
	m        *poolMetrics
	wake     chan struct{}
	tracer   trace.Tracer
	// background counts the background jobs running (or being leased) in
	// this process.
	background atomic.Int64
}

// NewPool returns a pool running handlers[kind] for each job kind.
func NewPool(store *store.Store, handlers map[string]Handler, cfg Config, reg prometheus.Registerer, logger *slog.Logger) *Pool {
	cfg.setDefaults()
	p := &Pool{cfg: cfg, store: store, handlers: handlers, logger: logger, m: newPoolMetrics(reg), wake: make(chan struct{}, 1),
		tracer: telemetry.TracerProviderOr(cfg.TracerProvider).Tracer("github.com/biobridge/bridge/services/ingest/internal/worker")}
	p.initDepth()
	for _, v := range cfg.Vendors {
		for kind := range handlers {
			p.m.dead.WithLabelValues(v, kind)
		}
	}
	return p
}

// Wake tells an idle worker that a job was just enqueued.
func (p *Pool) Wake() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// Run works until ctx ends, then lets running jobs finish within the
// shutdown grace, cancels the rest and hands their leases back.
func (p *Pool) Run(ctx context.Context) error {
	// Jobs run on a context of their own: the shutdown signal stops the
	// leasing at once but gives running jobs the grace period.
	jobCtx, cancelJobs := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelJobs()
	var wg sync.WaitGroup
	for range p.cfg.Workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.work(ctx, jobCtx)
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		p.maintain(ctx)
	}()
	<-ctx.Done()
	done := make(chan struct{})
	go func() {
		wg.Wait()
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(p.cfg.ShutdownGrace):
		p.logger.Warn("jobs still running at the end of the shutdown grace; cancelling them")
		cancelJobs()
		<-done
	}
	return nil
}

func (p *Pool) work(ctx, jobCtx context.Context) {
	poll := time.NewTimer(0)
	defer poll.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.wake:
		case <-poll.C:
		}
		for ctx.Err() == nil {
			j, ok := p.lease(ctx)
			if !ok {
				break
			}
			// More may be due: let another idle worker look too.
			p.Wake()
			p.run(jobCtx, j)
			if j.Priority < store.PriorityLive {
				p.background.Add(-1)
			}
		}
		poll.Reset(p.cfg.PollInterval)
	}
}

// lease takes the next due job. A background slot is reserved before
// leasing; without one only live jobs are taken. A background job keeps
// its slot until it has run (the caller gives it back).
func (p *Pool) lease(ctx context.Context) (store.Job, bool) {
	minPriority := math.MinInt16
	reserved := p.background.Add(1) <= int64(p.cfg.MaxBackground)
	if !reserved {
		p.background.Add(-1)
		minPriority = store.PriorityLive
	}
	leased, err := p.store.LeaseAtLeast(ctx, p.cfg.Owner, 1, p.cfg.Lease, minPriority)
	if err != nil || len(leased) == 0 {
		if reserved {
			p.background.Add(-1)
		}
		if err != nil && ctx.Err() == nil {
			p.logger.Warn("cannot lease jobs", slog.Any("err", err))
		}
		return store.Job{}, false
	}
	if reserved && leased[0].Priority >= store.PriorityLive {
		p.background.Add(-1)
	}
	return leased[0], true
}

// run handles one leased job, renewing its lease meanwhile, and records
// the result (fenced by the lease token).
func (p *Pool) run(ctx context.Context, j store.Job) {
	labels := []string{j.Vendor, j.Kind}
	// One span per attempt: the token broker, vendor and persistence calls
	// nest under it.
	ctx, span := p.tracer.Start(ctx, "ingest job "+j.Kind, trace.WithAttributes(
		attribute.Int64("job.id", j.ID), attribute.String("vendor", j.Vendor), attribute.String("job.kind", j.Kind),
		attribute.Int("job.attempt", j.Attempts)))
	defer span.End()
	start := time.Now()
	defer func() { p.m.duration.WithLabelValues(labels...).Observe(time.Since(start).Seconds()) }()
	log := p.logger.With(slog.Int64("job_id", j.ID), slog.String("vendor", j.Vendor), slog.String("kind", j.Kind), slog.Int("attempt", j.Attempts))

	h, ok := p.handlers[j.Kind]
	var outcome string
	var err error
	switch {
	case !ok:
		err = &Permanent{Reason: "no handler for kind " + j.Kind}
	case j.Attempts > p.cfg.MaxAttempts:
		// Leased again and again without a recorded result: its runs kill
		// the process or outlive the lease. Stop before it takes more down.
		err = &Permanent{Reason: fmt.Sprintf("abandoned by its workers %d times", j.Attempts-1)}
	default:
		outcome, err = p.handle(ctx, h, j)
	}
	if err != nil {
		span.SetStatus(codes.Error, "job not done")
	} else {
		span.SetAttributes(attribute.String("job.outcome", outcome))
	}
	// Recording the result must not be cut short by the shutdown.
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	var rerr error
	var retry *Retry
	var perm *Permanent
	var park *Park
	switch {
	case err == nil:
		rerr = p.store.Complete(rctx, j, outcome)
		if rerr == nil {
			p.m.done.WithLabelValues(j.Vendor, j.Kind, outcome).Inc()
			log.Debug("job done", slog.String("outcome", outcome))
		}
	case ctx.Err() != nil:
		// Cancelled at shutdown: hand the job back without counting it.
		rerr = p.store.Release(rctx, j)
		log.Info("job released at shutdown")
	case errors.As(err, &retry) && retry.Count && j.Attempts >= p.cfg.MaxAttempts:
		rerr = p.bury(rctx, j, retry.Error(), log)
	case errors.As(err, &retry):
		delay := retry.After
		if retry.Count {
			// A failure: at least the backoff, however soon the other side
			// said to come back.
			delay = max(delay, p.backoff(j.Attempts))
		} else if delay > 0 {
			// A named wait (rate-limit reset): a little jitter keeps every
			// waiting job from arriving in the same instant.
			delay += rand.N(delay/10 + 1)
		}
		detail := retry.Reason
		if retry.Detail != "" {
			detail = retry.Detail
		}
		rerr = p.store.Retry(rctx, j, delay, detail, retry.Count)
		if rerr == nil {
			p.m.retries.WithLabelValues(j.Vendor, j.Kind, retry.Reason).Inc()
			log.Debug("job rescheduled", slog.String("reason", retry.Reason), slog.Duration("after", delay))
		}
	case errors.As(err, &park):
		rerr = p.store.Park(rctx, j, park.UserID, park.Generation, park.Reason)
		if rerr == nil {
			p.m.parked.WithLabelValues(j.Vendor, j.Kind, park.Reason).Inc()
			log.Info("job parked until the user reconnects", slog.String("reason", park.Reason))
		}
	case errors.As(err, &perm):
		rerr = p.bury(rctx, j, perm.Error(), log)
	default:
		if j.Attempts >= p.cfg.MaxAttempts {
			rerr = p.bury(rctx, j, err.Error(), log)
			break
		}
		delay := p.backoff(j.Attempts)
		rerr = p.store.Retry(rctx, j, delay, err.Error(), true)
		if rerr == nil {
			p.m.retries.WithLabelValues(j.Vendor, j.Kind, "error").Inc()
			log.Info("job failed, retrying", slog.Duration("after", delay), slog.Any("err", err))
		}
	}
	if errors.Is(rerr, store.ErrLeaseLost) {
		p.m.leaseLost.WithLabelValues(j.Vendor, j.Kind).Inc()
		log.Warn("job lease was lost before its result was recorded; another worker runs it")
		return
	}
	if rerr != nil {
		// The lease will expire and the job runs again.
		log.Error("cannot record job result", slog.Any("err", rerr))
	}
}

// bury marks a job dead.
func (p *Pool) bury(ctx context.Context, j store.Job, reason string, log *slog.Logger) error {
	err := p.store.Bury(ctx, j, reason)
	if err == nil {
		p.m.dead.WithLabelValues(j.Vendor, j.Kind).Inc()
		log.Warn("job is dead", slog.String("last_error", reason))
	}
	return err
}

// handle runs the handler with the lease kept alive; if the lease is lost
// the handler's context is cancelled.
func (p *Pool) handle(ctx context.Context, h Handler, j store.Job) (string, error) {
	hctx, cancel := context.WithCancel(ctx)
	defer cancel()
	lost := make(chan struct{})
	stop := make(chan struct{})
	go func() {
		t := time.NewTicker(p.cfg.Lease / 3)
		defer t.Stop()
		for {
			select {
			case <-stop:
				return
			case <-t.C:
				err := p.store.Extend(context.WithoutCancel(hctx), j, p.cfg.Lease)
				if errors.Is(err, store.ErrLeaseLost) {
					close(lost)
					cancel()
					return
				}
			}
		}
	}()
	outcome, err := h.Handle(hctx, j)
	close(stop)
	select {
	case <-lost:
		return "", fmt.Errorf("job %d: %w", j.ID, store.ErrLeaseLost)
	default:
	}
	return outcome, err
}

// backoff is full jitter over an exponential ceiling: uniform in
// [base/2, min(max, base*2^(attempt-1))].
func (p *Pool) backoff(attempt int) time.Duration {
	ceil := p.cfg.RetryBase
	for i := 1; i < attempt && ceil < p.cfg.RetryMax; i++ {
		ceil *= 2
	}
	ceil = min(ceil, p.cfg.RetryMax)
	lo := p.cfg.RetryBase / 2
	if ceil <= lo {
		return lo
	}
	return lo + rand.N(ceil-lo)
}

// initDepth sets the depth series of the known vendors to zero: an empty
// queue must be exported as zero, not as nothing.
func (p *Pool) initDepth() {
	for _, v := range p.cfg.Vendors {
		for _, st := range []store.State{store.Queued, store.Running, store.Dead, store.Parked} {
			p.m.depth.WithLabelValues(v, st.String())
		}
	}
}

// maintain refreshes the queue-depth gauge and purges old finished jobs.
func (p *Pool) maintain(ctx context.Context) {
	t := time.NewTicker(p.cfg.MaintenanceInterval)
	defer t.Stop()
	lastPurge := time.Time{}
	for {
		if depths, err := p.store.Depths(ctx); err == nil {
			p.m.depth.Reset()
			p.initDepth()
			for _, d := range depths {
				p.m.depth.WithLabelValues(d.Vendor, d.State.String()).Set(float64(d.Count))
			}
		}
		if time.Since(lastPurge) > time.Hour {
			if n, err := p.store.Purge(ctx, p.cfg.Retention); err == nil {
				lastPurge = time.Now()
				if n > 0 {
					p.logger.Info("purged finished jobs", slog.Int64("count", n))
				}
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

type poolMetrics struct {
	done      *prometheus.CounterVec
	dead      *prometheus.CounterVec
	retries   *prometheus.CounterVec
	leaseLost *prometheus.CounterVec
	parked    *prometheus.CounterVec
	duration  *prometheus.HistogramVec
	depth     *prometheus.GaugeVec
}

func newPoolMetrics(reg prometheus.Registerer) *poolMetrics {
	m := &poolMetrics{
		done: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "biobridge_ingest_jobs_done_total",
			Help: "Jobs finished, by vendor, kind and outcome (stored, unchanged, deleted, unknown_user, not_found, ...).",
		}, []string{"vendor", "kind", "outcome"}),
		dead: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "biobridge_ingest_jobs_dead_total",
			Help: "Jobs that gave up after their last attempt (see ListJobs, RetryJobs).",
		}, []string{"vendor", "kind"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "biobridge_ingest_job_retries_total",
			Help: "Jobs put back in the queue, by reason (rate_limited, pending_score, error, ...).",
		}, []string{"vendor", "kind", "reason"}),
		leaseLost: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "biobridge_ingest_job_leases_lost_total",
			Help: "Jobs whose lease expired before their result was recorded (another worker took over).",
		}, []string{"vendor", "kind"}),
		parked: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "biobridge_ingest_jobs_parked_total",
			Help: "Jobs set aside until the user reconnects (their vendor connection is broken), by reason.",
		}, []string{"vendor", "kind", "reason"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "biobridge_ingest_job_duration_seconds",
			Help:    "Time to run one job attempt.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"vendor", "kind"}),
		depth: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "biobridge_ingest_jobs",
			Help: "Jobs queued, running, parked or dead, by vendor and state, counted in the job table (measured periodically; the same on every replica).",
		}, []string{"vendor", "state"}),
	}
	if reg != nil {
		reg.MustRegister(m.done, m.dead, m.retries, m.leaseLost, m.parked, m.duration, m.depth)
	}
	return m
}
