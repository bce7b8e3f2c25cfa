package emulator

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/biobridge/bridge/emulator/internal/oauth"
	"github.com/biobridge/bridge/emulator/internal/oura"
	"github.com/biobridge/bridge/emulator/internal/store"
	"github.com/biobridge/bridge/emulator/internal/webhooks"
	"github.com/biobridge/bridge/emulator/internal/whoop"
)

// Vendor names an emulated vendor. The values are the URL prefixes.
type Vendor = store.Vendor

// The emulated vendors.
const (
	Whoop = store.Whoop
	Oura  = store.Oura
)

// Sentinel errors returned by the Go API; the admin API maps them to 404,
// 400 and 503.
var (
	ErrNotFound = store.ErrNotFound
	ErrInvalid  = store.ErrInvalid
	ErrClosed   = store.ErrClosed
)

// The data types of the Go and admin APIs, defined in the store package.
type (
	// UserSpec describes an emulated user to add.
	UserSpec = store.UserSpec
	// User is an emulated user as the admin API reports it.
	User = store.User
	// RecordSpec describes a record to create for an emulated user.
	RecordSpec = store.RecordSpec
	// Record is a record as the vendor API serves it.
	Record = store.Record
	// RecordFilter selects records for ListRecords; empty fields match all.
	RecordFilter = store.RecordFilter
	// HistorySpec asks for synthetic history for one user.
	HistorySpec = store.HistorySpec
	// HistoryResult counts what GenerateHistory created, keyed
	// "vendor/type".
	HistoryResult = store.HistoryResult
	// DemoResult says what one demo round produced.
	DemoResult = store.DemoResult
)

// Emulator is one in-memory WHOOP + Oura pair. It is safe for concurrent use.
type Emulator struct {
	cfg  Config
	log  *slog.Logger
	seed uint64

	// st holds the lock, the seeded random source, the clock, the faults,
	// the rate-limit windows, the users with their records, the Oura
	// subscriptions and the OAuth state; st.Mu also guards the fields from
	// whoopTarget down to lastOuraEvent. One lock keeps the order of random
	// draws equal to the order of operations, which is what makes a
	// sequential script reproducible from a seed. oauth, whoop and oura
	// serve the HTTP APIs over st.
	st    *store.State
	oauth *oauth.Server
	whoop *whoop.API
	oura  *oura.API

	whoopTarget   string
	ouraTarget    string
	scoreTimers   map[*time.Timer]struct{}
	closed        bool
	ouraVerifyTok string
	demoTicks     int64
	lastOuraEvent time.Time

	counters *store.CounterSet
	hooks    *webhooks.Pool
	handler  http.Handler

	srvMu    sync.Mutex
	srv      *http.Server
	ln       net.Listener
	serveErr chan error
	// fresh holds connections accepted but not yet past their first
	// request header (http.StateNew). Shutdown treats them as busy for 5 s,
	// so Close closes them itself: a client's spare connection (a dial its
	// transport finished after the request that wanted it was gone) would
	// otherwise hold every stack shutdown for 5 s.
	fresh map[net.Conn]struct{}
}

// New builds an Emulator from cfg (defaults applied, then validated) and
// starts its webhook workers. logger may be nil.
func New(cfg Config, logger *slog.Logger) (*Emulator, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("vendor emulator config: %w", err)
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	seed := cfg.Seed
	if seed == 0 {
		seed = rand.Uint64()
	}
	e := &Emulator{
		cfg:           cfg,
		log:           logger.With("component", "vendoremu"),
		seed:          seed,
		st:            store.NewState(seed, cfg.Now, cfg.Faults),
		whoopTarget:   cfg.WhoopWebhookURL,
		ouraTarget:    cfg.OuraWebhookURL,
		scoreTimers:   map[*time.Timer]struct{}{},
		ouraVerifyTok: cfg.OuraVerificationToken,
		counters:      store.NewCounterSet(),
	}
	e.oauth = oauth.New(e.st, oauth.Config{
		WhoopClientID: cfg.WhoopClientID, WhoopClientSecret: cfg.WhoopClientSecret,
		OuraClientID: cfg.OuraClientID, OuraClientSecret: cfg.OuraClientSecret,
		AuthCodeTTL: cfg.AuthCodeTTL, AccessTokenTTL: cfg.AccessTokenTTL, ReuseKeepsGrant: cfg.ReuseKeepsGrant,
	}, oauthUsers{e}, e.counters, e.log)
	e.whoop = whoop.New(e.st, e.counters)
	e.oura = oura.New(e.st, oura.Config{
		ClientID: cfg.OuraClientID, ClientSecret: cfg.OuraClientSecret,
		PageSize: cfg.OuraPageSize, HeartRatePageSize: cfg.OuraHeartRatePageSize,
		DateRangeQuirk: cfg.OuraDateRangeQuirk, SubscriptionTTL: cfg.OuraSubscriptionTTL,
		HTTPClient: cfg.HTTPClient, WebhookTimeout: cfg.WebhookTimeout,
	}, e.counters)
	e.hooks = newPool(e)
	e.handler = e.routes()
	e.log.Info("vendor emulator ready", "seed", seed, "whoop_webhooks", cfg.WhoopWebhookURL != "",
		"oura_webhooks", cfg.OuraWebhookURL != "")
	return e, nil
}

// Seed returns the seed in use (the random one when Config.Seed was 0).
func (e *Emulator) Seed() uint64 { return e.seed }

// Handler serves the whole emulator: /whoop/..., /oura/... and /_admin/....
func (e *Emulator) Handler() http.Handler { return e.handler }

// Start listens on addr (for example "127.0.0.1:8090" or "127.0.0.1:0") and
// serves Handler in the background until Close.
func (e *Emulator) Start(addr string) error {
	e.srvMu.Lock()
	defer e.srvMu.Unlock()
	if e.srv != nil {
		return errors.New("vendor emulator already started")
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", addr, err)
	}
	e.ln = ln
	e.fresh = map[net.Conn]struct{}{}
	e.srv = &http.Server{Handler: e.handler, ReadHeaderTimeout: 10 * time.Second, ConnState: e.trackFresh}
	e.serveErr = make(chan error, 1)
	go func() {
		err := e.srv.Serve(ln)
		if errors.Is(err, http.ErrServerClosed) {
			err = nil
		}
		e.serveErr <- err
	}()
	e.log.Info("vendor emulator listening", "addr", ln.Addr().String())
	return nil
}

func (e *Emulator) trackFresh(c net.Conn, state http.ConnState) {
	e.srvMu.Lock()
	defer e.srvMu.Unlock()
	if state == http.StateNew {
		e.fresh[c] = struct{}{}
	} else {
		delete(e.fresh, c)
	}
}

// closeFresh closes the connections that never sent a request.
func (e *Emulator) closeFresh() {
	e.srvMu.Lock()
	defer e.srvMu.Unlock()
	for c := range e.fresh {
		_ = c.Close()
		delete(e.fresh, c)
	}
}

// Addr is the listening address after Start ("" before).
func (e *Emulator) Addr() string {
	e.srvMu.Lock()
	defer e.srvMu.Unlock()
	if e.ln == nil {
		return ""
	}
	return e.ln.Addr().String()
}

// BaseURL is "http://" + Addr() after Start.
func (e *Emulator) BaseURL() string {
	if a := e.Addr(); a != "" {
		return "http://" + a
	}
	return ""
}

// WhoopURL is the value for WHOOP_API_URL after Start.
func (e *Emulator) WhoopURL() string { return e.BaseURL() + "/whoop" }

// OuraURL is the value for OURA_API_URL after Start.
func (e *Emulator) OuraURL() string { return e.BaseURL() + "/oura" }

// OuraAuthorizeURL is the value for OURA_AUTHORIZE_URL after Start.
func (e *Emulator) OuraAuthorizeURL() string { return e.BaseURL() + "/oura/oauth/authorize" }

// Serve is Start + block until ctx is done, then Close with a 5s budget.
func (e *Emulator) Serve(ctx context.Context, addr string) error {
	if err := e.Start(addr); err != nil {
		return err
	}
	select {
	case <-ctx.Done():
	case err := <-e.serveErr:
		if err != nil {
			return fmt.Errorf("serve vendor emulator: %w", err)
		}
	}
	closeCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	return e.Close(closeCtx)
}

// Close stops the HTTP server (if started), pending score timers and the
// webhook workers. Queued deliveries are abandoned.
func (e *Emulator) Close(ctx context.Context) error {
	e.st.Mu.Lock()
	if e.closed {
		e.st.Mu.Unlock()
		return nil
	}
	e.closed = true
	for t := range e.scoreTimers {
		t.Stop()
	}
	e.scoreTimers = map[*time.Timer]struct{}{}
	e.st.Mu.Unlock()

	var errs []error
	e.srvMu.Lock()
	srv := e.srv
	e.srvMu.Unlock()
	if srv != nil {
		e.closeFresh()
		if err := srv.Shutdown(ctx); err != nil {
			errs = append(errs, fmt.Errorf("shutdown http server: %w", err))
		}
	}
	if err := e.hooks.Close(ctx); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// SetWebhookTargets changes where WHOOP webhooks go and the implicit Oura
// subscription's URL at runtime ("" disables), for tests that start the
// emulator before the service that receives its webhooks.
func (e *Emulator) SetWebhookTargets(whoopURL, ouraURL string) error {
	for _, u := range []string{whoopURL, ouraURL} {
		if u == "" {
			continue
		}
		if err := store.CheckHTTPURL(u); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalid, err)
		}
	}
	e.st.Mu.Lock()
	defer e.st.Mu.Unlock()
	e.whoopTarget, e.ouraTarget = whoopURL, ouraURL
	return nil
}
