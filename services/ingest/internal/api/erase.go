package api

import (
	"context"
	"errors"

	"google.golang.org/protobuf/types/known/timestamppb"

	ingestv1 "github.com/biobridge/bridge/gen/go/biobridge/ingest/v1"
	"github.com/biobridge/bridge/pkg/apperr"
	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/services/ingest/internal/erasure"
)

// ReasonUserErased is the reason a push for an erased user is refused.
const ReasonUserErased = "user_erased"

// DeleteUserData erases the user (see package erasure). The caller, a
// service-token holder the ACL allows, is recorded in the audit entry.
func (h *Handler) DeleteUserData(ctx context.Context, req *ingestv1.DeleteUserDataRequest) (*ingestv1.DeleteUserDataResponse, error) {
	user := req.GetUserId()
	if user == "" || len(user) > 256 {
		return nil, apperr.E(apperr.Invalid, "invalid_user_id", "user_id is required (at most 256 bytes)")
	}
	if h.deps.Erasure == nil {
		return nil, apperr.E(apperr.FailedPrecondition, "erasure_unavailable", "erasure is not configured on this server")
	}
	res, err := h.deps.Erasure.Erase(ctx, user, auth.Caller(ctx))
	if err != nil {
		// Any step may fail (a service down, a timeout): the erasure is
		// resumable, so the answer is "retry", never a silent success.
		return nil, apperr.Wrap(err, apperr.Unavailable, "erasure_incomplete", "the erasure did not finish; retry the call to resume it")
	}
	return &ingestv1.DeleteUserDataResponse{
		AlreadyErased: res.AlreadyErased, CompletedAt: timestamppb.New(res.CompletedAt), RevokedVendors: res.Revoked,
	}, nil
}

// refuseErased refuses data for a user whose erasure has started.
func (h *Handler) refuseErased(ctx context.Context, user string) error {
	if h.deps.Erasure == nil {
		return nil
	}
	err := h.deps.Erasure.Check(ctx, user)
	switch {
	case errors.Is(err, erasure.ErrErased):
		return apperr.E(apperr.FailedPrecondition, ReasonUserErased, "this user's data was erased; nothing more is accepted for it")
	case err != nil:
		return apperr.Wrap(err, apperr.Unavailable, "storage_unavailable", "storage is temporarily unavailable; retry later")
	}
	return nil
}
