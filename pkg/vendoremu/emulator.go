package vendoremu

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"time"
)

// Vendor names an emulated vendor. The values are the URL prefixes.
type Vendor string

// The emulated vendors.
const (
	Whoop Vendor = "whoop"
	Oura  Vendor = "oura"
)

func parseVendor(s string) (Vendor, error) {
	switch Vendor(s) {
	case Whoop, Oura:
		return Vendor(s), nil
	}
	return "", fmt.Errorf("%w: unknown vendor %q (want whoop or oura)", ErrInvalid, s)
}

// Sentinel errors returned by the Go API; the admin API maps them to 404,
// 400 and 409.
var (
	ErrNotFound = errors.New("not found")
	ErrInvalid  = errors.New("invalid request")
	ErrClosed   = errors.New("emulator closed")
)

// Emulator is one in-memory WHOOP + Oura pair. It is safe for concurrent use.
type Emulator struct {
	cfg  Config
	log  *slog.Logger
	seed uint64

	// mu guards all state below, including the random source: one lock keeps
	// the order of random draws equal to the order of operations, which is
	// what makes a sequential script reproducible from a seed.
	mu          sync.Mutex
	rng         *rand.Rand
	users       map[string]*user
	userOrder   []*user
	whoopIDs    map[int64]*user
	nextCycleID int64
	nextGrantID int64

	codes   map[string]*authCode
	access  map[string]*accessToken
	refresh map[string]*refreshToken
	grants  []*grant

	subs            map[string]*subscription
	subOrder        []*subscription
	implicitRemoved map[string]bool // "event_type/data_type" cancelled by a 410

	faults        Faults
	whoopTarget   string
	ouraTarget    string
	rate          rateState
	scoreTimers   map[*time.Timer]struct{}
	closed        bool
	ouraVerifyTok string
	demoTicks     int64
	lastOuraEvent time.Time

	counters counterState
	hooks    *deliverer
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
		cfg:             cfg,
		log:             logger.With("component", "vendoremu"),
		seed:            seed,
		rng:             rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		users:           map[string]*user{},
		whoopIDs:        map[int64]*user{},
		nextCycleID:     93_000_000,
		codes:           map[string]*authCode{},
		access:          map[string]*accessToken{},
		refresh:         map[string]*refreshToken{},
		subs:            map[string]*subscription{},
		implicitRemoved: map[string]bool{},
		faults:          cfg.Faults,
		whoopTarget:     cfg.WhoopWebhookURL,
		ouraTarget:      cfg.OuraWebhookURL,
		scoreTimers:     map[*time.Timer]struct{}{},
		ouraVerifyTok:   cfg.OuraVerificationToken,
	}
	e.rate.init()
	e.counters.reset()
	e.hooks = newDeliverer(e)
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
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	for t := range e.scoreTimers {
		t.Stop()
	}
	e.scoreTimers = map[*time.Timer]struct{}{}
	e.mu.Unlock()

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
	if err := e.hooks.close(ctx); err != nil {
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
		if err := checkHTTPURL(u); err != nil {
			return fmt.Errorf("%w: %w", ErrInvalid, err)
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.whoopTarget, e.ouraTarget = whoopURL, ouraURL
	return nil
}

// now is the configured clock truncated to milliseconds, the precision the
// vendors serve.
func (e *Emulator) now() time.Time { return e.cfg.Now().UTC().Truncate(time.Millisecond) }

// uuidLocked draws a version-4 UUID from the seeded source. Caller holds mu.
func (e *Emulator) uuidLocked() string {
	var b [16]byte
	a, c := e.rng.Uint64(), e.rng.Uint64()
	for i := range 8 {
		b[i] = byte(a >> (8 * i))
		b[8+i] = byte(c >> (8 * i))
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

// chanceLocked reports whether a draw falls under p; p <= 0 draws nothing so
// enabling a fault does not shift unrelated ids. Caller holds mu.
func (e *Emulator) chanceLocked(p float64) bool {
	if p <= 0 {
		return false
	}
	return e.rng.Float64() < p
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, `{"error":"encode response"}`, http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(append(b, '\n'))
}
