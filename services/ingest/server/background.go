package server

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/biobridge/bridge/services/ingest/oura"
)

// measureBudgets refreshes the rate budget utilization gauges.
func (s *Server) measureBudgets(ctx context.Context) {
	for _, v := range s.vendors {
		if err := v.MeasureBudget(ctx); err != nil && ctx.Err() == nil {
			s.logger.DebugContext(ctx, "cannot measure the rate budget", slog.String("vendor", v.Vendor()), slog.Any("err", err))
		}
	}
}

type subscriptionMetrics struct {
	active  prometheus.Gauge
	wanted  prometheus.Gauge
	changes *prometheus.CounterVec
}

func newSubscriptionMetrics(reg prometheus.Registerer) *subscriptionMetrics {
	f := promauto.With(reg)
	m := &subscriptionMetrics{
		active: f.NewGauge(prometheus.GaugeOpts{
			Name: "biobridge_ingest_oura_subscriptions_active",
			Help: "Oura (event type, data type) pairs with a live subscription to our callback after the last check.",
		}),
		wanted: f.NewGauge(prometheus.GaugeOpts{
			Name: "biobridge_ingest_oura_subscriptions_wanted",
			Help: "Oura (event type, data type) pairs the bridge subscribes to (0 when subscriptions are not managed).",
		}),
		changes: f.NewCounterVec(prometheus.CounterOpts{
			Name: "biobridge_ingest_oura_subscription_changes_total",
			Help: "Changes to Oura subscriptions, by action (created, renewed, updated, deleted, failed).",
		}, []string{"action"}),
	}
	for _, a := range []string{oura.ActionCreated, oura.ActionRenewed, oura.ActionUpdated, oura.ActionDeleted, oura.ActionFailed} {
		m.changes.WithLabelValues(a)
	}
	return m
}

// subscriptionLock is the advisory lock that makes one replica at a time
// change Oura subscriptions (two creating the same pair would race).
const subscriptionLock = "biobridge.ingest.oura_subscriptions"

// keepSubscriptions checks the Oura subscriptions at start and every
// OuraSubscriptionInterval; after a failed check (Oura or our own callback
// not reachable yet, as at a cold start of the whole suite) it tries again
// within 30 seconds rather than a whole interval later.
func (s *Server) keepSubscriptions(ctx context.Context) {
	for {
		wait := s.cfg.OuraSubscriptionInterval
		if !s.ensureSubscriptions(ctx) {
			wait = min(wait, 30*time.Second)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// ensureSubscriptions runs one subscription check, unless another replica
// is running one. It reports whether the check (or the other replica's
// lock) went fine.
func (s *Server) ensureSubscriptions(ctx context.Context) bool {
	conn, err := s.db.Acquire(ctx)
	if err != nil {
		s.subscriptionFailed(ctx, err)
		return false
	}
	defer conn.Release()
	var locked bool
	if err := conn.QueryRow(ctx, `SELECT pg_try_advisory_lock(hashtextextended($1, 0))`, subscriptionLock).Scan(&locked); err != nil {
		s.subscriptionFailed(ctx, fmt.Errorf("lock oura subscriptions: %w", err))
		return false
	}
	if !locked {
		return true
	}
	defer func() {
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, err := conn.Exec(uctx, `SELECT pg_advisory_unlock(hashtextextended($1, 0))`, subscriptionLock); err != nil {
			// A session lock must not outlive its holder's intent: drop
			// the connection rather than return it locked to the pool.
			_ = conn.Conn().Close(uctx)
		}
	}()
	res, err := s.subs.Ensure(ctx, time.Now())
	s.subsM.wanted.Set(float64(res.Wanted))
	s.subsM.active.Set(float64(res.Active))
	for a, n := range res.Actions {
		s.subsM.changes.WithLabelValues(a).Add(float64(n))
	}
	if err != nil {
		s.subscriptionFailed(ctx, err)
	}
	if len(res.Actions) > 0 {
		s.logger.InfoContext(ctx, "oura subscriptions checked", slog.Any("actions", res.Actions), slog.Int("active", res.Active))
	}
	return err == nil
}

func (s *Server) subscriptionFailed(ctx context.Context, err error) {
	if ctx.Err() == nil {
		s.logger.WarnContext(ctx, "oura subscription check failed", slog.Any("err", err))
	}
}
