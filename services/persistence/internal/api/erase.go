package api

import (
	"context"

	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	"github.com/biobridge/bridge/pkg/apperr"
	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/pkg/logging"
	"github.com/biobridge/bridge/pkg/truncate"
	"github.com/biobridge/bridge/services/persistence/internal/latestcache"
	"github.com/biobridge/bridge/services/persistence/internal/record"
)

// WithLatest gives DeleteUserData the latest-value cache to clear.
func (p *Persistence) WithLatest(l *latestcache.Latest) *Persistence {
	p.latest = l
	return p
}

// DeleteUserData erases the user's biometric data (store.EraseUser), then
// their cache entry. A repeated call answers erased=false and changes
// nothing (the cache entry is deleted again all the same: harmless).
func (p *Persistence) DeleteUserData(ctx context.Context, req *persistencev1.DeleteUserDataRequest) (*persistencev1.DeleteUserDataResponse, error) {
	user := req.GetUserId()
	if msg := record.ValidateUserID(user); msg != "" {
		return nil, apperr.E(apperr.Invalid, "invalid_user_id", msg)
	}
	by := req.GetRequestedBy()
	if by == "" {
		by = auth.Caller(ctx)
	}
	out, err := p.store.EraseUser(ctx, user, truncate.UTF8(by, 128))
	if err != nil {
		return nil, writeError(err)
	}
	if p.latest != nil {
		p.latest.Forget(ctx, user)
	}
	if out.Erased {
		p.logger.InfoContext(ctx, "user erased", logging.UserID(user), "requested_by", by, "event_id", out.EventID)
	}
	return &persistencev1.DeleteUserDataResponse{Erased: out.Erased, EventId: out.EventID, DeletedRows: out.Deleted}, nil
}
