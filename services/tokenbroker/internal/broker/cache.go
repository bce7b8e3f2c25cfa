package broker

import (
	"context"
	"time"

	"github.com/biobridge/bridge/services/tokenbroker/internal/store"
	"github.com/biobridge/bridge/services/tokenbroker/tokencache"
)

// revokedTombstoneTTL outlives any access token a concurrent caller could
// still be putting into the cache when a connection is revoked.
const revokedTombstoneTTL = 2 * time.Hour

func (b *Broker) fromCache(ctx context.Context, userID, vendor string, minLife time.Duration) (AccessToken, bool) {
	e, err := b.cache.Get(ctx, userID, vendor)
	if err != nil {
		// Redis trouble degrades to the store; it is not an error for the caller.
		b.log.WarnContext(ctx, "token cache read failed", "vendor", vendor, "err", err)
		return AccessToken{}, false
	}
	if e == nil || len(e.Sealed) == 0 || time.Until(e.ExpiresAt) <= minLife {
		return AccessToken{}, false
	}
	plain, err := b.keys.Open(e.KeyID, e.Sealed, aad(userID, vendor, "access"))
	if err != nil {
		return AccessToken{}, false
	}
	return AccessToken{Token: string(plain), ExpiresAt: e.ExpiresAt}, true
}

func (b *Broker) fillCache(ctx context.Context, c *store.Connection) {
	ttl := time.Until(c.AccessExpiresAt) - b.cfg.SafetyMargin
	e := tokencache.Entry{Version: c.Version, KeyID: c.KeyID, Sealed: c.AccessTokenEnc, ExpiresAt: c.AccessExpiresAt}
	if err := b.cache.Put(ctx, c.UserID, c.Vendor, e, ttl); err != nil {
		b.log.WarnContext(ctx, "token cache write failed", "vendor", c.Vendor, "err", err)
	}
}
