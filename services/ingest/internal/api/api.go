// Package api implements biobridge.ingest.v1.IngestService: HealthKit pushes
// and internal event ingestion, written synchronously through persistence;
// vendor webhooks, verified and committed to the job queue before they are
// acknowledged; the job queue's ListJobs and RetryJobs; and the Oura
// verification handshake.
package api

import (
	"context"
	"crypto/subtle"
	"fmt"
	"log/slog"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	ingestv1 "github.com/biobridge/bridge/gen/go/biobridge/ingest/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	"github.com/biobridge/bridge/pkg/apperr"
	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/pkg/limiter"
	"github.com/biobridge/bridge/pkg/logging"
	"github.com/biobridge/bridge/services/ingest/internal/erasure"
	"github.com/biobridge/bridge/services/ingest/internal/healthkit"
)

// Deps are the handler's collaborators.
type Deps struct {
	Persistence persistencev1.PersistenceServiceClient
	// Limiter bounds HealthKit pushes and IngestEvents calls.
	Limiter  *limiter.Limiter
	Webhooks Webhooks
	// Erasure runs DeleteUserData and refuses pushes for erased users.
	Erasure  *erasure.Eraser
	Logger   *slog.Logger
	Registry prometheus.Registerer
}

// Options are the handler's settings.
type Options struct {
	// MaxSamples caps samples plus deletions per push.
	MaxSamples int
	// OuraVerificationToken answers Oura's handshake; empty refuses it.
	OuraVerificationToken string
}

// Handler serves IngestService.
type Handler struct {
	ingestv1.UnimplementedIngestServiceServer
	deps     Deps
	opts     Options
	samples  *prometheus.CounterVec
	pushes   *prometheus.CounterVec
	webhooks *webhookMetrics
}

// New returns the handler.
func New(deps Deps, opts Options) *Handler {
	f := promauto.With(deps.Registry)
	h := &Handler{
		deps: deps,
		opts: opts,
		samples: f.NewCounterVec(prometheus.CounterOpts{
			Name: "biobridge_ingest_healthkit_samples_total",
			Help: "HealthKit samples received, by outcome and reason.",
		}, []string{"outcome", "reason"}),
		pushes: f.NewCounterVec(prometheus.CounterOpts{
			Name: "biobridge_ingest_healthkit_pushes_total",
			Help: "HealthKit pushes, by outcome.",
		}, []string{"outcome"}),
		webhooks: newWebhookMetrics(deps.Registry),
	}
	for _, o := range []string{"ok", "shed", "storage_error", "too_many_samples", "user_erased"} {
		h.pushes.WithLabelValues(o)
	}
	for _, o := range []string{"accepted", "duplicate", "rejected", "skipped"} {
		h.samples.WithLabelValues(o, "")
	}
	return h
}

// PushHealthKitSamples stores a push for the user of the bearer JWT. The
// write is synchronous: a 200 means every accepted sample is committed.
func (h *Handler) PushHealthKitSamples(ctx context.Context, req *ingestv1.PushHealthKitSamplesRequest) (*ingestv1.PushHealthKitSamplesResponse, error) {
	user := auth.User(ctx)
	if user == "" {
		return nil, apperr.E(apperr.Unauthenticated, auth.ReasonMissingToken, "a user token is required")
	}
	if n := len(req.GetSamples()) + len(req.GetDeleted()); n > h.opts.MaxSamples {
		h.pushes.WithLabelValues("too_many_samples").Inc()
		return nil, apperr.E(apperr.Invalid, "too_many_samples",
			fmt.Sprintf("a push may carry at most %d samples and deletions, got %d; split it", h.opts.MaxSamples, n))
	}
	// The whole push is checked before anything is written: bad input
	// changes nothing.
	deleted, bad, msg := healthkit.DeletedIDs(req.GetDeleted())
	if msg != "" {
		h.pushes.WithLabelValues("invalid_deleted").Inc()
		return nil, apperr.E(apperr.Invalid, "invalid_deleted_uuid", fmt.Sprintf("deleted[%d]: %s; nothing was stored", bad, msg))
	}
	release, err := h.deps.Limiter.Acquire(ctx)
	if err != nil {
		h.pushes.WithLabelValues("shed").Inc()
		return nil, err
	}
	defer release()
	if err := h.refuseErased(ctx, user); err != nil {
		h.pushes.WithLabelValues("user_erased").Inc()
		return nil, err
	}

	batch := healthkit.Normalize(user, req.GetSamples())
	resp := &ingestv1.PushHealthKitSamplesResponse{Results: batch.Results}
	if len(batch.Events) > 0 {
		out, err := h.deps.Persistence.WriteEvents(ctx, &persistencev1.WriteEventsRequest{Events: batch.Events})
		if err != nil {
			h.pushes.WithLabelValues("storage_error").Inc()
			return nil, storageError(err)
		}
		if len(out.GetResults()) != len(batch.Events) {
			return nil, fmt.Errorf("persistence answered %d results for %d events", len(out.GetResults()), len(batch.Events))
		}
		for i, r := range out.GetResults() {
			applyWriteResult(batch.Results[batch.EventIndex[i]], r)
		}
	}
	if len(deleted) > 0 {
		refs := make([]*persistencev1.RecordRef, len(deleted))
		for i, uuid := range deleted {
			refs[i] = &persistencev1.RecordRef{UserId: user, Source: biometricsv1.Source_SOURCE_HEALTHKIT, VendorRecordId: uuid}
		}
		out, err := h.deps.Persistence.DeleteRecords(ctx, &persistencev1.DeleteRecordsRequest{Records: refs})
		if err != nil {
			h.pushes.WithLabelValues("storage_error").Inc()
			return nil, storageError(err)
		}
		for i, r := range out.GetResults() {
			resp.Deletions = append(resp.Deletions, &ingestv1.DeletionResult{Uuid: req.GetDeleted()[i], Status: r.GetStatus()})
		}
	}
	for _, r := range resp.Results {
		switch r.Status {
		case ingestv1.SampleStatus_SAMPLE_STATUS_ACCEPTED:
			resp.Accepted++
		case ingestv1.SampleStatus_SAMPLE_STATUS_DUPLICATE:
			resp.Duplicates++
		case ingestv1.SampleStatus_SAMPLE_STATUS_REJECTED:
			resp.Rejected++
		case ingestv1.SampleStatus_SAMPLE_STATUS_SKIPPED:
			resp.Skipped++
		}
		h.samples.WithLabelValues(outcome(r.Status), r.Reason).Inc()
	}
	h.pushes.WithLabelValues("ok").Inc()
	h.deps.Logger.DebugContext(ctx, "healthkit push stored", logging.UserID(user),
		slog.Int("accepted", int(resp.Accepted)), slog.Int("duplicates", int(resp.Duplicates)),
		slog.Int("rejected", int(resp.Rejected)), slog.Int("skipped", int(resp.Skipped)), slog.Int("deleted", len(resp.Deletions)))
	return resp, nil
}

func outcome(s ingestv1.SampleStatus) string {
	switch s {
	case ingestv1.SampleStatus_SAMPLE_STATUS_ACCEPTED:
		return "accepted"
	case ingestv1.SampleStatus_SAMPLE_STATUS_DUPLICATE:
		return "duplicate"
	case ingestv1.SampleStatus_SAMPLE_STATUS_REJECTED:
		return "rejected"
	case ingestv1.SampleStatus_SAMPLE_STATUS_SKIPPED:
		return "skipped"
	}
	return "unknown"
}

func applyWriteResult(res *ingestv1.SampleResult, r *persistencev1.WriteResult) {
	switch r.GetStatus() {
	case persistencev1.WriteStatus_WRITE_STATUS_INSERTED, persistencev1.WriteStatus_WRITE_STATUS_UPDATED:
		res.Status = ingestv1.SampleStatus_SAMPLE_STATUS_ACCEPTED
	case persistencev1.WriteStatus_WRITE_STATUS_DUPLICATE:
		res.Status = ingestv1.SampleStatus_SAMPLE_STATUS_DUPLICATE
	default:
		res.Status = ingestv1.SampleStatus_SAMPLE_STATUS_REJECTED
		res.Reason = r.GetReason()
		if rr := r.GetRejectedReadings(); len(rr) > 0 {
			res.Reason, res.Message = rr[0].GetReason(), rr[0].GetMessage()
		}
	}
}

// storageError turns a failed call to persistence into what the app should
// see: transient trouble is 503 with Retry-After (the app retries the push,
// which is idempotent); anything else passes through as persistence said it.
func storageError(err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	switch st.Code() {
	case codes.Unavailable, codes.DeadlineExceeded, codes.ResourceExhausted, codes.Aborted:
		return apperr.Wrap(err, apperr.Unavailable, "storage_unavailable", "storage is temporarily unavailable; retry later").
			WithRetryAfter(2 * time.Second)
	}
	return err
}

// IngestEvents stores events from internal producers that already hold
// normalized readings.
func (h *Handler) IngestEvents(ctx context.Context, req *ingestv1.IngestEventsRequest) (*ingestv1.IngestEventsResponse, error) {
	if len(req.GetEvents()) > h.opts.MaxSamples {
		return nil, apperr.E(apperr.Invalid, "too_many_events", fmt.Sprintf("at most %d events per call", h.opts.MaxSamples))
	}
	for i, ev := range req.GetEvents() {
		if ev.GetUserId() == "" || ev.GetVendorRecordId() == "" {
			return nil, apperr.E(apperr.Invalid, "invalid_event", fmt.Sprintf("event %d needs user_id and vendor_record_id", i))
		}
		if ev.GetSource() == biometricsv1.Source_SOURCE_UNSPECIFIED {
			ev.Source = biometricsv1.Source_SOURCE_INTERNAL
		}
	}
	release, err := h.deps.Limiter.Acquire(ctx)
	if err != nil {
		return nil, err
	}
	defer release()
	out, err := h.deps.Persistence.WriteEvents(ctx, &persistencev1.WriteEventsRequest{Events: req.GetEvents()})
	if err != nil {
		return nil, storageError(err)
	}
	return &ingestv1.IngestEventsResponse{Results: out.GetResults()}, nil
}

// VerifyOuraWebhook answers Oura's subscription handshake when the token is ours.
func (h *Handler) VerifyOuraWebhook(_ context.Context, req *ingestv1.VerifyOuraWebhookRequest) (*ingestv1.VerifyOuraWebhookResponse, error) {
	want := h.opts.OuraVerificationToken
	if want == "" || subtle.ConstantTimeCompare([]byte(req.GetVerificationToken()), []byte(want)) != 1 {
		return nil, apperr.E(apperr.Unauthenticated, "invalid_verification_token", "verification token does not match")
	}
	if req.GetChallenge() == "" {
		return nil, apperr.E(apperr.Invalid, "missing_challenge", "challenge is required")
	}
	return &ingestv1.VerifyOuraWebhookResponse{Challenge: req.GetChallenge()}, nil
}
