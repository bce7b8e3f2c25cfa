// Package broker is the token broker's core: the connect flow, access
// tokens on demand with rotation-safe refresh, revocation, proactive
// refresh and key rotation.
//
// WHOOP and Oura refresh tokens are single-use: presenting one twice makes
// the vendor revoke the whole grant, and the user has to reconnect. So a
// refresh for one connection happens at most once at a time across every
// broker instance:
//
//  1. in-process, concurrent callers share one flight (singleflight);
//  2. across instances, the flight takes a Redis lease lock on the
//     connection (SET NX PX, random owner, compare-and-delete release)
//     whose lease outlasts the vendor call's deadline;
//  3. under the lock the connection is read again (the previous holder may
//     just have refreshed), and the new token pair is written with
//     UPDATE ... WHERE version = <read version> before the lock is released;
//  4. instances that do not get the lock wait, re-reading the store with
//     backoff until the holder's tokens appear or the lease expires (then
//     they take the lock themselves): they do not give up early;
//  5. an invalid_grant answer is checked against the store before the
//     connection is marked broken: if the version moved, someone else
//     rotated the tokens and their tokens are used; if another holder's
//     claim is still running, nothing is concluded yet;
//  6. the refresh is also claimed on the connection row before the vendor
//     is asked (owner value and expiry), so losing the Redis lock alone
//     (failover, eviction) never lets a second instance present the same
//     refresh token;
//  7. once the vendor answered, the result is kept until stored: the
//     holder retries the store for the store patience, renewing its lease
//     and claim, and parks the sealed result in Redis at the first failure;
//     the next holder stores a parked result instead of calling the vendor.
//
// A caller whose access token the vendor rejected (HTTP 401) names it: if
// it is still the stored token the connection is refreshed early, through
// the same flight, lock and claim, so a hundred callers reporting one token
// cause one refresh; a token already replaced just gets the current one.
//
// The vendor call runs on a context detached from the caller's: a caller
// that gives up must not abort a refresh the vendor may already have
// performed, because the only copy of the new refresh token is its answer.
package broker

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	mathrand "math/rand/v2"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/sync/singleflight"

	"github.com/biobridge/bridge/pkg/apperr"
	"github.com/biobridge/bridge/pkg/logging"
	"github.com/biobridge/bridge/services/tokenbroker/internal/postgres"
	"github.com/biobridge/bridge/services/tokenbroker/internal/tokencache"
	"github.com/biobridge/bridge/services/tokenbroker/internal/tokencrypt"
	"github.com/biobridge/bridge/services/tokenbroker/internal/tokenlock"
	"github.com/biobridge/bridge/services/tokenbroker/internal/vendors"
)

// Config tunes the broker. Zero fields get the defaults of setDefaults.
type Config struct {
	// SafetyMargin: a token with less life left than this is not handed out
	// (default 2m), so a caller never starts a vendor call with a token that
	// expires on the way.
	SafetyMargin time.Duration
	// RefreshTimeout is the deadline of one vendor token call (default 10s).
	RefreshTimeout time.Duration
	// LockLease is the Redis lock lease (default 30s). It must exceed
	// RefreshTimeout plus the time to store the result.
	LockLease time.Duration
	// WaitTimeout bounds how long a caller waits for another holder's
	// refresh (default LockLease + RefreshTimeout: a dead holder's lease
	// expires and the next refresh finishes within it).
	WaitTimeout time.Duration
	// StorePatience is how long a holder whose refresh the vendor answered
	// keeps retrying to store the result, renewing its lease, before it
	// gives up and leaves the result parked for the next holder
	// (default 2m).
	StorePatience time.Duration
	// StateTTL is how long an authorization state stays valid (default 10m).
	StateTTL time.Duration
	// ProactiveWindow: active connections whose token expires within this
	// are refreshed in the background (default 5m).
	ProactiveWindow time.Duration
	// ActiveWindow: a connection counts as active when a token was handed
	// out within this (default 72h).
	ActiveWindow time.Duration
	// PublicBaseURL is the broker's public root (the vendors' redirect
	// URIs are on it).
	PublicBaseURL string
	// ReturnURLs are the apps' registered return URLs (OAUTH_RETURN_URLS):
	// after the vendor's redirect the browser is sent to one of them with
	// vendor, code and state, and the app completes with its user's JWT.
	// StartAuthorization's return_to must equal one of them exactly; empty
	// picks the first. Without any, connecting is refused.
	ReturnURLs []string
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.SafetyMargin, 2*time.Minute)
	def(&c.RefreshTimeout, 10*time.Second)
	def(&c.LockLease, 30*time.Second)
	def(&c.WaitTimeout, c.LockLease+c.RefreshTimeout)
	def(&c.StorePatience, 2*time.Minute)
	def(&c.StateTTL, 10*time.Minute)
	def(&c.ProactiveWindow, 5*time.Minute)
	def(&c.ActiveWindow, 72*time.Hour)
}

// minStoreBudget is the part of the lease kept for storing the result.
const minStoreBudget = 2 * time.Second

// Validate checks the relations between durations.
func (c Config) Validate() error {
	if c.LockLease < c.RefreshTimeout+minStoreBudget {
		return fmt.Errorf("lock lease %s must exceed the refresh timeout %s by at least %s", c.LockLease, c.RefreshTimeout, minStoreBudget)
	}
	return nil
}

// Deps are the broker's collaborators.
type Deps struct {
	Store   *postgres.Store
	Cache   *tokencache.Cache
	Locker  *tokenlock.Locker
	Keys    *tokencrypt.Keyring
	Vendors map[string]*vendors.Vendor
	Metrics *Metrics
	Logger  *slog.Logger
	// EventsWritten is called after a transaction wrote connection events
	// (the relay forwards them sooner than its next poll).
	EventsWritten func()
}

// Broker implements the token broker's operations.
type Broker struct {
	cfg     Config
	store   *postgres.Store
	cache   *tokencache.Cache
	locker  *tokenlock.Locker
	keys    *tokencrypt.Keyring
	vendors map[string]*vendors.Vendor
	m       *Metrics
	log     *slog.Logger
	kick    func()
	flights singleflight.Group
	// inflight counts running flights, so shutdown can wait for refreshes
	// that the vendor may already have answered before closing the store.
	inflight atomic.Int64
	// stopped is closed by Stop: holders still retrying a store give up
	// (their result stays parked in Redis).
	stopped  chan struct{}
	stopOnce sync.Once
}

// New returns a Broker.
func New(cfg Config, d Deps) (*Broker, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.EventsWritten == nil {
		d.EventsWritten = func() {}
	}
	return &Broker{
		cfg: cfg, store: d.Store, cache: d.Cache, locker: d.Locker, keys: d.Keys,
		vendors: d.Vendors, m: d.Metrics, log: d.Logger, kick: d.EventsWritten, stopped: make(chan struct{}),
	}, nil
}

// Connection is what callers see of a connection (never tokens).
type Connection struct {
	UserID        string
	Vendor        string
	VendorUserID  string
	Status        string
	Scopes        []string
	ConnectedAt   time.Time
	LastRefreshAt time.Time
	// LastDataAt is when ingest last stored new data of the connection
	// (zero: never).
	LastDataAt time.Time
	// Stale is true when no data arrived for longer than ingest's
	// staleness threshold.
	Stale bool
}

func publicConnection(c *postgres.Connection) Connection {
	return Connection{
		UserID: c.UserID, Vendor: c.Vendor, VendorUserID: c.VendorUserID, Status: c.Status,
		Scopes: c.Scopes, ConnectedAt: c.ConnectedAt, LastRefreshAt: c.LastRefreshAt,
		LastDataAt: c.LastDataAt, Stale: c.Stale,
	}
}

// AccessToken is a usable vendor access token.
type AccessToken struct {
	Token     string
	ExpiresAt time.Time
}

// Application error reasons.
const (
	ReasonUnknownVendor       = "unknown_vendor"
	ReasonVendorNotConfigured = "vendor_not_configured"
	ReasonConnectionNotFound  = "connection_not_found"
	ReasonConnectionBroken    = "connection_broken"
	ReasonConnectionRevoked   = "connection_revoked"
	ReasonRefreshInProgress   = "refresh_in_progress"
	ReasonVendorUnavailable   = "vendor_unavailable"
	ReasonVendorRejected      = "vendor_rejected_client"
	ReasonInvalidState        = "invalid_state"
	ReasonStateExpired        = "state_expired"
	ReasonAuthorizationDenied = "authorization_denied"
	ReasonInvalidCode         = "invalid_code"
	ReasonVendorAccountInUse  = "vendor_account_in_use"
	ReasonInvalidReturnTo     = "invalid_return_to"
	ReasonNoReturnURL         = "no_return_url"
	// ReasonStartedByAnotherUser: the app completing the authorization is
	// signed in as someone else than the user who started it, the
	// account-linking CSRF (a link started by one user, approved in another
	// user's browser). Nothing is linked and the state is spent.
	ReasonStartedByAnotherUser = "started_by_another_user"
	ReasonTokenUnreadable      = "token_unreadable"
)

// Vendor returns the configured vendor named name.
func (b *Broker) Vendor(name string) (*vendors.Vendor, error) {
	switch name {
	case vendors.Whoop, vendors.Oura:
	case "":
		return nil, apperr.E(apperr.Invalid, ReasonUnknownVendor, "vendor is required (whoop or oura)")
	default:
		return nil, apperr.E(apperr.Invalid, ReasonUnknownVendor, "unknown vendor (want whoop or oura)")
	}
	v := b.vendors[name]
	if v == nil {
		return nil, apperr.E(apperr.FailedPrecondition, ReasonVendorNotConfigured, name+" is not configured on this broker")
	}
	return v, nil
}

// aad binds a ciphertext to its connection and column.
func aad(userID, vendor, field string) []byte {
	return []byte("biobridge.tokens.v1|" + vendor + "|" + field + "|" + userID)
}

// --- access tokens ---

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

// Drain waits until no flight is running or ctx ends.
func (b *Broker) Drain(ctx context.Context) error {
	for b.inflight.Load() > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
	return nil
}

// Stop makes holders that are still retrying to store a refresh result
// give up at once, leaving the result parked for the next holder (call it
// after Drain timed out, before the stores are closed).
func (b *Broker) Stop() { b.stopOnce.Do(func() { close(b.stopped) }) }

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

func (b *Broker) fillCache(ctx context.Context, c *postgres.Connection) {
	ttl := time.Until(c.AccessExpiresAt) - b.cfg.SafetyMargin
	e := tokencache.Entry{Version: c.Version, KeyID: c.KeyID, Sealed: c.AccessTokenEnc, ExpiresAt: c.AccessExpiresAt}
	if err := b.cache.Put(ctx, c.UserID, c.Vendor, e, ttl); err != nil {
		b.log.WarnContext(ctx, "token cache write failed", "vendor", c.Vendor, "err", err)
	}
}

func usable(c *postgres.Connection) error {
	switch c.Status {
	case postgres.StatusActive:
		return nil
	case postgres.StatusBroken:
		return apperr.E(apperr.FailedPrecondition, ReasonConnectionBroken, "the vendor rejected the connection's refresh token: the user must reconnect")
	default:
		return apperr.E(apperr.NotFound, ReasonConnectionRevoked, "the connection was revoked")
	}
}

func (b *Broker) get(ctx context.Context, userID, vendor string) (*postgres.Connection, error) {
	c, err := b.store.Get(ctx, userID, vendor)
	if errors.Is(err, postgres.ErrNotFound) {
		return nil, apperr.E(apperr.NotFound, ReasonConnectionNotFound, "no connection for this user and vendor")
	}
	if err != nil {
		return nil, err
	}
	return c, nil
}

// fresh reports whether c's access token has more than minLife left.
func fresh(c *postgres.Connection, minLife time.Duration) bool {
	return c.KeyID != "" && time.Until(c.AccessExpiresAt) > minLife
}

func (b *Broker) openAccess(c *postgres.Connection) (AccessToken, error) {
	plain, err := b.keys.Open(c.KeyID, c.AccessTokenEnc, aad(c.UserID, c.Vendor, "access"))
	if err != nil {
		return AccessToken{}, apperr.Wrap(err, apperr.Internal, ReasonTokenUnreadable, "stored token cannot be decrypted")
	}
	return AccessToken{Token: string(plain), ExpiresAt: c.AccessExpiresAt}, nil
}

// deliver hands out c's access token: it warms the cache and records use.
func (b *Broker) deliver(ctx context.Context, c *postgres.Connection, used bool) (AccessToken, error) {
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
func (b *Broker) needsRefresh(c *postgres.Connection, n need) bool {
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

// errClaimed: another holder's refresh claim is on the connection row
// although this caller holds the Redis lock (the lock was lost meanwhile).
// The caller waits for that holder like for a held lock.
var errClaimed = errors.New("refresh claimed by another holder")

// obtain returns a token meeting n, refreshing under the connection's lock
// when needed and otherwise waiting for the holder.
func (b *Broker) obtain(ctx context.Context, userID, vendor string, n need, used bool) (AccessToken, error) {
	ctx, cancel := context.WithTimeout(ctx, b.cfg.WaitTimeout+b.cfg.RefreshTimeout+minStoreBudget)
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
		if errors.Is(err, postgres.ErrClaimed) {
			return AccessToken{}, errClaimed
		}
		return AccessToken{}, err
	}
	// The vendor call must end while the lease still protects it, with
	// time left to store the answer.
	deadline := time.Now().Add(b.cfg.RefreshTimeout)
	if limit := lock.Expires().Add(-minStoreBudget); limit.Before(deadline) {
		deadline = limit
	}
	return b.refreshConn(ctx, lock, c, deadline, used)
}

// refreshConn presents c's refresh token to the vendor once and stores the
// answer fenced by c.Version. The caller holds the connection's lock and
// its claim; c is what it read under the lock.
func (b *Broker) refreshConn(ctx context.Context, lock *tokenlock.Lock, c *postgres.Connection, deadline time.Time, used bool) (AccessToken, error) {
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
func (b *Broker) land(ctx context.Context, lock *tokenlock.Lock, c *postgres.Connection, t postgres.Tokens, used bool) (AccessToken, error) {
	log := b.log.With("vendor", c.Vendor, logging.UserID(c.UserID))
	updated, err := b.keep(ctx, lock, c, t)
	switch {
	case errors.Is(err, postgres.ErrVersionConflict):
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
func (b *Broker) keep(ctx context.Context, lock *tokenlock.Lock, c *postgres.Connection, t postgres.Tokens) (*postgres.Connection, error) {
	ctx = context.WithoutCancel(ctx)
	giveUp := time.Now().Add(b.cfg.StorePatience)
	backoff := 100 * time.Millisecond
	parked := false
	for {
		sctx, cancel := context.WithTimeout(ctx, storeAttemptTimeout)
		updated, err := b.store.StoreRefreshed(sctx, c.UserID, c.Vendor, c.Version, t, time.Now())
		cancel()
		if err == nil || errors.Is(err, postgres.ErrVersionConflict) {
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
func (b *Broker) renew(ctx context.Context, lock *tokenlock.Lock, c *postgres.Connection) {
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	if ok, err := lock.Extend(rctx, b.cfg.LockLease); err != nil || !ok {
		b.log.WarnContext(ctx, "refresh lock lost while storing the result", "vendor", c.Vendor, "err", err)
	}
	if err := b.store.ClaimRefresh(rctx, c.UserID, c.Vendor, c.Version, lock.Owner(), b.cfg.LockLease); err != nil && !errors.Is(err, postgres.ErrClaimed) {
		b.log.DebugContext(ctx, "refresh claim not renewed", "vendor", c.Vendor, "err", err)
	}
}

// parkedTTL is how long a parked refresh result waits for a holder to
// store it. Any use of the connection (a token request, the proactive
// refresh) stores it much sooner; the TTL only bounds garbage.
const parkedTTL = 30 * 24 * time.Hour

// park keeps the sealed refresh result in Redis, and reports whether it did.
func (b *Broker) park(ctx context.Context, c *postgres.Connection, t postgres.Tokens) bool {
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

func (b *Broker) unpark(ctx context.Context, c *postgres.Connection, stored int64) {
	if err := b.cache.Unpark(ctx, c.UserID, c.Vendor, stored); err != nil {
		b.log.WarnContext(ctx, "cannot drop the parked refresh result", "vendor", c.Vendor, "err", err)
	}
}

// landParked stores a result parked from exactly c's version, if there is
// one. ok reports whether there was.
func (b *Broker) landParked(ctx context.Context, lock *tokenlock.Lock, c *postgres.Connection, used bool) (AccessToken, bool, error) {
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
	tok, err := b.land(ctx, lock, c, postgres.Tokens{
		KeyID: p.KeyID, AccessTokenEnc: p.AccessTokenEnc, RefreshTokenEnc: p.RefreshTokenEnc, AccessExpiresAt: p.AccessExpiresAt,
	}, used)
	return tok, true, err
}

func (b *Broker) releaseClaim(ctx context.Context, c *postgres.Connection, owner string) {
	if err := b.store.ReleaseClaim(ctx, c.UserID, c.Vendor, owner); err != nil {
		// It expires with the lease anyway.
		b.log.WarnContext(ctx, "cannot release the refresh claim", "vendor", c.Vendor, "err", err)
	}
}

func (b *Broker) sealTokens(userID, vendor string, t *oauth2.Token) (postgres.Tokens, error) {
	kid, access, err := b.keys.Seal([]byte(t.AccessToken), aad(userID, vendor, "access"))
	if err != nil {
		return postgres.Tokens{}, err
	}
	_, refresh, err := b.keys.Seal([]byte(t.RefreshToken), aad(userID, vendor, "refresh"))
	if err != nil {
		return postgres.Tokens{}, err
	}
	expiry := t.Expiry
	if expiry.IsZero() {
		// No expires_in: assume the vendors' usual hour rather than forever,
		// so the token is refreshed rather than used until it fails.
		expiry = time.Now().Add(time.Hour)
	}
	return postgres.Tokens{KeyID: kid, AccessTokenEnc: access, RefreshTokenEnc: refresh, AccessExpiresAt: expiry}, nil
}

// refreshFailed decides what a failed refresh means. Only invalid_grant (or
// a missing refresh token) can break a connection, and only when nobody
// else rotated the tokens meanwhile: no parked result from this version,
// no newer version in the store, and no other holder's claim still
// running (a refresh of theirs may still land).
func (b *Broker) refreshFailed(ctx context.Context, lock *tokenlock.Lock, c *postgres.Connection, reason string, cause error, used bool) (AccessToken, error) {
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
	if errors.Is(err, postgres.ErrVersionConflict) {
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
func (b *Broker) rotatedElsewhere(ctx context.Context, c *postgres.Connection, owner string, used bool) (AccessToken, bool, error) {
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
	var after postgres.Key
	for {
		rows, err := b.store.StaleKeyRows(ctx, primary, after, 100)
		if err != nil {
			return done, failed, err
		}
		if len(rows) == 0 {
			return done, failed, nil
		}
		for _, c := range rows {
			after = postgres.Key{UserID: c.UserID, Vendor: c.Vendor}
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

func (b *Broker) reencryptOne(ctx context.Context, c *postgres.Connection) (bool, error) {
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
		postgres.Tokens{KeyID: kid, AccessTokenEnc: accessEnc, RefreshTokenEnc: refreshEnc})
}

// --- connect flow ---

// StartAuthorization creates a single-use, expiring state bound to userID
// and returns the vendor's authorize URL with it and a PKCE challenge.
// returnTo is the app's return URL (one of Config.ReturnURLs, empty for
// the first) the vendor's redirect is forwarded to.
func (b *Broker) StartAuthorization(ctx context.Context, userID, vendor, returnTo string) (string, time.Time, error) {
	v, err := b.Vendor(vendor)
	if err != nil {
		return "", time.Time{}, err
	}
	returnTo, err = b.returnURL(returnTo)
	if err != nil {
		return "", time.Time{}, err
	}
	raw := make([]byte, 32)
	if _, err := rand.Read(raw); err != nil {
		return "", time.Time{}, fmt.Errorf("generate state: %w", err)
	}
	state := base64.RawURLEncoding.EncodeToString(raw)
	verifier := oauth2.GenerateVerifier()
	kid, sealed, err := b.keys.Seal([]byte(verifier), stateAAD(state))
	if err != nil {
		return "", time.Time{}, err
	}
	expires := time.Now().Add(b.cfg.StateTTL)
	if err := b.store.SaveState(ctx, state, postgres.State{
		UserID: userID, Vendor: vendor, KeyID: kid, CodeVerifierEnc: sealed, ReturnTo: returnTo, ExpiresAt: expires,
	}); err != nil {
		return "", time.Time{}, err
	}
	return v.AuthCodeURL(state, verifier), expires, nil
}

func stateAAD(state string) []byte {
	return []byte("biobridge.tokens.v1|state|" + hex.EncodeToString(postgres.HashState(state)))
}

// returnURL picks the app's return URL: exactly one of the registered
// ones (an open redirect carrying an authorization code is how codes get
// stolen), the first when none is asked for.
func (b *Broker) returnURL(asked string) (string, error) {
	if len(b.cfg.ReturnURLs) == 0 {
		return "", apperr.E(apperr.FailedPrecondition, ReasonNoReturnURL, "connecting is not configured: the broker has no app return URL (OAUTH_RETURN_URLS)")
	}
	if asked == "" {
		return b.cfg.ReturnURLs[0], nil
	}
	if slices.Contains(b.cfg.ReturnURLs, asked) {
		return asked, nil
	}
	return "", apperr.E(apperr.Invalid, ReasonInvalidReturnTo, "return_to must be one of the app return URLs registered with the broker")
}

// validState reads state for vendor, refusing unknown, mismatched and
// expired ones. With consume set the state is deleted as it is read, so it
// works once even when two completions race.
func (b *Broker) validState(ctx context.Context, vendor, state string, consume bool) (*postgres.State, error) {
	if state == "" {
		return nil, apperr.E(apperr.Invalid, ReasonInvalidState, "state is required")
	}
	read := b.store.PeekState
	if consume {
		read = b.store.ConsumeState
	}
	st, err := read(ctx, state)
	if errors.Is(err, postgres.ErrNotFound) {
		return nil, apperr.E(apperr.Invalid, ReasonInvalidState, "unknown or already used state")
	}
	if err != nil {
		return nil, err
	}
	if st.Vendor != vendor {
		return nil, apperr.E(apperr.Invalid, ReasonInvalidState, "state was issued for another vendor")
	}
	if !time.Now().Before(st.ExpiresAt) {
		return nil, apperr.E(apperr.FailedPrecondition, ReasonStateExpired, "authorization took too long: start again")
	}
	return st, nil
}

// AuthorizationCallback handles the vendor's redirect of the browser. It
// links nothing (the browser may not be the user's: the account-linking
// CSRF): it returns the app's return URL with vendor, code and state, or
// the vendor's error, for the app to complete with its user's JWT.
func (b *Broker) AuthorizationCallback(ctx context.Context, vendor, code, state, vendorError, errorDescription string) (string, error) {
	st, err := b.validState(ctx, vendor, state, false)
	if err != nil {
		return "", err
	}
	q := url.Values{}
	q.Set("vendor", vendor)
	q.Set("state", state)
	if vendorError != "" {
		q.Set("error", safeCode(vendorError))
		if errorDescription != "" && len(errorDescription) <= 200 {
			q.Set("error_description", errorDescription)
		}
	} else {
		q.Set("code", code)
	}
	// Appended as text: the registered URL stays byte for byte what the
	// app registered (url.URL would rewrite "com.example.app:/oauth").
	sep := "?"
	if strings.Contains(st.ReturnTo, "?") {
		sep = "&"
	}
	return st.ReturnTo + sep + q.Encode(), nil
}

// CompleteAuthorization consumes state, exchanges code and stores the
// connection, for userID (the app's signed-in user) only when userID
// started the authorization. The state is consumed even when the rest
// fails: a state works once.
func (b *Broker) CompleteAuthorization(ctx context.Context, userID, vendor, code, state, vendorError string) (Connection, error) {
	st, err := b.validState(ctx, vendor, state, true)
	if err != nil {
		return Connection{}, err
	}
	if st.UserID != userID {
		b.log.WarnContext(ctx, "authorization completed by another user than the one who started it; nothing linked (possible account-linking attack)",
			"vendor", vendor, logging.UserID(userID))
		return Connection{}, apperr.E(apperr.PermissionDenied, ReasonStartedByAnotherUser,
			"this connection was started from another account: nothing was linked; start connecting again from this account")
	}
	if vendorError != "" {
		return Connection{}, apperr.E(apperr.FailedPrecondition, ReasonAuthorizationDenied, "the vendor did not authorize the connection ("+safeCode(vendorError)+")")
	}
	if code == "" {
		return Connection{}, apperr.E(apperr.Invalid, "missing_code", "code is required")
	}
	v, err := b.Vendor(vendor)
	if err != nil {
		return Connection{}, err
	}
	verifier, err := b.keys.Open(st.KeyID, st.CodeVerifierEnc, stateAAD(state))
	if err != nil {
		return Connection{}, apperr.Wrap(err, apperr.Internal, ReasonTokenUnreadable, "authorization state cannot be decrypted")
	}
	xctx, cancel := context.WithTimeout(ctx, b.cfg.RefreshTimeout)
	defer cancel()
	tok, err := v.Exchange(xctx, code, string(verifier))
	if err != nil {
		if r := vendors.Reason(err); r == vendors.ReasonInvalidGrant {
			return Connection{}, apperr.Wrap(err, apperr.FailedPrecondition, ReasonInvalidCode, "the vendor rejected the authorization code: start again")
		}
		return Connection{}, apperr.Wrap(err, apperr.Unavailable, ReasonVendorUnavailable, "vendor token endpoint unavailable, retry later")
	}
	vendorUserID, err := v.UserID(xctx, tok.AccessToken)
	if err != nil {
		return Connection{}, apperr.Wrap(err, apperr.Unavailable, ReasonVendorUnavailable, "vendor profile unavailable, retry later")
	}
	sealed, err := b.sealTokens(st.UserID, vendor, tok)
	if err != nil {
		return Connection{}, err
	}
	c, err := b.store.Connect(ctx, &postgres.Connection{
		UserID: st.UserID, Vendor: vendor, VendorUserID: vendorUserID, Scopes: v.Scopes(tok),
		KeyID: sealed.KeyID, AccessTokenEnc: sealed.AccessTokenEnc, RefreshTokenEnc: sealed.RefreshTokenEnc,
		AccessExpiresAt: sealed.AccessExpiresAt,
	}, time.Now())
	if errors.Is(err, postgres.ErrVendorAccountInUse) {
		return Connection{}, apperr.E(apperr.AlreadyExists, ReasonVendorAccountInUse, "this vendor account is connected to another user")
	}
	if err != nil {
		return Connection{}, err
	}
	b.kick()
	b.fillCache(ctx, c)
	b.log.InfoContext(ctx, "vendor connected", "vendor", vendor, logging.UserID(st.UserID))
	return publicConnection(c), nil
}

// safeCode keeps an OAuth error code if it looks like one (it is echoed to
// the client).
func safeCode(s string) string {
	if len(s) > 64 {
		return "error"
	}
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r == '_') {
			return "error"
		}
	}
	return s
}

// --- lifecycle ---

// ListConnections lists userID's connections, ordered by vendor.
func (b *Broker) ListConnections(ctx context.Context, userID string) ([]Connection, error) {
	rows, err := b.store.List(ctx, userID)
	if err != nil {
		return nil, err
	}
	out := make([]Connection, len(rows))
	for i, r := range rows {
		out[i] = publicConnection(r)
	}
	return out, nil
}

// ResolveVendorUser maps a vendor account to its internal user.
func (b *Broker) ResolveVendorUser(ctx context.Context, vendor, vendorUserID string) (Connection, error) {
	if _, err := b.Vendor(vendor); err != nil && apperr.CodeOf(err) == apperr.Invalid {
		return Connection{}, err
	}
	if vendorUserID == "" {
		return Connection{}, apperr.E(apperr.Invalid, "missing_vendor_user_id", "vendor_user_id is required")
	}
	c, err := b.store.ResolveVendorUser(ctx, vendor, vendorUserID)
	if errors.Is(err, postgres.ErrNotFound) {
		return Connection{}, apperr.E(apperr.NotFound, ReasonConnectionNotFound, "no user is connected with this vendor account")
	}
	if err != nil {
		return Connection{}, err
	}
	return publicConnection(c), nil
}

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
	if c.Status == postgres.StatusRevoked {
		return false, nil
	}
	log := b.log.With("vendor", vendor, logging.UserID(userID))
	atVendor := false
	if v != nil && c.Status == postgres.StatusActive {
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
	if err != nil && !errors.Is(err, postgres.ErrNotFound) {
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

// DeleteExpiredStates removes authorization states past their expiry.
func (b *Broker) DeleteExpiredStates(ctx context.Context) (int64, error) {
	return b.store.DeleteExpiredStates(ctx, time.Now())
}
