package broker

import (
	"context"
	"errors"
	"time"

	"github.com/biobridge/bridge/pkg/apperr"
	"github.com/biobridge/bridge/pkg/logging"
	"github.com/biobridge/bridge/services/tokenbroker/internal/store"
	"github.com/biobridge/bridge/services/tokenbroker/tokencache"
)

// RevokeConnection revokes the grant at the vendor (best effort) and
// deletes the tokens. Revoking an already revoked connection succeeds.
func (b *Broker) RevokeConnection(ctx context.Context, userID, vendor string) (bool, error) {
	v, err := b.Vendor(vendor)
	if err != nil && apperr.CodeOf(err) == apperr.Invalid {
		return false, err
	}
	c, err := b.get(ctx, userID, vendor)
	if err != nil {
		return false, err
	}
	if c.Status == store.StatusRevoked {
		return false, nil
	}
	log := b.log.With("vendor", vendor, logging.UserID(userID))
	atVendor := false
	if v != nil && c.Status == store.StatusActive {
		// The vendor wants a valid access token; refreshing for it is fine
		// (under the usual lock).
		tok, err := b.shared(ctx, userID, vendor, need{minLife: 30 * time.Second}, false)
		if err == nil {
			rctx, cancel := context.WithTimeout(ctx, b.cfg.RefreshTimeout)
			atVendor, err = v.Revoke(rctx, tok.Token)
			cancel()
		}
		if err != nil {
			log.WarnContext(ctx, "revoke at vendor failed; deleting tokens anyway", "err", err)
		}
	}
	version, err := b.store.Revoke(ctx, userID, vendor, "user_revoked", time.Now())
	if err != nil && !errors.Is(err, store.ErrNotFound) {
		return false, err
	}
	b.kick()
	if err == nil {
		// A tombstone at the revoked version, not a delete: a concurrent
		// caller that read the row before the revocation would otherwise
		// put its token back into the cache (a put never replaces a newer
		// version), and ingest would keep fetching after the user revoked.
		if err := b.cache.Put(ctx, userID, vendor, tokencache.Entry{Version: version}, revokedTombstoneTTL); err != nil {
			log.WarnContext(ctx, "token cache tombstone failed", "err", err)
		}
	}
	log.InfoContext(ctx, "connection revoked", "revoked_at_vendor", atVendor)
	return atVendor, nil
}
