package broker

import (
	"context"
	"time"

	"github.com/biobridge/bridge/pkg/apperr"
	"github.com/biobridge/bridge/pkg/logging"
	"github.com/biobridge/bridge/services/tokenbroker/internal/store"
)

// RefreshExpiring refreshes active, recently used connections whose token
// expires within the proactive window, so callers rarely wait for a
// refresh. Every instance may run it: the lock and the re-read under it
// make the others skip a connection one of them just refreshed.
func (b *Broker) RefreshExpiring(ctx context.Context, limit int) (int, error) {
	now := time.Now()
	keys, err := b.store.ExpiringActive(ctx, now.Add(b.cfg.ProactiveWindow), now.Add(-b.cfg.ActiveWindow), limit)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, k := range keys {
		if ctx.Err() != nil {
			break
		}
		if b.vendors[k.Vendor] == nil {
			continue
		}
		// Not a use: the cache keeps the old token until it expires, and
		// the caller that then misses records the use.
		if _, err := b.shared(ctx, k.UserID, k.Vendor, need{minLife: b.cfg.ProactiveWindow}, false); err != nil {
			b.log.WarnContext(ctx, "proactive refresh failed", "vendor", k.Vendor, logging.UserID(k.UserID), "reason", apperr.ReasonOf(err))
			continue
		}
		n++
	}
	return n, nil
}

// --- key rotation ---

// Reencrypt re-seals every connection sealed with an old key with the
// primary key. Rows it cannot open are counted and skipped.
func (b *Broker) Reencrypt(ctx context.Context) (done int, failed int, err error) {
	primary := b.keys.PrimaryID()
	var after store.Key
	for {
		rows, err := b.store.StaleKeyRows(ctx, primary, after, 100)
		if err != nil {
			return done, failed, err
		}
		if len(rows) == 0 {
			return done, failed, nil
		}
		for _, c := range rows {
			after = store.Key{UserID: c.UserID, Vendor: c.Vendor}
			ok, err := b.reencryptOne(ctx, c)
			if err != nil {
				if ctx.Err() != nil {
					return done, failed, ctx.Err()
				}
				failed++
				b.m.ReencryptFailed.Inc()
				b.log.ErrorContext(ctx, "cannot re-encrypt connection tokens", "vendor", c.Vendor, logging.UserID(c.UserID), "key_id", c.KeyID, "err", err)
				continue
			}
			if ok {
				done++
				b.m.Reencrypted.Inc()
			}
		}
	}
}

func (b *Broker) reencryptOne(ctx context.Context, c *store.Connection) (bool, error) {
	access, err := b.keys.Open(c.KeyID, c.AccessTokenEnc, aad(c.UserID, c.Vendor, "access"))
	if err != nil {
		return false, err
	}
	refresh, err := b.keys.Open(c.KeyID, c.RefreshTokenEnc, aad(c.UserID, c.Vendor, "refresh"))
	if err != nil {
		return false, err
	}
	kid, accessEnc, err := b.keys.Seal(access, aad(c.UserID, c.Vendor, "access"))
	if err != nil {
		return false, err
	}
	_, refreshEnc, err := b.keys.Seal(refresh, aad(c.UserID, c.Vendor, "refresh"))
	if err != nil {
		return false, err
	}
	// A refresh or revoke that changed the row since it was read wins; its
	// own write already used the primary key.
	return b.store.Reencrypt(ctx, c.UserID, c.Vendor, c.Version, c.KeyID,
		store.Tokens{KeyID: kid, AccessTokenEnc: accessEnc, RefreshTokenEnc: refreshEnc})
}

// --- connect flow ---

// DeleteExpiredStates removes authorization states past their expiry.
func (b *Broker) DeleteExpiredStates(ctx context.Context) (int64, error) {
	return b.store.DeleteExpiredStates(ctx, time.Now())
}
