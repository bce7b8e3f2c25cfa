package broker

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"time"

	"github.com/biobridge/bridge/pkg/apperr"
	"github.com/biobridge/bridge/services/tokenbroker/internal/store"
)

// GetAccessToken returns a token with more than the safety margin of life
// left, refreshing it if needed (see the package comment). rejected, when
// not empty, is an access token the vendor refused: it is never handed out
// again, and if it is still the stored one the connection is refreshed
// early (once, however many callers report it).
func (b *Broker) GetAccessToken(ctx context.Context, userID, vendor, rejected string) (AccessToken, error) {
	if userID == "" {
		return AccessToken{}, apperr.E(apperr.Invalid, "missing_user_id", "user_id is required")
	}
	if _, err := b.Vendor(vendor); err != nil {
		return AccessToken{}, err
	}
	if rejected != "" {
		b.m.RejectedTokens.WithLabelValues(vendor).Inc()
	}
	if tok, ok := b.fromCache(ctx, userID, vendor, b.cfg.SafetyMargin); ok && !sameToken(tok.Token, rejected) {
		b.m.CacheHits.WithLabelValues(vendor).Inc()
		return tok, nil
	}
	b.m.CacheMisses.WithLabelValues(vendor).Inc()
	return b.shared(ctx, userID, vendor, need{minLife: b.cfg.SafetyMargin, rejected: rejected}, true)
}

// need is what a caller requires of the stored access token.
type need struct {
	// minLife is the life the token must have left.
	minLife time.Duration
	// rejected is a token the vendor refused ("" for none): the stored
	// token must not be this one.
	rejected string
}

// sameToken compares a token with a rejected one in constant time; an
// empty rejected token matches nothing.
func sameToken(tok, rejected string) bool {
	return rejected != "" && subtle.ConstantTimeCompare([]byte(tok), []byte(rejected)) == 1
}

// shared runs obtain once per connection per process however many callers
// ask at once. The work runs detached from any one caller's cancellation;
// each caller stops waiting when its own context ends. Callers reporting
// the same rejected token share a flight of their own.
func (b *Broker) shared(ctx context.Context, userID, vendor string, n need, used bool) (AccessToken, error) {
	key := vendor + "\x00" + userID
	if n.rejected != "" {
		sum := sha256.Sum256([]byte(n.rejected))
		key += "\x00rejected:" + hex.EncodeToString(sum[:8])
	}
	ch := b.flights.DoChan(key, func() (any, error) {
		b.inflight.Add(1)
		defer b.inflight.Add(-1)
		return b.obtain(context.WithoutCancel(ctx), userID, vendor, n, used)
	})
	select {
	case r := <-ch:
		if r.Err != nil {
			return AccessToken{}, r.Err
		}
		return r.Val.(AccessToken), nil
	case <-ctx.Done():
		return AccessToken{}, ctx.Err()
	}
}

func usable(c *store.Connection) error {
	switch c.Status {
	case store.StatusActive:
		return nil
	case store.StatusBroken:
		return apperr.E(apperr.FailedPrecondition, ReasonConnectionBroken, "the vendor rejected the connection's refresh token: the user must reconnect")
	default:
		return apperr.E(apperr.NotFound, ReasonConnectionRevoked, "the connection was revoked")
	}
}

func (b *Broker) get(ctx context.Context, userID, vendor string) (*store.Connection, error) {
	c, err := b.store.Get(ctx, userID, vendor)
	if errors.Is(err, store.ErrNotFound) {
		return nil, apperr.E(apperr.NotFound, ReasonConnectionNotFound, "no connection for this user and vendor")
	}
	if err != nil {
		return nil, err
	}
	return c, nil
}

// fresh reports whether c's access token has more than minLife left.
func fresh(c *store.Connection, minLife time.Duration) bool {
	return c.KeyID != "" && time.Until(c.AccessExpiresAt) > minLife
}

func (b *Broker) openAccess(c *store.Connection) (AccessToken, error) {
	plain, err := b.keys.Open(c.KeyID, c.AccessTokenEnc, aad(c.UserID, c.Vendor, "access"))
	if err != nil {
		return AccessToken{}, apperr.Wrap(err, apperr.Internal, ReasonTokenUnreadable, "stored token cannot be decrypted")
	}
	return AccessToken{Token: string(plain), ExpiresAt: c.AccessExpiresAt}, nil
}

// deliver hands out c's access token: it warms the cache and records use.
func (b *Broker) deliver(ctx context.Context, c *store.Connection, used bool) (AccessToken, error) {
	tok, err := b.openAccess(c)
	if err != nil {
		return AccessToken{}, err
	}
	if used {
		b.fillCache(ctx, c)
		if err := b.store.TouchUsed(ctx, c.UserID, c.Vendor, time.Now()); err != nil {
			b.log.WarnContext(ctx, "record connection use failed", "vendor", c.Vendor, "err", err)
		}
	}
	return tok, nil
}

// needsRefresh reports whether c's stored token does not meet n: too
// little life left, or the very token the vendor rejected.
func (b *Broker) needsRefresh(c *store.Connection, n need) bool {
	if !fresh(c, n.minLife) {
		return true
	}
	if n.rejected == "" {
		return false
	}
	tok, err := b.openAccess(c)
	// An unreadable token is reported by deliver, not refreshed around.
	return err == nil && sameToken(tok.Token, n.rejected)
}
