// Package relay forwards the broker's connection-event outbox to
// PersistenceService.AppendConnectionEvents, from where the persistence
// outbox and the publisher carry them to Kafka (biometrics.connections.v1).
//
// Events are marked forwarded only after persistence confirmed them, and
// AppendConnectionEvents is idempotent by event_id, so a crash between the
// two forwards them again without duplicates. Without a persistence target
// events stay queued (the backlog gauge shows them) until one is configured.
package relay

import (
	"context"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"google.golang.org/protobuf/types/known/timestamppb"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	"github.com/biobridge/bridge/services/tokenbroker/internal/store"
)

// Defaults of the relay's settings, written once: the token broker's
// configuration reads TOKENBROKER_RELAY_INTERVAL over DefaultInterval, and
// New gives a zero field the same.
const (
	DefaultInterval    = 2 * time.Second
	DefaultBatchSize   = 100
	DefaultCallTimeout = 10 * time.Second
)

// Config tunes the relay. A zero field gets its Default* value.
type Config struct {
	// Interval is the poll period when nothing kicks the relay.
	Interval time.Duration
	// BatchSize bounds one forward.
	BatchSize int
	// CallTimeout bounds one AppendConnectionEvents call.
	CallTimeout time.Duration
}

// Relay forwards events. A nil client only measures the backlog.
type Relay struct {
	cfg    Config
	store  *store.Store
	client persistencev1.PersistenceServiceClient
	log    *slog.Logger
	kick   chan struct{}

	pending   prometheus.Gauge
	oldest    prometheus.Gauge
	forwarded prometheus.Counter
	failures  prometheus.Counter
}

// New returns a relay; client may be nil (no persistence target).
func New(cfg Config, store *store.Store, client persistencev1.PersistenceServiceClient, reg prometheus.Registerer, logger *slog.Logger) *Relay {
	if cfg.Interval <= 0 {
		cfg.Interval = DefaultInterval
	}
	if cfg.BatchSize <= 0 {
		cfg.BatchSize = DefaultBatchSize
	}
	if cfg.CallTimeout <= 0 {
		cfg.CallTimeout = DefaultCallTimeout
	}
	f := promauto.With(reg)
	return &Relay{
		cfg: cfg, store: store, client: client, log: logger.With("component", "relay"),
		kick: make(chan struct{}, 1),
		pending: f.NewGauge(prometheus.GaugeOpts{
			Name: "biobridge_tokenbroker_connection_events_pending",
			Help: "Connection events not yet forwarded to persistence.",
		}),
		oldest: f.NewGauge(prometheus.GaugeOpts{
			Name: "biobridge_tokenbroker_connection_events_oldest_pending_seconds",
			Help: "Age of the oldest connection event not yet forwarded.",
		}),
		forwarded: f.NewCounter(prometheus.CounterOpts{
			Name: "biobridge_tokenbroker_connection_events_forwarded_total",
			Help: "Connection events forwarded to persistence.",
		}),
		failures: f.NewCounter(prometheus.CounterOpts{
			Name: "biobridge_tokenbroker_connection_events_forward_failures_total",
			Help: "Failed AppendConnectionEvents calls.",
		}),
	}
}

// Kick asks the relay to run soon (events were just written).
func (r *Relay) Kick() {
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

// Run forwards until ctx ends.
func (r *Relay) Run(ctx context.Context) {
	t := time.NewTicker(r.cfg.Interval)
	defer t.Stop()
	for {
		r.Once(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-r.kick:
		}
	}
}

// Once forwards what is pending (in batches) and refreshes the backlog
// gauges. It returns how many events it forwarded.
func (r *Relay) Once(ctx context.Context) int {
	total := 0
	for r.client != nil && ctx.Err() == nil {
		n, ran, err := r.store.ForwardBatch(ctx, r.cfg.BatchSize, r.forward)
		if err != nil {
			r.failures.Inc()
			r.log.WarnContext(ctx, "forward connection events failed", "err", err)
			break
		}
		total += n
		r.forwarded.Add(float64(n))
		if !ran || n < r.cfg.BatchSize {
			break
		}
	}
	if count, oldest, err := r.store.Backlog(ctx, time.Now()); err == nil {
		r.pending.Set(float64(count))
		r.oldest.Set(oldest.Seconds())
	} else if ctx.Err() == nil {
		r.log.WarnContext(ctx, "measure connection event backlog failed", "err", err)
	}
	return total
}

var eventTypes = map[string]biometricsv1.ConnectionEventType{
	store.EventConnected:         biometricsv1.ConnectionEventType_CONNECTION_EVENT_TYPE_CONNECTED,
	store.EventRefreshFailed:     biometricsv1.ConnectionEventType_CONNECTION_EVENT_TYPE_REFRESH_FAILED,
	store.EventRevoked:           biometricsv1.ConnectionEventType_CONNECTION_EVENT_TYPE_REVOKED,
	store.EventStale:             biometricsv1.ConnectionEventType_CONNECTION_EVENT_TYPE_STALE,
	store.EventFresh:             biometricsv1.ConnectionEventType_CONNECTION_EVENT_TYPE_FRESH,
	store.EventBackfillCompleted: biometricsv1.ConnectionEventType_CONNECTION_EVENT_TYPE_BACKFILL_COMPLETED,
}

func (r *Relay) forward(ctx context.Context, events []store.Event) error {
	req := &persistencev1.AppendConnectionEventsRequest{}
	for _, e := range events {
		req.Events = append(req.Events, &biometricsv1.ConnectionEvent{
			EventId: e.EventID, UserId: e.UserID, Vendor: e.Vendor, Type: eventTypes[e.Type],
			OccurredAt: timestamppb.New(e.OccurredAt), Reason: e.Reason, Sequence: e.Sequence,
		})
	}
	ctx, cancel := context.WithTimeout(ctx, r.cfg.CallTimeout)
	defer cancel()
	_, err := r.client.AppendConnectionEvents(ctx, req)
	return err
}
