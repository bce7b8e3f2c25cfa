package broker

import (
	"context"
	"time"

	"github.com/biobridge/bridge/pkg/logging"
	"github.com/biobridge/bridge/services/tokenbroker/internal/store"
	"github.com/biobridge/bridge/services/tokenbroker/internal/tokenlock"
	"github.com/biobridge/bridge/services/tokenbroker/tokencache"
)

// parkedTTL is how long a parked refresh result waits for a holder to
// store it. Any use of the connection (a token request, the proactive
// refresh) stores it much sooner; the TTL only bounds garbage.
const parkedTTL = 30 * 24 * time.Hour

// park keeps the sealed refresh result in Redis, and reports whether it did.
func (b *Broker) park(ctx context.Context, c *store.Connection, t store.Tokens) bool {
	err := b.cache.Park(ctx, c.UserID, c.Vendor, tokencache.Parked{
		BaseVersion: c.Version, KeyID: t.KeyID, AccessTokenEnc: t.AccessTokenEnc, RefreshTokenEnc: t.RefreshTokenEnc,
		AccessExpiresAt: t.AccessExpiresAt,
	}, parkedTTL)
	if err != nil {
		b.log.ErrorContext(ctx, "cannot park the refresh result; it lives only in this process until stored", "vendor", c.Vendor, "err", err)
		return false
	}
	b.m.ParkedResults.WithLabelValues(c.Vendor).Inc()
	b.log.WarnContext(ctx, "token store unavailable after a refresh; result parked until stored", "vendor", c.Vendor, logging.UserID(c.UserID))
	return true
}

func (b *Broker) unpark(ctx context.Context, c *store.Connection, stored int64) {
	if err := b.cache.Unpark(ctx, c.UserID, c.Vendor, stored); err != nil {
		b.log.WarnContext(ctx, "cannot drop the parked refresh result", "vendor", c.Vendor, "err", err)
	}
}

// landParked stores a result parked from exactly c's version, if there is
// one. ok reports whether there was.
func (b *Broker) landParked(ctx context.Context, lock *tokenlock.Lock, c *store.Connection, used bool) (AccessToken, bool, error) {
	p, err := b.cache.ParkedResult(ctx, c.UserID, c.Vendor)
	if err != nil {
		b.log.WarnContext(ctx, "cannot read parked refresh results", "vendor", c.Vendor, "err", err)
		return AccessToken{}, false, nil
	}
	if p == nil {
		return AccessToken{}, false, nil
	}
	if p.BaseVersion != c.Version {
		if p.BaseVersion < c.Version {
			// Stored (or superseded) since: garbage.
			b.unpark(ctx, c, c.Version-1)
		}
		return AccessToken{}, false, nil
	}
	b.log.InfoContext(ctx, "storing a parked refresh result instead of refreshing", "vendor", c.Vendor, logging.UserID(c.UserID))
	tok, err := b.land(ctx, lock, c, store.Tokens{
		KeyID: p.KeyID, AccessTokenEnc: p.AccessTokenEnc, RefreshTokenEnc: p.RefreshTokenEnc, AccessExpiresAt: p.AccessExpiresAt,
	}, used)
	return tok, true, err
}
