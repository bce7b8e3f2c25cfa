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
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/singleflight"

	"github.com/biobridge/bridge/pkg/apperr"
	"github.com/biobridge/bridge/services/tokenbroker/internal/store"
	"github.com/biobridge/bridge/services/tokenbroker/internal/tokencrypt"
	"github.com/biobridge/bridge/services/tokenbroker/internal/tokenlock"
	"github.com/biobridge/bridge/services/tokenbroker/internal/vendors"
	"github.com/biobridge/bridge/services/tokenbroker/tokencache"
)

// Defaults of the broker's durations, written once: the token broker's
// configuration (TOKENBROKER_*) reads its variables over them, and New
// gives a zero field of a Config built by hand the same.
const (
	DefaultSafetyMargin    = 2 * time.Minute
	DefaultRefreshTimeout  = 10 * time.Second
	DefaultLockLease       = 30 * time.Second
	DefaultStorePatience   = 2 * time.Minute
	DefaultStateTTL        = 10 * time.Minute
	DefaultProactiveWindow = 5 * time.Minute
	DefaultActiveWindow    = 72 * time.Hour
)

// MinStoreBudget is the part of the lock lease kept for storing a
// refresh's result: LockLease must be at least RefreshTimeout +
// MinStoreBudget (the service's configuration checks it).
const MinStoreBudget = 2 * time.Second

// Config tunes the broker. A zero duration gets its Default* value;
// WaitTimeout's is LockLease + RefreshTimeout.
type Config struct {
	// SafetyMargin: a token with less life left than this is not handed
	// out, so a caller never starts a vendor call with a token that
	// expires on the way.
	SafetyMargin time.Duration
	// RefreshTimeout is the deadline of one vendor token call.
	RefreshTimeout time.Duration
	// LockLease is the Redis lock lease. It must exceed RefreshTimeout
	// plus the time to store the result (MinStoreBudget).
	LockLease time.Duration
	// WaitTimeout bounds how long a caller waits for another holder's
	// refresh (by default a dead holder's lease expires and the next
	// refresh finishes within it).
	WaitTimeout time.Duration
	// StorePatience is how long a holder whose refresh the vendor answered
	// keeps retrying to store the result, renewing its lease, before it
	// gives up and leaves the result parked for the next holder.
	StorePatience time.Duration
	// StateTTL is how long an authorization state stays valid.
	StateTTL time.Duration
	// ProactiveWindow: active connections whose token expires within this
	// are refreshed in the background.
	ProactiveWindow time.Duration
	// ActiveWindow: a connection counts as active when a token was handed
	// out within this.
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
	def(&c.SafetyMargin, DefaultSafetyMargin)
	def(&c.RefreshTimeout, DefaultRefreshTimeout)
	def(&c.LockLease, DefaultLockLease)
	def(&c.WaitTimeout, c.LockLease+c.RefreshTimeout)
	def(&c.StorePatience, DefaultStorePatience)
	def(&c.StateTTL, DefaultStateTTL)
	def(&c.ProactiveWindow, DefaultProactiveWindow)
	def(&c.ActiveWindow, DefaultActiveWindow)
}

// Deps are the broker's collaborators.
type Deps struct {
	Store   *store.Store
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
	store   *store.Store
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

// New returns a Broker. The lease's relation to the refresh timeout is
// the caller's to check (the service's configuration does, in Validate).
func New(cfg Config, d Deps) *Broker {
	cfg.setDefaults()
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.EventsWritten == nil {
		d.EventsWritten = func() {}
	}
	return &Broker{
		cfg: cfg, store: d.Store, cache: d.Cache, locker: d.Locker, keys: d.Keys,
		vendors: d.Vendors, m: d.Metrics, log: d.Logger, kick: d.EventsWritten, stopped: make(chan struct{}),
	}
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

func publicConnection(c *store.Connection) Connection {
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
