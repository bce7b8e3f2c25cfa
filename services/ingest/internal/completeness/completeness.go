// Package completeness keeps the bridge's vendor data complete and says when
// it is not:
//
//   - Backfill on connect. New connections are found by asking the token
//     broker for active connections made since the newest one already
//     backfilled (ingest.backfills, shared by every replica). Each
//     connection generation (user, vendor, connected_at) gets one backfill:
//     its row and the first page job of every stream commit together, and
//     the row's primary key makes a second scheduler a no-op. Pages are
//     background jobs in the one durable queue; when none of a backfill's
//     jobs is left unfinished, the backfill is complete and a
//     backfill_completed connection event is queued in the same transaction.
//   - Reconciliation. Every interval one replica claims the round
//     (ingest.reconcile_rounds) and queues a re-read of the recent window of
//     every active connection, each connection at its own offset within the
//     interval (a hash of user and vendor), deduplicated per connection and
//     round.
//   - Staleness. Ingest reports (batched) when new data of a connection was
//     stored; the broker keeps last_data_at. Every check interval ingest asks
//     the broker to mark connections silent for longer than the threshold as
//     stale; the broker writes the stale and fresh events with the flips.
package completeness

import (
	"context"
	"crypto/rand"
	"fmt"
	"hash/fnv"
	"log/slog"
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	tokensv1 "github.com/biobridge/bridge/gen/go/biobridge/tokens/v1"
	"github.com/biobridge/bridge/pkg/logging"
	"github.com/biobridge/bridge/pkg/periodic"
	"github.com/biobridge/bridge/services/ingest/internal/store"
	"github.com/biobridge/bridge/services/ingest/internal/worker"
)

// The loops' defaults, for the zero fields of a Config (the service's
// configuration reads its own variables' defaults from here).
const (
	DefaultSyncInterval       = 10 * time.Second
	DefaultReconcileWindow    = 72 * time.Hour
	DefaultStaleCheckInterval = time.Minute
	DefaultReportInterval     = time.Second
)

// Config tunes the loops. A zero BackfillDays, ReconcileInterval or
// StaleAfter turns that part off; a zero SyncInterval, ReconcileWindow,
// StaleCheckInterval or ReportInterval takes its Default.
type Config struct {
	// Owner names this process in reconciliation claims.
	Owner string
	// Vendors are the vendors whose series start at zero.
	Vendors []string
	// BackfillDays is how much history a new connection gets.
	BackfillDays int
	// SyncInterval is how often new connections are looked for; it also
	// paces the completion of backfills.
	SyncInterval time.Duration
	// ReconcileInterval is the reconciliation period; ReconcileWindow how
	// far back each reconciliation reads.
	ReconcileInterval time.Duration
	ReconcileWindow   time.Duration
	// StaleAfter is the staleness threshold; StaleCheckInterval how often
	// it is applied.
	StaleAfter         time.Duration
	StaleCheckInterval time.Duration
	// ReportInterval is how often data arrivals are sent to the broker.
	ReportInterval time.Duration
}

func (c *Config) setDefaults() {
	if c.SyncInterval <= 0 {
		c.SyncInterval = DefaultSyncInterval
	}
	if c.StaleCheckInterval <= 0 {
		c.StaleCheckInterval = DefaultStaleCheckInterval
	}
	if c.ReportInterval <= 0 {
		c.ReportInterval = DefaultReportInterval
	}
	if c.ReconcileWindow <= 0 {
		c.ReconcileWindow = DefaultReconcileWindow
	}
}

// syncOverlap is how far before the newest backfilled connection the
// search for new ones starts: connection times are taken before their
// transactions commit, so a connection may become visible after a later
// one; the overlap catches it and the dedupe makes the rest free.
const syncOverlap = 10 * time.Minute

// pageSize is the broker page size used when listing connections.
const pageSize = 500

// Loops runs the completeness work.
type Loops struct {
	cfg    Config
	store  *store.Store
	broker tokensv1.TokenBrokerServiceClient
	logger *slog.Logger
	wake   func()
	m      *metrics

	mu       sync.Mutex
	arrivals map[arrivalKey]time.Time
	// counted is when the backfill gauges were last refreshed (by the
	// finisher's goroutine only).
	counted time.Time
}

// countEvery bounds how often the backfill gauges are recounted: counting
// reads the whole backfill table.
const countEvery = 15 * time.Second

type arrivalKey struct{ user, vendor string }

type metrics struct {
	backfills        *prometheus.GaugeVec
	backfillPages    *prometheus.GaugeVec
	completed        *prometheus.CounterVec
	reconciled       *prometheus.CounterVec
	reconcileSkipped *prometheus.CounterVec
	stale            *prometheus.GaugeVec
	reportFailures   prometheus.Counter
	loopFailures     *prometheus.CounterVec
	lastReconcileAt  prometheus.Gauge
	resumed          *prometheus.CounterVec
}

// New builds the loops. wake (optional) tells the local workers that jobs
// were enqueued.
func New(cfg Config, store *store.Store, broker tokensv1.TokenBrokerServiceClient, wake func(), reg prometheus.Registerer, logger *slog.Logger) *Loops {
	cfg.setDefaults()
	if wake == nil {
		wake = func() {}
	}
	f := promauto.With(reg)
	m := &metrics{
		backfills: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "biobridge_ingest_backfills",
			Help: "History backfills by vendor and state (running, completed), counted in the backfill table (the same on every replica).",
		}, []string{"vendor", "state"}),
		backfillPages: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "biobridge_ingest_backfill_pages",
			Help: "Pages of running backfills still to fetch (pending: queued or running) or given up (dead), by vendor: backfill progress.",
		}, []string{"vendor", "state"}),
		completed: f.NewCounterVec(prometheus.CounterOpts{
			Name: "biobridge_ingest_backfills_completed_total",
			Help: "Backfills this replica found complete (a backfill_completed event was queued for each).",
		}, []string{"vendor"}),
		reconciled: f.NewCounterVec(prometheus.CounterOpts{
			Name: "biobridge_ingest_reconcile_connections_total",
			Help: "Connections scheduled for reconciliation by this replica.",
		}, []string{"vendor"}),
		reconcileSkipped: f.NewCounterVec(prometheus.CounterOpts{
			Name: "biobridge_ingest_reconcile_skipped_total",
			Help: "Connections left out of a reconciliation round because their previous one had not finished (the vendor budget does not keep up with INGEST_RECONCILE_INTERVAL).",
		}, []string{"vendor"}),
		stale: f.NewGaugeVec(prometheus.GaugeOpts{
			Name: "biobridge_ingest_stale_connections",
			Help: "Active connections without new data for longer than INGEST_STALE_AFTER, by vendor (from the token broker; the same on every replica).",
		}, []string{"vendor"}),
		reportFailures: f.NewCounter(prometheus.CounterOpts{
			Name: "biobridge_ingest_data_arrival_report_failures_total",
			Help: "Failed reports of data arrival to the token broker (retried with the next batch).",
		}),
		loopFailures: f.NewCounterVec(prometheus.CounterOpts{
			Name: "biobridge_ingest_completeness_failures_total",
			Help: "Failed runs of a completeness loop (sync, finish, reconcile, stale), retried at its next tick.",
		}, []string{"loop"}),
		lastReconcileAt: f.NewGauge(prometheus.GaugeOpts{
			Name: "biobridge_ingest_reconcile_last_round_timestamp_seconds",
			Help: "When this replica last scheduled a reconciliation round (0: never).",
		}),
		resumed: f.NewCounterVec(prometheus.CounterOpts{
			Name: "biobridge_ingest_jobs_resumed_total",
			Help: "Parked jobs queued again because their user reconnected the vendor connection.",
		}, []string{"vendor"}),
	}
	for _, v := range cfg.Vendors {
		for _, st := range []string{"running", "completed"} {
			m.backfills.WithLabelValues(v, st)
		}
		for _, st := range []string{"pending", "dead"} {
			m.backfillPages.WithLabelValues(v, st)
		}
		m.completed.WithLabelValues(v)
		m.reconciled.WithLabelValues(v)
		m.reconcileSkipped.WithLabelValues(v)
		m.stale.WithLabelValues(v)
	}
	for _, l := range []string{"sync", "finish", "reconcile", "stale"} {
		m.loopFailures.WithLabelValues(l)
	}
	return &Loops{cfg: cfg, store: store, broker: broker, logger: logger.With(slog.String("component", "completeness")),
		wake: wake, m: m, arrivals: map[arrivalKey]time.Time{}}
}

// Run runs every enabled loop until ctx ends, then sends the arrivals
// still pending.
func (l *Loops) Run(ctx context.Context) error {
	var wg sync.WaitGroup
	loop := func(d time.Duration, fn func(context.Context)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			periodic.Every(ctx, d, fn)
		}()
	}
	if l.cfg.BackfillDays > 0 {
		loop(l.cfg.SyncInterval, l.syncOnce)
		loop(min(l.cfg.SyncInterval, 2*time.Second), l.finishOnce)
	}
	// Parked jobs resume whatever else is on: they hold acknowledged data.
	loop(l.cfg.SyncInterval, l.resumeOnce)
	if l.cfg.ReconcileInterval > 0 {
		loop(min(max(l.cfg.ReconcileInterval/20, 100*time.Millisecond), time.Minute), l.reconcileOnce)
	}
	if l.cfg.StaleAfter > 0 {
		loop(l.cfg.StaleCheckInterval, l.staleOnce)
	}
	loop(l.cfg.ReportInterval, l.reportOnce)
	wg.Wait()
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	l.reportOnce(fctx)
	return nil
}

func (l *Loops) failed(ctx context.Context, loop string, err error) {
	if ctx.Err() != nil {
		return
	}
	l.m.loopFailures.WithLabelValues(loop).Inc()
	l.logger.WarnContext(ctx, "completeness loop failed", slog.String("loop", loop), slog.Any("err", err))
}

// --- parked jobs ---

// resumeOnce queues again the parked jobs whose user reconnected: each
// waits on one generation of a connection (its connected_at), and an
// active connection made after that generation resumes it. Only
// connections made since the oldest such generation are read.
func (l *Loops) resumeOnce(ctx context.Context) {
	oldest, err := l.store.OldestParked(ctx)
	if err != nil {
		l.failed(ctx, "resume", err)
		return
	}
	if len(oldest) == 0 {
		return
	}
	var since time.Time
	for _, t := range oldest {
		if since.IsZero() || t.Before(since) {
			since = t
		}
	}
	total := 0
	_, err = l.eachActive(ctx, since, func(ctx context.Context, conns []*tokensv1.Connection) error {
		keys := make([]store.GenerationKey, 0, len(conns))
		for _, c := range conns {
			if c.GetConnectedAt() == nil {
				continue
			}
			keys = append(keys, store.GenerationKey{UserID: c.GetUserId(), Vendor: c.GetVendor(), ConnectedAt: c.GetConnectedAt().AsTime()})
		}
		moved, err := l.store.Resume(ctx, keys)
		for vendor, n := range moved {
			total += n
			l.m.resumed.WithLabelValues(vendor).Add(float64(n))
		}
		return err
	})
	if err != nil {
		l.failed(ctx, "resume", err)
	}
	if total > 0 {
		l.wake()
		l.logger.InfoContext(ctx, "parked jobs resumed after reconnects", slog.Int("jobs", total))
	}
}

// --- backfill ---

// syncOnce schedules the backfills of connections made since the newest
// backfilled one (all connections when there is none: at the first start,
// every existing connection gets its history).
func (l *Loops) syncOnce(ctx context.Context) {
	latest, err := l.store.LatestBackfilledConnection(ctx)
	if err != nil {
		l.failed(ctx, "sync", err)
		return
	}
	since := time.Time{}
	if !latest.IsZero() {
		since = latest.Add(-syncOverlap)
	}
	if _, err := l.eachActive(ctx, since, l.ensureBackfills); err != nil {
		l.failed(ctx, "sync", err)
	}
}

// eachActive pages through the broker's active connections made since
// since, calling fn per page; it returns how many it saw.
func (l *Loops) eachActive(ctx context.Context, since time.Time, fn func(context.Context, []*tokensv1.Connection) error) (int, error) {
	req := &tokensv1.ListActiveConnectionsRequest{PageSize: pageSize}
	if !since.IsZero() {
		req.ConnectedSince = timestamppb.New(since)
	}
	n := 0
	for {
		resp, err := l.broker.ListActiveConnections(ctx, req)
		if err != nil {
			return n, fmt.Errorf("list active connections: %w", err)
		}
		n += len(resp.GetConnections())
		if err := fn(ctx, resp.GetConnections()); err != nil {
			return n, err
		}
		if resp.GetNextPageToken() == "" {
			return n, nil
		}
		req.PageToken = resp.GetNextPageToken()
	}
}

// ensureBackfills schedules the backfill of every connection generation in
// conns that has none yet.
func (l *Loops) ensureBackfills(ctx context.Context, conns []*tokensv1.Connection) error {
	if l.cfg.BackfillDays <= 0 {
		return nil
	}
	keys := make([]store.GenerationKey, 0, len(conns))
	for _, c := range conns {
		if len(worker.Streams(c.GetVendor())) == 0 || c.GetConnectedAt() == nil {
			continue
		}
		keys = append(keys, store.GenerationKey{UserID: c.GetUserId(), Vendor: c.GetVendor(), ConnectedAt: c.GetConnectedAt().AsTime()})
	}
	missing, err := l.store.MissingBackfills(ctx, keys)
	if err != nil {
		return err
	}
	for _, k := range missing {
		if err := l.scheduleBackfill(ctx, k); err != nil {
			return err
		}
	}
	return nil
}

// BackfillGroup is the group key of a connection generation's backfill.
func BackfillGroup(vendor, user string, connectedAt time.Time) string {
	return "backfill:" + vendor + ":" + user + ":" + strconv.FormatInt(connectedAt.UnixMicro(), 10)
}

func (l *Loops) scheduleBackfill(ctx context.Context, k store.GenerationKey) error {
	end := time.Now().UTC()
	start := end.Add(-time.Duration(l.cfg.BackfillDays) * 24 * time.Hour)
	group := BackfillGroup(k.Vendor, k.UserID, k.ConnectedAt)
	var first []store.NewJob
	for _, s := range worker.Streams(k.Vendor) {
		j, err := worker.PageJob(worker.KindBackfill, k.Vendor, group,
			worker.Page{UserID: k.UserID, Stream: s, Key: group + ":" + s, Start: start, End: end}, 0)
		if err != nil {
			return err
		}
		first = append(first, j)
	}
	created, err := l.store.CreateBackfill(ctx, store.Backfill{
		UserID: k.UserID, Vendor: k.Vendor, ConnectedAt: k.ConnectedAt, GroupKey: group, WindowStart: start, WindowEnd: end,
	}, first)
	if err != nil {
		return err
	}
	if created {
		l.wake()
		l.logger.InfoContext(ctx, "backfill scheduled", slog.String("vendor", k.Vendor), logging.UserID(k.UserID),
			slog.Int("days", l.cfg.BackfillDays), slog.Int("streams", len(first)))
	}
	return nil
}

// finishOnce completes the backfills with nothing left to fetch and
// refreshes the backfill gauges.
func (l *Loops) finishOnce(ctx context.Context) {
	done, err := l.store.FinishBackfills(ctx, 100, worker.OutcomeInactive, func(b store.Backfill) (store.NewJob, error) {
		id, err := newUUID()
		if err != nil {
			return store.NewJob{}, err
		}
		reason := ""
		if b.Cut {
			// Revoked or broken midway: what was read is stored, the rest
			// comes with the reconnect's own backfill.
			reason = ReasonConnectionInactive
		}
		return worker.ConnectionEventJob(worker.ConnectionEvent{
			EventID: id, UserID: b.UserID, Vendor: b.Vendor, Type: worker.EventBackfillCompleted, OccurredAt: b.CompletedAt, Reason: reason,
		})
	})
	if err != nil {
		l.failed(ctx, "finish", err)
	}
	for _, b := range done {
		l.m.completed.WithLabelValues(b.Vendor).Inc()
		l.logger.InfoContext(ctx, "backfill completed", slog.String("vendor", b.Vendor), logging.UserID(b.UserID),
			slog.Int64("records", b.Records), slog.Duration("took", b.CompletedAt.Sub(b.CreatedAt)))
	}
	if len(done) > 0 {
		l.wake()
	}
	if time.Since(l.counted) < countEvery && len(done) == 0 {
		return
	}
	l.counted = time.Now()
	counts, err := l.store.CountBackfills(ctx)
	if err != nil {
		l.failed(ctx, "finish", err)
		return
	}
	l.m.backfills.Reset()
	l.m.backfillPages.Reset()
	for _, v := range l.cfg.Vendors {
		if counts[v] == nil {
			counts[v] = &store.BackfillCounts{}
		}
	}
	for v, c := range counts {
		l.m.backfills.WithLabelValues(v, "running").Set(float64(c.Running))
		l.m.backfills.WithLabelValues(v, "completed").Set(float64(c.Completed))
		l.m.backfillPages.WithLabelValues(v, "pending").Set(float64(c.PagesPending))
		l.m.backfillPages.WithLabelValues(v, "dead").Set(float64(c.PagesDead))
	}
}

// ReasonConnectionInactive is the reason of a backfill_completed event of a
// backfill cut short because the connection was revoked or broke.
const ReasonConnectionInactive = "connection_inactive"

// newUUID returns a random version-4 UUID (an event id).
func newUUID() (string, error) {
	var b [16]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("event id: %w", err)
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:]), nil
}

// --- reconciliation ---

// Round is the reconciliation round at t: rounds are the consecutive
// intervals since the epoch, so every replica agrees on them.
func Round(t time.Time, interval time.Duration) int64 { return t.UnixNano() / int64(interval) }

// Offset is where in the interval connection (vendor, user) is
// reconciled: a stable hash, so connections spread evenly and each keeps
// its place from round to round.
func Offset(vendor, user string, interval time.Duration) time.Duration {
	h := fnv.New64a()
	_, _ = h.Write([]byte(vendor + "\x00" + user))
	return time.Duration(h.Sum64() % uint64(interval))
}

// reconcileOnce schedules the current round if no replica has.
func (l *Loops) reconcileOnce(ctx context.Context) {
	interval := l.cfg.ReconcileInterval
	now := time.Now()
	round := Round(now, interval)
	claimed, err := l.store.ClaimRound(ctx, round, l.cfg.Owner, min(interval, 10*time.Minute))
	if err != nil {
		l.failed(ctx, "reconcile", err)
		return
	}
	if !claimed {
		return
	}
	roundStart := time.Unix(0, round*int64(interval))
	n, err := l.eachActive(ctx, time.Time{}, func(ctx context.Context, conns []*tokensv1.Connection) error {
		// Every round also checks that each connection has its backfill:
		// whatever the search for new connections missed is found here.
		if err := l.ensureBackfills(ctx, conns); err != nil {
			return err
		}
		for _, c := range conns {
			if err := l.scheduleReconcile(ctx, c, round, roundStart); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		// The claim expires and this or another replica schedules the
		// round again; jobs already queued are not duplicated.
		l.failed(ctx, "reconcile", err)
		return
	}
	if err := l.store.CompleteRound(ctx, round, n); err != nil {
		l.failed(ctx, "reconcile", err)
		return
	}
	l.m.lastReconcileAt.SetToCurrentTime()
	l.wake()
	l.logger.InfoContext(ctx, "reconciliation round scheduled", slog.Int64("round", round), slog.Int("connections", n))
}

func (l *Loops) scheduleReconcile(ctx context.Context, c *tokensv1.Connection, round int64, roundStart time.Time) error {
	vendor, user := c.GetVendor(), c.GetUserId()
	streams := worker.Streams(vendor)
	if len(streams) == 0 {
		return nil
	}
	// The connection's place in the round keeps it one interval from its
	// previous reconciliation. When the round is scheduled late (a first
	// start, an outage), the places already passed are spread over what is
	// left of the round instead of all running at once.
	interval := l.cfg.ReconcileInterval
	delay := time.Until(roundStart.Add(Offset(vendor, user, interval)))
	if late := time.Since(roundStart); delay < 0 && late > interval/10 {
		delay = Offset(vendor, user, max(interval-late, time.Millisecond))
	}
	delay = max(delay, 0)
	// One group per connection: a connection whose previous reconciliation
	// is still queued (the budget cannot keep up with the interval) is not
	// given another, so the backlog stays one round deep.
	group := "reconcile:" + vendor + ":" + user
	busy, err := l.store.GroupBusy(ctx, group)
	if err != nil {
		return err
	}
	if busy {
		l.m.reconcileSkipped.WithLabelValues(vendor).Inc()
		return nil
	}
	key := group + ":" + strconv.FormatInt(round, 10)
	for _, s := range streams {
		j, err := worker.PageJob(worker.KindReconcile, vendor, group,
			worker.Page{UserID: user, Stream: s, Key: key + ":" + s, Window: l.cfg.ReconcileWindow}, delay)
		if err != nil {
			return err
		}
		if _, _, err := l.store.Enqueue(ctx, j); err != nil {
			return err
		}
	}
	l.m.reconciled.WithLabelValues(vendor).Inc()
	return nil
}

// --- staleness ---

func (l *Loops) staleOnce(ctx context.Context) {
	resp, err := l.broker.MarkStaleConnections(ctx, &tokensv1.MarkStaleConnectionsRequest{StaleAfter: durationpb.New(l.cfg.StaleAfter)})
	if err != nil {
		l.failed(ctx, "stale", fmt.Errorf("mark stale connections: %w", err))
		return
	}
	for _, v := range l.cfg.Vendors {
		l.m.stale.WithLabelValues(v).Set(0)
	}
	for v, n := range resp.GetStaleByVendor() {
		l.m.stale.WithLabelValues(v).Set(float64(n))
	}
	if resp.GetMarked() > 0 {
		l.logger.InfoContext(ctx, "connections marked stale", slog.Int("count", int(resp.GetMarked())))
	}
}

// Note records that new data of (user, vendor) was stored now; it reaches
// the broker with the next report. Only the latest time per connection is
// kept, so a busy connection costs one entry per report.
func (l *Loops) Note(user, vendor string) {
	now := time.Now()
	l.mu.Lock()
	l.arrivals[arrivalKey{user, vendor}] = now
	l.mu.Unlock()
}

// maxArrivals is the broker's batch limit.
const maxArrivals = 1000

// reportOnce sends the noted arrivals. A failed batch is merged back and
// sent with the next report. The arrivals live in memory only: a crash
// loses at most one report interval of them, which the next stored record
// of the connection makes good (they mark freshness, they are not data).
func (l *Loops) reportOnce(ctx context.Context) {
	l.mu.Lock()
	pending := l.arrivals
	l.arrivals = map[arrivalKey]time.Time{}
	l.mu.Unlock()
	if len(pending) == 0 {
		return
	}
	batch := make([]*tokensv1.DataArrival, 0, min(len(pending), maxArrivals))
	var failed []*tokensv1.DataArrival
	send := func() {
		if len(batch) == 0 {
			return
		}
		if _, err := l.broker.ReportDataArrival(ctx, &tokensv1.ReportDataArrivalRequest{Arrivals: batch}); err != nil {
			l.m.reportFailures.Inc()
			if ctx.Err() == nil {
				l.logger.WarnContext(ctx, "cannot report data arrival", slog.Any("err", err))
			}
			failed = append(failed, batch...)
		}
		batch = make([]*tokensv1.DataArrival, 0, maxArrivals)
	}
	for k, at := range pending {
		batch = append(batch, &tokensv1.DataArrival{UserId: k.user, Vendor: k.vendor, ArrivedAt: timestamppb.New(at)})
		if len(batch) == maxArrivals {
			send()
		}
	}
	send()
	if len(failed) == 0 {
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, a := range failed {
		k := arrivalKey{a.GetUserId(), a.GetVendor()}
		if at := a.GetArrivedAt().AsTime(); at.After(l.arrivals[k]) {
			l.arrivals[k] = at
		}
	}
}
