package api

import (
	"context"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	ingestv1 "github.com/biobridge/bridge/gen/go/biobridge/ingest/v1"
	"github.com/biobridge/bridge/pkg/apperr"
	"github.com/biobridge/bridge/services/ingest/internal/store"
	"github.com/biobridge/bridge/services/ingest/internal/worker"
)

// GetBackfillProgress reports the backfills of a user's connections.
func (h *Handler) GetBackfillProgress(ctx context.Context, req *ingestv1.GetBackfillProgressRequest) (*ingestv1.GetBackfillProgressResponse, error) {
	if req.GetUserId() == "" {
		return nil, apperr.E(apperr.Invalid, "missing_user_id", "user_id is required")
	}
	switch req.GetVendor() {
	case "", worker.VendorWhoop, worker.VendorOura:
	default:
		return nil, apperr.E(apperr.Invalid, "unknown_vendor", "vendor must be whoop, oura or empty")
	}
	list, err := h.deps.Webhooks.Jobs.Backfills(ctx, req.GetUserId(), req.GetVendor())
	if err != nil {
		return nil, apperr.Wrap(err, apperr.Unavailable, "storage_unavailable", "backfills cannot be read right now")
	}
	resp := &ingestv1.GetBackfillProgressResponse{Backfills: make([]*ingestv1.Backfill, 0, len(list))}
	for _, b := range list {
		out := &ingestv1.Backfill{
			UserId: b.UserID, Vendor: b.Vendor, ConnectedAt: timestamppb.New(b.ConnectedAt),
			State:       ingestv1.BackfillState_BACKFILL_STATE_RUNNING,
			WindowStart: timestamppb.New(b.WindowStart), WindowEnd: timestamppb.New(b.WindowEnd),
			CreatedAt: timestamppb.New(b.CreatedAt), CompletedAt: ts(b.CompletedAt),
			PagesDone:    int32(b.Pages[store.Done]),
			PagesPending: int32(b.Pages[store.Queued] + b.Pages[store.Running]),
			PagesDead:    int32(b.Pages[store.Dead]),
			Records:      b.Records,
		}
		out.PagesTotal = out.PagesDone + out.PagesPending + out.PagesDead
		if !b.CompletedAt.IsZero() {
			out.State = ingestv1.BackfillState_BACKFILL_STATE_COMPLETED
		}
		resp.Backfills = append(resp.Backfills, out)
	}
	return resp, nil
}

func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}
