package api

import (
	"context"
	"encoding/json"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"google.golang.org/protobuf/types/known/timestamppb"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	ingestv1 "github.com/biobridge/bridge/gen/go/biobridge/ingest/v1"
	"github.com/biobridge/bridge/pkg/apperr"
	"github.com/biobridge/bridge/pkg/limiter"
	"github.com/biobridge/bridge/services/ingest/internal/store"
	"github.com/biobridge/bridge/services/ingest/internal/webhook"
	"github.com/biobridge/bridge/services/ingest/internal/worker"
	"github.com/biobridge/bridge/services/ingest/oura"
)

// Webhooks are the collaborators of the webhook RPCs. The request path
// touches PostgreSQL only: no vendor, no token broker. A webhook's answer
// then depends on one local commit, and an outage elsewhere never makes a
// vendor retry (or give up). Resolving the vendor user happens in the
// worker; a notification for an unknown user is acknowledged here and
// dropped (counted, logged by pseudonym) there.
type Webhooks struct {
	Whoop webhook.Verifier
	Oura  webhook.Verifier
	Jobs  *store.Store
	// Enqueue commits one webhook's job (deduplicated) and returns once it
	// is committed; the server passes a group committer's, so concurrent
	// webhooks share transactions.
	Enqueue func(ctx context.Context, j store.NewJob) (id int64, inserted bool, err error)
	Limiter *limiter.Limiter
	// Wake tells the local workers a job is waiting (optional).
	Wake func()
}

type webhookMetrics struct {
	received *prometheus.CounterVec
	verified *prometheus.CounterVec
	total    *prometheus.CounterVec
	queued   *prometheus.CounterVec
	latency  *prometheus.HistogramVec
}

// Webhook outcomes (biobridge_ingest_webhooks_total's outcome label).
const (
	outcomeAccepted  = "accepted"
	outcomeDuplicate = "duplicate"
	outcomeIgnored   = "ignored"
	outcomeRejected  = "rejected"
	outcomeShed      = "shed"
)

// rejectReasons are the reasons a webhook is refused, initialized at zero.
var rejectReasons = []string{"missing_signature", "missing_timestamp", "invalid_timestamp", "invalid_signature",
	"stale_timestamp", "malformed_body", "storage_unavailable", "internal", "canceled"}

func newWebhookMetrics(reg prometheus.Registerer) *webhookMetrics {
	f := promauto.With(reg)
	m := &webhookMetrics{
		received: f.NewCounterVec(prometheus.CounterOpts{
			Name: "biobridge_ingest_webhooks_received_total",
			Help: "Vendor webhooks received.",
		}, []string{"vendor"}),
		verified: f.NewCounterVec(prometheus.CounterOpts{
			Name: "biobridge_ingest_webhooks_verified_total",
			Help: "Vendor webhooks whose signature and timestamp were valid.",
		}, []string{"vendor"}),
		total: f.NewCounterVec(prometheus.CounterOpts{
			Name: "biobridge_ingest_webhooks_total",
			Help: "Vendor webhooks answered, by outcome: accepted (queued), duplicate (already queued), ignored (nothing to do), rejected (reason: invalid_signature, stale_timestamp, malformed_body, storage_unavailable, ...) or shed (reason overloaded).",
		}, []string{"vendor", "outcome", "reason"}),
		queued: f.NewCounterVec(prometheus.CounterOpts{
			Name: "biobridge_ingest_jobs_queued_total",
			Help: "Jobs committed to the queue.",
		}, []string{"vendor", "kind"}),
		latency: f.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "biobridge_ingest_webhook_duration_seconds",
			Help:    "Time from receiving a webhook RPC to answering it.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5},
		}, []string{"vendor"}),
	}
	// The series the dashboards and alerts use exist before the first
	// webhook (and rate() sees the first one).
	for _, v := range []string{worker.VendorWhoop, worker.VendorOura} {
		for _, o := range []string{outcomeAccepted, outcomeDuplicate, outcomeIgnored} {
			m.total.WithLabelValues(v, o, "")
		}
		m.total.WithLabelValues(v, outcomeShed, "overloaded")
		for _, r := range rejectReasons {
			m.total.WithLabelValues(v, outcomeRejected, r)
		}
		m.received.WithLabelValues(v)
		m.verified.WithLabelValues(v)
		m.queued.WithLabelValues(v, worker.KindWebhook)
		m.latency.WithLabelValues(v)
	}
	return m
}

// accepted is what the verify-and-parse step hands to acceptance.
type accepted struct {
	deliveryID string
	payload    any
	ignore     bool
}

// HandleWhoopWebhook verifies, dedupes and durably enqueues a WHOOP webhook.
func (h *Handler) HandleWhoopWebhook(ctx context.Context, req *ingestv1.HandleWhoopWebhookRequest) (*ingestv1.HandleWhoopWebhookResponse, error) {
	st, id, err := h.webhook(ctx, worker.VendorWhoop, h.deps.Webhooks.Whoop, req.GetRawBody(), req.GetSignature(), req.GetSignatureTimestamp(),
		func(body []byte) (accepted, error) {
			ev, err := webhook.ParseWhoop(body)
			return accepted{deliveryID: ev.DeliveryID(req.GetSignatureTimestamp()), payload: ev, ignore: !ev.Supported()}, err
		})
	if err != nil {
		return nil, err
	}
	return &ingestv1.HandleWhoopWebhookResponse{Status: st, DeliveryId: id}, nil
}

// HandleOuraWebhook verifies, dedupes and durably enqueues an Oura webhook.
func (h *Handler) HandleOuraWebhook(ctx context.Context, req *ingestv1.HandleOuraWebhookRequest) (*ingestv1.HandleOuraWebhookResponse, error) {
	st, id, err := h.webhook(ctx, worker.VendorOura, h.deps.Webhooks.Oura, req.GetRawBody(), req.GetSignature(), req.GetTimestamp(),
		func(body []byte) (accepted, error) {
			ev, err := webhook.ParseOura(body)
			return accepted{deliveryID: ev.DeliveryID(), payload: ev, ignore: !oura.Supported(ev.DataType)}, err
		})
	if err != nil {
		return nil, err
	}
	return &ingestv1.HandleOuraWebhookResponse{Status: st, DeliveryId: id}, nil
}

// webhook is the shared path: verify over the raw bytes, parse, then (under
// the load-shedding limiter) commit the job before answering.
func (h *Handler) webhook(ctx context.Context, vendor string, v webhook.Verifier, body []byte, sig, ts string,
	parse func([]byte) (accepted, error)) (ingestv1.WebhookStatus, string, error) {
	m := h.webhooks
	start := time.Now()
	defer func() { m.latency.WithLabelValues(vendor).Observe(time.Since(start).Seconds()) }()
	m.received.WithLabelValues(vendor).Inc()
	reject := func(err error) (ingestv1.WebhookStatus, string, error) {
		reason := apperr.ReasonOf(err)
		if reason == "" {
			reason = "canceled"
		}
		outcome := outcomeRejected
		if reason == "overloaded" {
			outcome = outcomeShed
		}
		m.total.WithLabelValues(vendor, outcome, reason).Inc()
		return 0, "", err
	}
	// Verification and parsing are cheap CPU work and reject junk before
	// it can take a slot from genuine deliveries.
	if err := v.Verify(body, sig, ts); err != nil {
		return reject(err)
	}
	m.verified.WithLabelValues(vendor).Inc()
	a, err := parse(body)
	if err != nil {
		return reject(err)
	}
	if a.ignore {
		m.total.WithLabelValues(vendor, outcomeIgnored, "").Inc()
		return ingestv1.WebhookStatus_WEBHOOK_STATUS_IGNORED, a.deliveryID, nil
	}
	release, err := h.deps.Webhooks.Limiter.Acquire(ctx)
	if err != nil {
		if apperr.CodeOf(err) == apperr.ResourceExhausted {
			// Vendors retry a 503 with Retry-After; shed with that.
			err = apperr.Wrap(err, apperr.Unavailable, "overloaded", "ingest is overloaded, retry later").WithRetryAfter(limiter.RetryAfter)
		}
		return reject(err)
	}
	defer release()
	payload, err := json.Marshal(a.payload)
	if err != nil {
		return reject(apperr.Wrap(err, apperr.Internal, "internal", "cannot encode the job"))
	}
	_, inserted, err := h.deps.Webhooks.Enqueue(ctx, store.NewJob{
		Vendor: vendor, Kind: worker.KindWebhook, DedupeKey: a.deliveryID, Payload: payload, Priority: store.PriorityLive,
	})
	if err != nil {
		if ctx.Err() != nil {
			return reject(ctx.Err())
		}
		h.deps.Logger.WarnContext(ctx, "cannot commit webhook job", slog.String("vendor", vendor), slog.Any("err", err))
		return reject(apperr.Wrap(err, apperr.Unavailable, "storage_unavailable", "the notification could not be stored; retry later").
			WithRetryAfter(5 * time.Second))
	}
	if !inserted {
		m.total.WithLabelValues(vendor, outcomeDuplicate, "").Inc()
		return ingestv1.WebhookStatus_WEBHOOK_STATUS_DUPLICATE, a.deliveryID, nil
	}
	m.queued.WithLabelValues(vendor, worker.KindWebhook).Inc()
	m.total.WithLabelValues(vendor, outcomeAccepted, "").Inc()
	if h.deps.Webhooks.Wake != nil {
		h.deps.Webhooks.Wake()
	}
	return ingestv1.WebhookStatus_WEBHOOK_STATUS_ACCEPTED, a.deliveryID, nil
}

// ListJobs lists jobs in a state (dead by default), newest first.
func (h *Handler) ListJobs(ctx context.Context, req *ingestv1.ListJobsRequest) (*ingestv1.ListJobsResponse, error) {
	state := store.Dead
	if s := req.GetState(); s != ingestv1.JobState_JOB_STATE_UNSPECIFIED {
		if s < ingestv1.JobState_JOB_STATE_QUEUED || s > ingestv1.JobState_JOB_STATE_PARKED {
			return nil, apperr.E(apperr.Invalid, "invalid_state", "unknown job state")
		}
		state = store.State(s)
	}
	size := int(req.GetPageSize())
	switch {
	case size == 0:
		size = 100
	case size < 0 || size > 1000:
		return nil, apperr.E(apperr.Invalid, "invalid_page_size", "page_size must be between 1 and 1000")
	}
	list, err := h.deps.Webhooks.Jobs.List(ctx, state, size)
	if err != nil {
		return nil, apperr.Wrap(err, apperr.Unavailable, "storage_unavailable", "jobs cannot be listed right now")
	}
	resp := &ingestv1.ListJobsResponse{Jobs: make([]*ingestv1.Job, 0, len(list))}
	for _, j := range list {
		resp.Jobs = append(resp.Jobs, &ingestv1.Job{
			Id: j.ID, Vendor: j.Vendor, Kind: j.Kind, State: ingestv1.JobState(j.State), Attempts: int32(j.Attempts),
			LastError: j.LastError, CreatedAt: timestamppb.New(j.CreatedAt), RunAt: timestamppb.New(j.RunAt),
			Source: sourceOf(j.Vendor),
		})
	}
	return resp, nil
}

// RetryJobs requeues dead jobs (the ids given, or all of them).
func (h *Handler) RetryJobs(ctx context.Context, req *ingestv1.RetryJobsRequest) (*ingestv1.RetryJobsResponse, error) {
	if len(req.GetIds()) > 10000 {
		return nil, apperr.E(apperr.Invalid, "too_many_ids", "at most 10000 ids per call")
	}
	n, err := h.deps.Webhooks.Jobs.Requeue(ctx, req.GetIds())
	if err != nil {
		return nil, apperr.Wrap(err, apperr.Unavailable, "storage_unavailable", "jobs cannot be requeued right now")
	}
	if n > 0 && h.deps.Webhooks.Wake != nil {
		h.deps.Webhooks.Wake()
	}
	h.deps.Logger.InfoContext(ctx, "dead jobs requeued", slog.Int("count", n))
	return &ingestv1.RetryJobsResponse{Requeued: int32(n)}, nil
}

func sourceOf(vendor string) biometricsv1.Source {
	switch vendor {
	case worker.VendorWhoop:
		return biometricsv1.Source_SOURCE_WHOOP
	case worker.VendorOura:
		return biometricsv1.Source_SOURCE_OURA
	}
	return biometricsv1.Source_SOURCE_UNSPECIFIED
}
