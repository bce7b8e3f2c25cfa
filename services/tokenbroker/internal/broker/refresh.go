package broker

import (
	"context"
	"errors"
	mathrand "math/rand/v2"
	"time"

	"golang.org/x/oauth2"

	"github.com/biobridge/bridge/pkg/apperr"
	"github.com/biobridge/bridge/pkg/logging"
	"github.com/biobridge/bridge/services/tokenbroker/internal/store"
	"github.com/biobridge/bridge/services/tokenbroker/internal/tokenlock"
	"github.com/biobridge/bridge/services/tokenbroker/internal/vendors"
)

// errClaimed: another holder's refresh claim is on the connection row
// although this caller holds the Redis lock (the lock was lost meanwhile).
// The caller waits for that holder like for a held lock.
var errClaimed = errors.New("refresh claimed by another holder")

// obtain returns a token meeting n, refreshing under the connection's lock
// when needed and otherwise waiting for the holder.
func (b *Broker) obtain(ctx context.Context, userID, vendor string, n need, used bool) (AccessToken, error) {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.WaitTimeout+b.cfg.RefreshTimeout+MinStoreBudget)
	defer cancel()
	var waitStart time.Time
	observeWait := func() {
		if !waitStart.IsZero() {
			b.m.LockWait.WithLabelValues(vendor).Observe(time.Since(waitStart).Seconds())
			waitStart = time.Time{}
		}
	}
	defer observeWait()
	backoff := 5 * time.Millisecond
	for {
		c, err := b.get(ctx, userID, vendor)
		if err != nil {
			return AccessToken{}, err
		}
		if err := usable(c); err != nil {
			return AccessToken{}, err
		}
		if !b.needsRefresh(c, n) {
			return b.deliver(ctx, c, used)
		}
		lock, err := b.locker.TryAcquire(ctx, b.cache.LockKey(userID, vendor), b.cfg.LockLease)
		if err != nil {
			return AccessToken{}, apperr.Wrap(err, apperr.Unavailable, "lock_unavailable", "token refresh coordination unavailable, retry later")
		}
		if lock != nil {
			tok, err := b.refreshLocked(ctx, lock, userID, vendor, n, used)
			if !errors.Is(err, errClaimed) {
				observeWait()
				return tok, err
			}
		}
		// Another instance (or a dead one, until its lease expires) holds
		// the lock or the claim: wait for its result.
		if waitStart.IsZero() {
			waitStart = time.Now()
		} else if time.Since(waitStart) > b.cfg.WaitTimeout {
			return AccessToken{}, apperr.E(apperr.Unavailable, ReasonRefreshInProgress,
				"token refresh still in progress, retry later").WithRetryAfter(time.Second)
		}
		// Full jitter keeps three instances' pollers from marching in step.
		sleep := backoff/2 + mathrand.N(backoff/2+1)
		select {
		case <-ctx.Done():
			return AccessToken{}, apperr.Wrap(ctx.Err(), apperr.Unavailable, ReasonRefreshInProgress, "token refresh still in progress, retry later")
		case <-time.After(sleep):
		}
		backoff = min(backoff*2, 250*time.Millisecond)
	}
}

// refreshLocked runs with the connection's lock held and releases it.
func (b *Broker) refreshLocked(ctx context.Context, lock *tokenlock.Lock, userID, vendor string, n need, used bool) (AccessToken, error) {
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
		defer cancel()
		if ok, err := lock.Release(rctx); err != nil || !ok {
			// The lease ran out (or the key was lost) before the release:
			// harmless for correctness (the write was fenced and the
			// refresh claimed in the database) but worth knowing.
			b.log.WarnContext(ctx, "refresh lock was not held at release", "vendor", vendor, "err", err)
		}
	}()
	// The previous holder may have refreshed between our read and our lock.
	c, err := b.get(ctx, userID, vendor)
	if err != nil {
		return AccessToken{}, err
	}
	if err := usable(c); err != nil {
		return AccessToken{}, err
	}
	if !b.needsRefresh(c, n) {
		return b.deliver(ctx, c, used)
	}
	// A previous holder's answer from the vendor that it could not store:
	// it is the only working token pair, so it is stored, not refreshed.
	if tok, ok, err := b.landParked(ctx, lock, c, used); ok {
		return tok, err
	}
	// Claim the refresh on the row too: if the Redis lock is lost while we
	// wait for the vendor, nobody else can present this refresh token.
	if err := b.store.ClaimRefresh(ctx, userID, vendor, c.Version, lock.Owner(), time.Until(lock.Expires())); err != nil {
		if errors.Is(err, store.ErrClaimed) {
			return AccessToken{}, errClaimed
		}
		return AccessToken{}, err
	}
	// The vendor call must end while the lease still protects it, with
	// time left to store the answer.
	deadline := time.Now().Add(b.cfg.RefreshTimeout)
	if limit := lock.Expires().Add(-MinStoreBudget); limit.Before(deadline) {
		deadline = limit
	}
	return b.refreshConn(ctx, lock, c, deadline, used)
}

// refreshConn presents c's refresh token to the vendor once and stores the
// answer fenced by c.Version. The caller holds the connection's lock and
// its claim; c is what it read under the lock.
func (b *Broker) refreshConn(ctx context.Context, lock *tokenlock.Lock, c *store.Connection, deadline time.Time, used bool) (AccessToken, error) {
	v, err := b.Vendor(c.Vendor)
	if err != nil {
		return AccessToken{}, err
	}
	refresh, err := b.keys.Open(c.KeyID, c.RefreshTokenEnc, aad(c.UserID, c.Vendor, "refresh"))
	if err != nil {
		b.releaseClaim(ctx, c, lock.Owner())
		return AccessToken{}, apperr.Wrap(err, apperr.Internal, ReasonTokenUnreadable, "stored token cannot be decrypted")
	}
	if len(refresh) == 0 {
		return b.refreshFailed(ctx, lock, c, vendors.ReasonNoRefreshToken, errors.New("connection has no refresh token"), used)
	}
	vctx, cancel := context.WithDeadline(ctx, deadline)
	start := time.Now()
	tok, err := v.Refresh(vctx, string(refresh))
	cancel()
	b.m.RefreshSeconds.WithLabelValues(c.Vendor).Observe(time.Since(start).Seconds())
	if err != nil {
		return b.refreshFailed(ctx, lock, c, vendors.Reason(err), err, used)
	}
	sealed, err := b.sealTokens(c.UserID, c.Vendor, tok)
	if err != nil {
		return AccessToken{}, err
	}
	return b.land(ctx, lock, c, sealed, used)
}

// land stores tokens the vendor issued from c (keeping them until stored)
// and hands out the access token.
func (b *Broker) land(ctx context.Context, lock *tokenlock.Lock, c *store.Connection, t store.Tokens, used bool) (AccessToken, error) {
	log := b.log.With("vendor", c.Vendor, logging.UserID(c.UserID))
	updated, err := b.keep(ctx, lock, c, t)
	switch {
	case errors.Is(err, store.ErrVersionConflict):
		// Reconnected or revoked while we refreshed (or a successor stored
		// our parked result): that change wins and our copy is dropped.
		b.unpark(ctx, c, c.Version)
		b.m.Refreshes.WithLabelValues(c.Vendor, OutcomeSuperseded).Inc()
		log.InfoContext(ctx, "refreshed tokens superseded by a newer connection change")
		cur, gerr := b.get(ctx, c.UserID, c.Vendor)
		if gerr != nil {
			return AccessToken{}, gerr
		}
		if err := usable(cur); err != nil {
			return AccessToken{}, err
		}
		if !fresh(cur, 0) {
			return AccessToken{}, apperr.E(apperr.Unavailable, ReasonRefreshInProgress, "connection changed during refresh, retry").WithRetryAfter(time.Second)
		}
		return b.deliver(ctx, cur, used)
	case err != nil:
		// The store stayed unreachable for the whole patience. The result
		// is parked in Redis (keep did that at the first failure): the next
		// holder stores it instead of calling the vendor.
		b.m.Refreshes.WithLabelValues(c.Vendor, OutcomeError).Inc()
		b.m.RefreshFailures.WithLabelValues(c.Vendor, ReasonStoreFailed).Inc()
		log.ErrorContext(ctx, "refreshed tokens could not be stored; they stay parked for the next holder", "err", err)
		return AccessToken{}, apperr.Wrap(err, apperr.Unavailable, "store_unavailable", "token store unavailable, retry later").WithRetryAfter(time.Second)
	}
	b.unpark(ctx, c, c.Version)
	b.m.Refreshes.WithLabelValues(c.Vendor, OutcomeSuccess).Inc()
	log.DebugContext(ctx, "token refreshed", "version", updated.Version)
	if used {
		return b.deliver(ctx, updated, true)
	}
	return b.openAccess(updated)
}

// storeAttemptTimeout bounds one write of refreshed tokens, so a database
// that stopped answering is retried rather than waited on.
const storeAttemptTimeout = 5 * time.Second

// keep writes the refreshed tokens fenced by c.Version, retrying transient
// store errors for the store patience: the vendor has already rotated, so
// these tokens are the only ones that work. At the first failure the
// sealed result is parked in Redis, where a successor looks before it
// refreshes; while retrying, the lock's lease and the row's claim are
// renewed (each fenced by the owner value).
func (b *Broker) keep(ctx context.Context, lock *tokenlock.Lock, c *store.Connection, t store.Tokens) (*store.Connection, error) {
	ctx = context.WithoutCancel(ctx)
	giveUp := time.Now().Add(b.cfg.StorePatience)
	backoff := 100 * time.Millisecond
	parked := false
	for {
		sctx, cancel := context.WithTimeout(ctx, storeAttemptTimeout)
		updated, err := b.store.StoreRefreshed(sctx, c.UserID, c.Vendor, c.Version, t, time.Now())
		cancel()
		if err == nil || errors.Is(err, store.ErrVersionConflict) {
			return updated, err
		}
		if !parked {
			parked = b.park(ctx, c, t)
		}
		if time.Now().After(giveUp) {
			return nil, err
		}
		if time.Until(lock.Expires()) < b.cfg.LockLease/2 {
			b.renew(ctx, lock, c)
		}
		select {
		case <-b.stopped:
			return nil, err
		case <-time.After(backoff):
		}
		backoff = min(backoff*2, 2*time.Second)
	}
}

// renew extends the lock's lease and the row's claim while a holder keeps
// retrying its store. Either may fail (the claim certainly does while the
// database is down); the parked result covers what they no longer do.
func (b *Broker) renew(ctx context.Context, lock *tokenlock.Lock, c *store.Connection) {
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if ok, err := lock.Extend(rctx, b.cfg.LockLease); err != nil || !ok {
		b.log.WarnContext(ctx, "refresh lock lost while storing the result", "vendor", c.Vendor, "err", err)
	}
	if err := b.store.ClaimRefresh(rctx, c.UserID, c.Vendor, c.Version, lock.Owner(), b.cfg.LockLease); err != nil && !errors.Is(err, store.ErrClaimed) {
		b.log.DebugContext(ctx, "refresh claim not renewed", "vendor", c.Vendor, "err", err)
	}
}

func (b *Broker) releaseClaim(ctx context.Context, c *store.Connection, owner string) {
	if err := b.store.ReleaseClaim(ctx, c.UserID, c.Vendor, owner); err != nil {
		// It expires with the lease anyway.
		b.log.WarnContext(ctx, "cannot release the refresh claim", "vendor", c.Vendor, "err", err)
	}
}

func (b *Broker) sealTokens(userID, vendor string, t *oauth2.Token) (store.Tokens, error) {
	kid, access, err := b.keys.Seal([]byte(t.AccessToken), aad(userID, vendor, "access"))
	if err != nil {
		return store.Tokens{}, err
	}
	_, refresh, err := b.keys.Seal([]byte(t.RefreshToken), aad(userID, vendor, "refresh"))
	if err != nil {
		return store.Tokens{}, err
	}
	expiry := t.Expiry
	if expiry.IsZero() {
		// No expires_in: assume the vendors' usual hour rather than forever,
		// so the token is refreshed rather than used until it fails.
		expiry = time.Now().Add(time.Hour)
	}
	return store.Tokens{KeyID: kid, AccessTokenEnc: access, RefreshTokenEnc: refresh, AccessExpiresAt: expiry}, nil
}

// refreshFailed decides what a failed refresh means. Only invalid_grant (or
// a missing refresh token) can break a connection, and only when nobody
// else rotated the tokens meanwhile: no parked result from this version,
// no newer version in the store, and no other holder's claim still
// running (a refresh of theirs may still land).
func (b *Broker) refreshFailed(ctx context.Context, lock *tokenlock.Lock, c *store.Connection, reason string, cause error, used bool) (AccessToken, error) {
	log := b.log.With("vendor", c.Vendor, logging.UserID(c.UserID))
	b.m.RefreshFailures.WithLabelValues(c.Vendor, reason).Inc()
	switch reason {
	case vendors.ReasonInvalidGrant, vendors.ReasonNoRefreshToken:
	case vendors.ReasonInvalidClient:
		b.releaseClaim(ctx, c, lock.Owner())
		b.m.Refreshes.WithLabelValues(c.Vendor, OutcomeError).Inc()
		log.ErrorContext(ctx, "vendor rejected the client credentials on refresh", "err", cause)
		return AccessToken{}, apperr.Wrap(cause, apperr.Unavailable, ReasonVendorRejected, "vendor rejected the broker's client credentials")
	default:
		b.releaseClaim(ctx, c, lock.Owner())
		b.m.Refreshes.WithLabelValues(c.Vendor, OutcomeError).Inc()
		log.WarnContext(ctx, "token refresh failed", "reason", reason, "err", cause)
		retry := time.Second
		if reason == vendors.ReasonRateLimited {
			retry = 10 * time.Second
		}
		return AccessToken{}, apperr.Wrap(cause, apperr.Unavailable, ReasonVendorUnavailable, "vendor token endpoint unavailable, retry later").WithRetryAfter(retry)
	}
	// Did a holder before us rotate and fail to store? Then its parked
	// result is the working pair.
	if tok, ok, err := b.landParked(ctx, lock, c, used); ok {
		if err == nil {
			b.m.Refreshes.WithLabelValues(c.Vendor, OutcomeLostRace).Inc()
		}
		return tok, err
	}
	// Did someone else rotate? Then the grant is fine and their tokens work.
	if tok, ok, err := b.rotatedElsewhere(ctx, c, lock.Owner(), used); ok || err != nil {
		if err == nil {
			b.m.Refreshes.WithLabelValues(c.Vendor, OutcomeLostRace).Inc()
			log.InfoContext(ctx, "invalid_grant after another holder rotated the tokens; using theirs")
		}
		return tok, err
	}
	err := b.store.MarkBroken(ctx, c.UserID, c.Vendor, c.Version, lock.Owner(), reason, time.Now())
	if errors.Is(err, store.ErrVersionConflict) {
		// Changed (or claimed) between our re-read and the fenced update.
		tok, ok, err := b.rotatedElsewhere(ctx, c, lock.Owner(), used)
		if ok && err == nil {
			b.m.Refreshes.WithLabelValues(c.Vendor, OutcomeLostRace).Inc()
		}
		if !ok && err == nil {
			err = apperr.E(apperr.Unavailable, ReasonRefreshInProgress, "connection changed during refresh, retry").WithRetryAfter(time.Second)
		}
		return tok, err
	}
	if err != nil {
		return AccessToken{}, err
	}
	b.kick()
	b.m.Refreshes.WithLabelValues(c.Vendor, OutcomeBroken).Inc()
	if derr := b.cache.Delete(ctx, c.UserID, c.Vendor); derr != nil {
		log.WarnContext(ctx, "token cache delete failed", "err", derr)
	}
	log.WarnContext(ctx, "vendor rejected the refresh token; connection marked broken", "reason", reason)
	return AccessToken{}, apperr.Wrap(cause, apperr.FailedPrecondition, ReasonConnectionBroken,
		"the vendor rejected the connection's refresh token: the user must reconnect")
}

// rotatedElsewhere re-reads the connection: ok is true when its version
// moved past c's (then tok is the current token, or err why not), or when
// another holder's claim is still running (err says to retry: their
// refresh may still land, so nothing may be concluded yet).
func (b *Broker) rotatedElsewhere(ctx context.Context, c *store.Connection, owner string, used bool) (AccessToken, bool, error) {
	cur, err := b.get(ctx, c.UserID, c.Vendor)
	if err != nil {
		return AccessToken{}, true, err
	}
	if cur.Version == c.Version {
		if cur.ClaimedByOther(owner, time.Now()) {
			return AccessToken{}, true, apperr.E(apperr.Unavailable, ReasonRefreshInProgress, "another refresh is still landing, retry").WithRetryAfter(time.Second)
		}
		return AccessToken{}, false, nil
	}
	if err := usable(cur); err != nil {
		return AccessToken{}, true, err
	}
	if !fresh(cur, 0) {
		return AccessToken{}, true, apperr.E(apperr.Unavailable, ReasonRefreshInProgress, "connection changed during refresh, retry").WithRetryAfter(time.Second)
	}
	tok, err := b.deliver(ctx, cur, used)
	return tok, true, err
}

// --- proactive refresh ---
