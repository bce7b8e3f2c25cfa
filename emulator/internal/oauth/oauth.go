// Package oauth is both vendors' OAuth 2.0 authorization server: the
// authorize endpoint (auto-approved, the user named by login_hint), the
// token endpoint (authorization_code with PKCE, single-use rotating refresh
// tokens, the reuse hazard), Oura's revoke endpoint, and the in-process
// helpers the admin API uses. Grants, codes and tokens live in
// store.State; every token is drawn from its seeded source under its lock.
package oauth

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/biobridge/bridge/emulator/internal/jsonhttp"
	"github.com/biobridge/bridge/emulator/internal/store"
)

// Config is what the authorization server needs from the emulator's
// configuration.
type Config struct {
	WhoopClientID, WhoopClientSecret string
	OuraClientID, OuraClientSecret   string
	AuthCodeTTL, AccessTokenTTL      time.Duration
	// ReuseKeepsGrant keeps the grant alive when a used refresh token is
	// presented again (the vendors revoke it by default).
	ReuseKeepsGrant bool
}

// Users resolves the login_hint of an authorize request to an emulated
// user's name, adding the user when needed. The caller holds the
// store.State lock.
type Users interface {
	LoginLocked(hint string) (string, error)
}

// Server serves the OAuth endpoints of both vendors.
type Server struct {
	st       *store.State
	cfg      Config
	users    Users
	counters *store.CounterSet
	log      *slog.Logger
}

// New returns a Server over st.
func New(st *store.State, cfg Config, users Users, counters *store.CounterSet, log *slog.Logger) *Server {
	return &Server{st: st, cfg: cfg, users: users, counters: counters, log: log}
}

// The vendors' scopes (docs/vendors.md).
var (
	whoopScopes = []string{
		"read:recovery", "read:cycles", "read:workout", "read:sleep", "read:profile", "read:body_measurement", "offline",
	}
	ouraScopes = []string{"email", "personal", "daily", "heartrate", "workout", "tag", "session", "spo2Daily"}
)

func (s *Server) clientCreds(v store.Vendor) (id, secret string) {
	if v == store.Whoop {
		return s.cfg.WhoopClientID, s.cfg.WhoopClientSecret
	}
	return s.cfg.OuraClientID, s.cfg.OuraClientSecret
}

// tokenFault applies latency and TokenErrorRate to the token endpoint.
func (s *Server) tokenFault(w http.ResponseWriter, r *http.Request, v store.Vendor) bool {
	s.st.Mu.Lock()
	latency := s.st.Faults.Latency
	fail := s.st.ChanceLocked(s.st.Faults.TokenErrorRate)
	s.st.Mu.Unlock()
	if latency > 0 {
		t := time.NewTimer(latency)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return true
		}
	}
	if fail {
		s.counters.Count(v, func(c *store.VendorCounters) { c.InjectedErrors++ })
		oauthError(w, http.StatusInternalServerError, "server_error", "injected fault")
		return true
	}
	return false
}

// Routes registers both vendors' OAuth endpoints.
func (s *Server) Routes(mux *http.ServeMux) {
	mux.HandleFunc("GET /whoop/oauth/oauth2/auth", s.authorize(store.Whoop))
	mux.HandleFunc("POST /whoop/oauth/oauth2/token", s.token(store.Whoop))
	mux.HandleFunc("GET /oura/oauth/authorize", s.authorize(store.Oura))
	mux.HandleFunc("POST /oura/oauth/token", s.token(store.Oura))
	mux.HandleFunc("GET /oura/oauth/revoke", s.ouraRevoke)
	mux.HandleFunc("POST /oura/oauth/revoke", s.ouraRevoke)
}

func oauthError(w http.ResponseWriter, status int, code, desc string) {
	jsonhttp.Write(w, status, map[string]string{"error": code, "error_description": desc})
}

// authorize auto-approves: the consent screen is skipped and the emulated
// user named by login_hint (created on first use; default the first user,
// or "demo" when there is none) is redirected back with a code and the
// caller's state. emu_deny=1 emulates the user pressing "deny".
func (s *Server) authorize(v store.Vendor) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		clientID, _ := s.clientCreds(v)
		if q.Get("client_id") != clientID {
			oauthError(w, http.StatusBadRequest, "invalid_client", "unknown client_id")
			return
		}
		redirect, err := url.Parse(q.Get("redirect_uri"))
		if err != nil || (redirect.Scheme != "http" && redirect.Scheme != "https") || redirect.Host == "" {
			oauthError(w, http.StatusBadRequest, "invalid_request", "redirect_uri must be an absolute http(s) url")
			return
		}
		state := q.Get("state")
		back := func(params map[string]string) {
			rq := redirect.Query()
			for k, val := range params {
				rq.Set(k, val)
			}
			if state != "" {
				rq.Set("state", state)
			}
			redirect.RawQuery = rq.Encode()
			http.Redirect(w, r, redirect.String(), http.StatusFound)
		}
		fail := func(code, desc string) {
			s.counters.Count(v, func(c *store.VendorCounters) { c.AuthorizeErrors++ })
			back(map[string]string{"error": code, "error_description": desc})
		}
		if q.Get("response_type") != "code" {
			fail("unsupported_response_type", "response_type must be code")
			return
		}
		// WHOOP rejects a state shorter than eight characters.
		if v == store.Whoop && len(state) < 8 {
			fail("invalid_request", "state must be at least 8 characters")
			return
		}
		known := whoopScopes
		if v == store.Oura {
			known = ouraScopes
		}
		scopes := map[string]bool{}
		requested := strings.Fields(q.Get("scope"))
		for _, sc := range requested {
			if !slices.Contains(known, sc) {
				fail("invalid_scope", "unknown scope "+sc)
				return
			}
			scopes[sc] = true
		}
		if len(requested) == 0 {
			for _, sc := range known {
				// Without offline WHOOP issues no refresh token; asking for
				// nothing does not get it either.
				if sc != "offline" {
					scopes[sc] = true
				}
			}
		}
		challenge, method := q.Get("code_challenge"), q.Get("code_challenge_method")
		if challenge != "" {
			if method == "" {
				method = "plain"
			}
			if method != "S256" && method != "plain" {
				fail("invalid_request", "code_challenge_method must be S256 or plain")
				return
			}
		}
		if q.Get("emu_deny") == "1" {
			fail("access_denied", "the user denied access")
			return
		}
		s.st.Mu.Lock()
		u, err := s.users.LoginLocked(q.Get("login_hint"))
		if err != nil {
			s.st.Mu.Unlock()
			oauthError(w, http.StatusBadRequest, "invalid_request", err.Error())
			return
		}
		code := s.st.TokenLocked(24)
		s.st.Codes[code] = &store.AuthCode{
			Vendor: v, User: u, RedirectURI: q.Get("redirect_uri"), Scopes: scopes, Explicit: len(requested) > 0,
			Challenge: challenge, Method: method, Expires: s.st.Now().Add(s.cfg.AuthCodeTTL),
		}
		s.st.Mu.Unlock()
		s.counters.Count(v, func(c *store.VendorCounters) { c.AuthorizationCodes++ })
		back(map[string]string{"code": code})
	}
}

// token is the token endpoint: authorization_code and refresh_token grants,
// client authenticated by form fields or HTTP Basic, refresh tokens
// single-use.
func (s *Server) token(v store.Vendor) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		s.counters.Count(v, func(c *store.VendorCounters) { c.TokenRequests++ })
		if s.tokenFault(w, r, v) {
			return
		}
		if err := r.ParseForm(); err != nil {
			oauthError(w, http.StatusBadRequest, "invalid_request", "body must be application/x-www-form-urlencoded")
			return
		}
		id, secret, basic := r.BasicAuth()
		if !basic {
			id, secret = r.PostForm.Get("client_id"), r.PostForm.Get("client_secret")
		}
		wantID, wantSecret := s.clientCreds(v)
		if subtle.ConstantTimeCompare([]byte(id), []byte(wantID)) != 1 ||
			subtle.ConstantTimeCompare([]byte(secret), []byte(wantSecret)) != 1 {
			s.counters.Count(v, func(c *store.VendorCounters) { c.InvalidClient++ })
			oauthError(w, http.StatusUnauthorized, "invalid_client", "client authentication failed")
			return
		}
		switch r.PostForm.Get("grant_type") {
		case "authorization_code":
			s.exchangeCode(w, r, v)
		case "refresh_token":
			s.refreshGrant(w, r, v)
		default:
			oauthError(w, http.StatusBadRequest, "unsupported_grant_type", "grant_type must be authorization_code or refresh_token")
		}
	}
}

func (s *Server) invalidGrant(w http.ResponseWriter, v store.Vendor, desc string) {
	s.counters.Count(v, func(c *store.VendorCounters) { c.InvalidGrants++ })
	oauthError(w, http.StatusBadRequest, "invalid_grant", desc)
}

func (s *Server) exchangeCode(w http.ResponseWriter, r *http.Request, v store.Vendor) {
	f := r.PostForm
	s.st.Mu.Lock()
	c, ok := s.st.Codes[f.Get("code")]
	switch {
	case !ok || c.Vendor != v:
		s.st.Mu.Unlock()
		s.invalidGrant(w, v, "unknown authorization code")
		return
	case c.Used:
		// RFC 6749 §4.1.2: a replayed code revokes what it issued.
		if c.IssuedToGrant != nil {
			c.IssuedToGrant.Revoked = true
		}
		s.st.Mu.Unlock()
		s.invalidGrant(w, v, "authorization code already used")
		return
	case !s.st.Now().Before(c.Expires):
		s.st.Mu.Unlock()
		s.invalidGrant(w, v, "authorization code expired")
		return
	case f.Get("redirect_uri") != c.RedirectURI:
		s.st.Mu.Unlock()
		s.invalidGrant(w, v, "redirect_uri does not match the authorization request")
		return
	}
	if c.Challenge != "" {
		verifier := f.Get("code_verifier")
		want := verifier
		if c.Method == "S256" {
			sum := sha256.Sum256([]byte(verifier))
			want = base64.RawURLEncoding.EncodeToString(sum[:])
		}
		if verifier == "" || subtle.ConstantTimeCompare([]byte(want), []byte(c.Challenge)) != 1 {
			s.st.Mu.Unlock()
			s.counters.Count(v, func(c *store.VendorCounters) { c.PKCEFailures++ })
			s.invalidGrant(w, v, "code_verifier does not match code_challenge")
			return
		}
	}
	c.Used = true
	g := s.st.NewGrantLocked(v, c.User, c.Scopes, c.Explicit)
	c.IssuedToGrant = g
	resp := s.issueLocked(g)
	s.st.Mu.Unlock()
	s.counters.Count(v, func(c *store.VendorCounters) { c.TokensIssued++ })
	jsonhttp.Write(w, http.StatusOK, resp)
}

// issueLocked creates a new access token (and refresh token: always for
// Oura, for WHOOP only with the offline scope) for g.
func (s *Server) issueLocked(g *store.Grant) map[string]any {
	at := s.st.TokenLocked(32)
	s.st.Access[at] = &store.AccessToken{G: g, Expires: s.st.Now().Add(s.cfg.AccessTokenTTL)}
	resp := map[string]any{
		"access_token": at,
		"token_type":   "bearer",
		"expires_in":   int64(math.Ceil(s.cfg.AccessTokenTTL.Seconds())),
		"scope":        g.ScopeString(),
	}
	if g.Vendor == store.Oura || g.Scopes["offline"] {
		rt := s.st.TokenLocked(32)
		s.st.Refresh[rt] = &store.RefreshToken{G: g}
		resp["refresh_token"] = rt
	}
	return resp
}

func (s *Server) refreshGrant(w http.ResponseWriter, r *http.Request, v store.Vendor) {
	s.st.Mu.Lock()
	rt, ok := s.st.Refresh[r.PostForm.Get("refresh_token")]
	switch {
	case !ok || rt.G.Vendor != v:
		s.st.Mu.Unlock()
		s.invalidGrant(w, v, "unknown refresh token")
		return
	case rt.Used:
		// The rotation hazard: a refresh token presented twice. The vendors
		// treat it as theft and, by default, end the whole grant.
		if !s.cfg.ReuseKeepsGrant {
			rt.G.Revoked = true
		}
		s.st.Mu.Unlock()
		s.counters.Count(v, func(c *store.VendorCounters) { c.RefreshTokenReuseViolations++ })
		s.log.Warn("refresh token reused", "vendor", string(v), "grant_revoked", !s.cfg.ReuseKeepsGrant)
		s.invalidGrant(w, v, "refresh token already used")
		return
	case rt.G.Revoked:
		s.st.Mu.Unlock()
		s.invalidGrant(w, v, "grant revoked")
		return
	}
	rt.Used = true
	resp := s.issueLocked(rt.G)
	lost := s.st.ChanceLocked(s.st.Faults.TokenLostResponseRate)
	s.st.Mu.Unlock()
	s.counters.Count(v, func(c *store.VendorCounters) { c.TokenRefreshes++ })
	if lost {
		// The rotation happened; the answer never reaches the caller.
		s.counters.Count(v, func(c *store.VendorCounters) { c.InjectedErrors++ })
		oauthError(w, http.StatusBadGateway, "server_error", "injected fault: response lost after rotation")
		return
	}
	jsonhttp.Write(w, http.StatusOK, resp)
}

// ouraRevoke is Oura's GET/POST /oauth/revoke?access_token=...
func (s *Server) ouraRevoke(w http.ResponseWriter, r *http.Request) {
	tok := r.URL.Query().Get("access_token")
	if tok == "" {
		_ = r.ParseForm()
		tok = r.PostForm.Get("access_token")
	}
	s.st.Mu.Lock()
	at, ok := s.st.Access[tok]
	if ok && at.G.Vendor == store.Oura {
		at.G.Revoked = true
	}
	s.st.Mu.Unlock()
	if !ok || at.G.Vendor != store.Oura {
		jsonhttp.Write(w, http.StatusBadRequest, map[string]string{"detail": "invalid access token"})
		return
	}
	s.counters.Count(store.Oura, func(c *store.VendorCounters) { c.Revocations++ })
	jsonhttp.Write(w, http.StatusOK, map[string]any{})
}

// ExpireAccessTokens makes every current access token of vendor ("" = both)
// for user ("" = all) expire now, so the next API call needs a refresh.
// It returns how many tokens it expired.
func (s *Server) ExpireAccessTokens(vendor store.Vendor, userName string) int {
	s.st.Mu.Lock()
	defer s.st.Mu.Unlock()
	now := s.st.Now()
	n := 0
	for _, at := range s.st.Access {
		if (vendor == "" || at.G.Vendor == vendor) && (userName == "" || at.G.User == userName) && now.Before(at.Expires) {
			at.Expires = now
			n++
		}
	}
	return n
}

// RevokeGrants revokes every grant of user for vendor ("" = both), as if the
// user disconnected the app at the vendor. It returns how many it revoked.
func (s *Server) RevokeGrants(vendor store.Vendor, userName string) int {
	s.st.Mu.Lock()
	defer s.st.Mu.Unlock()
	n := 0
	for _, g := range s.st.Grants {
		if (vendor == "" || g.Vendor == vendor) && (userName == "" || g.User == userName) && !g.Revoked {
			g.Revoked = true
			n++
		}
	}
	return n
}

// Authorize runs the authorize step in-process (what a browser would do)
// and returns the code. Tests that drive a token exchange without an HTTP
// redirect use it; the real flow goes through the authorize endpoint.
func (s *Server) Authorize(ctx context.Context, v store.Vendor, userName, redirectURI, scope, state string) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	clientID, _ := s.clientCreds(v)
	q := url.Values{
		"client_id": {clientID}, "redirect_uri": {redirectURI}, "response_type": {"code"},
		"scope": {scope}, "state": {state}, "login_hint": {userName},
	}
	path := "/whoop/oauth/oauth2/auth"
	if v == store.Oura {
		path = "/oura/oauth/authorize"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, path+"?"+q.Encode(), nil)
	if err != nil {
		return "", fmt.Errorf("build authorize request: %w", err)
	}
	rec := &redirectRecorder{header: http.Header{}}
	s.authorize(v)(rec, req)
	loc, err := url.Parse(rec.header.Get("Location"))
	if err != nil || rec.status != http.StatusFound {
		return "", fmt.Errorf("%w: authorize answered %d", store.ErrInvalid, rec.status)
	}
	if msg := loc.Query().Get("error"); msg != "" {
		return "", fmt.Errorf("%w: authorize: %s: %s", store.ErrInvalid, msg, loc.Query().Get("error_description"))
	}
	return loc.Query().Get("code"), nil
}

// redirectRecorder captures the authorize handler's answer in-process.
type redirectRecorder struct {
	header http.Header
	status int
}

func (r *redirectRecorder) Header() http.Header         { return r.header }
func (r *redirectRecorder) Write(b []byte) (int, error) { return len(b), nil }
func (r *redirectRecorder) WriteHeader(s int)           { r.status = s }
