package vendoremu

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"fmt"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// grant is one authorization of one user for the vendor's app: the family of
// every access and refresh token descended from one authorization code.
type grant struct {
	id      int64
	vendor  Vendor
	user    *user
	scopes  map[string]bool
	revoked bool
	// explicitScopes is false when the authorize request named no scope and
	// everything was granted; scope checks are then skipped.
	explicitScopes bool
}

func (g *grant) has(scope string) bool { return scope == "" || !g.explicitScopes || g.scopes[scope] }

func (g *grant) scopeString() string {
	out := make([]string, 0, len(g.scopes))
	for s := range g.scopes {
		out = append(out, s)
	}
	slices.Sort(out)
	return strings.Join(out, " ")
}

type authCode struct {
	vendor        Vendor
	user          *user
	redirectURI   string
	scopes        map[string]bool
	explicit      bool
	challenge     string
	method        string
	expires       time.Time
	used          bool
	issuedToGrant *grant
}

type accessToken struct {
	g       *grant
	expires time.Time
}

type refreshToken struct {
	g    *grant
	used bool
}

func (e *Emulator) clientCreds(v Vendor) (id, secret string) {
	if v == Whoop {
		return e.cfg.WhoopClientID, e.cfg.WhoopClientSecret
	}
	return e.cfg.OuraClientID, e.cfg.OuraClientSecret
}

// tokenLocked draws an opaque token from the seeded source.
func (e *Emulator) tokenLocked(n int) string {
	b := make([]byte, n)
	for i := 0; i < n; i += 8 {
		x := e.rng.Uint64()
		for j := 0; j < 8 && i+j < n; j++ {
			b[i+j] = byte(x >> (8 * j))
		}
	}
	return base64.RawURLEncoding.EncodeToString(b)
}

func (e *Emulator) oauthRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /whoop/oauth/oauth2/auth", e.authorize(Whoop))
	mux.HandleFunc("POST /whoop/oauth/oauth2/token", e.token(Whoop))
	mux.HandleFunc("GET /oura/oauth/authorize", e.authorize(Oura))
	mux.HandleFunc("POST /oura/oauth/token", e.token(Oura))
	mux.HandleFunc("GET /oura/oauth/revoke", e.ouraRevoke)
	mux.HandleFunc("POST /oura/oauth/revoke", e.ouraRevoke)
}

func oauthError(w http.ResponseWriter, status int, code, desc string) {
	writeJSON(w, status, map[string]string{"error": code, "error_description": desc})
}

// authorize auto-approves: the consent screen is skipped and the emulated
// user named by login_hint (created on first use; default the first user,
// or "demo" when there is none) is redirected back with a code and the
// caller's state. emu_deny=1 emulates the user pressing "deny".
func (e *Emulator) authorize(v Vendor) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		q := r.URL.Query()
		clientID, _ := e.clientCreds(v)
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
			e.count(v, func(c *VendorCounters) { c.AuthorizeErrors++ })
			back(map[string]string{"error": code, "error_description": desc})
		}
		if q.Get("response_type") != "code" {
			fail("unsupported_response_type", "response_type must be code")
			return
		}
		// WHOOP rejects a state shorter than eight characters.
		if v == Whoop && len(state) < 8 {
			fail("invalid_request", "state must be at least 8 characters")
			return
		}
		known := whoopScopes
		if v == Oura {
			known = ouraScopes
		}
		scopes := map[string]bool{}
		requested := strings.Fields(q.Get("scope"))
		for _, s := range requested {
			if !slices.Contains(known, s) {
				fail("invalid_scope", "unknown scope "+s)
				return
			}
			scopes[s] = true
		}
		if len(requested) == 0 {
			for _, s := range known {
				// Without offline WHOOP issues no refresh token; asking for
				// nothing does not get it either.
				if s != "offline" {
					scopes[s] = true
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
		e.mu.Lock()
		name := q.Get("login_hint")
		var u *user
		switch {
		case name != "":
			u, err = e.addUserLocked(UserSpec{Name: name})
		case len(e.userOrder) > 0:
			u = e.userOrder[0]
		default:
			u, err = e.addUserLocked(UserSpec{Name: "demo"})
		}
		if err != nil {
			e.mu.Unlock()
			oauthError(w, http.StatusBadRequest, "invalid_request", err.Error())
			return
		}
		code := e.tokenLocked(24)
		e.codes[code] = &authCode{
			vendor: v, user: u, redirectURI: q.Get("redirect_uri"), scopes: scopes, explicit: len(requested) > 0,
			challenge: challenge, method: method, expires: e.now().Add(e.cfg.AuthCodeTTL),
		}
		e.mu.Unlock()
		e.count(v, func(c *VendorCounters) { c.AuthorizationCodes++ })
		back(map[string]string{"code": code})
	}
}

// token is the token endpoint: authorization_code and refresh_token grants,
// client authenticated by form fields or HTTP Basic, refresh tokens
// single-use.
func (e *Emulator) token(v Vendor) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		e.count(v, func(c *VendorCounters) { c.TokenRequests++ })
		if e.tokenFault(w, r, v) {
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
		wantID, wantSecret := e.clientCreds(v)
		if subtle.ConstantTimeCompare([]byte(id), []byte(wantID)) != 1 ||
			subtle.ConstantTimeCompare([]byte(secret), []byte(wantSecret)) != 1 {
			e.count(v, func(c *VendorCounters) { c.InvalidClient++ })
			oauthError(w, http.StatusUnauthorized, "invalid_client", "client authentication failed")
			return
		}
		switch r.PostForm.Get("grant_type") {
		case "authorization_code":
			e.exchangeCode(w, r, v)
		case "refresh_token":
			e.refreshGrant(w, r, v)
		default:
			oauthError(w, http.StatusBadRequest, "unsupported_grant_type", "grant_type must be authorization_code or refresh_token")
		}
	}
}

func (e *Emulator) invalidGrant(w http.ResponseWriter, v Vendor, desc string) {
	e.count(v, func(c *VendorCounters) { c.InvalidGrants++ })
	oauthError(w, http.StatusBadRequest, "invalid_grant", desc)
}

func (e *Emulator) exchangeCode(w http.ResponseWriter, r *http.Request, v Vendor) {
	f := r.PostForm
	e.mu.Lock()
	c, ok := e.codes[f.Get("code")]
	switch {
	case !ok || c.vendor != v:
		e.mu.Unlock()
		e.invalidGrant(w, v, "unknown authorization code")
		return
	case c.used:
		// RFC 6749 §4.1.2: a replayed code revokes what it issued.
		if c.issuedToGrant != nil {
			c.issuedToGrant.revoked = true
		}
		e.mu.Unlock()
		e.invalidGrant(w, v, "authorization code already used")
		return
	case !e.now().Before(c.expires):
		e.mu.Unlock()
		e.invalidGrant(w, v, "authorization code expired")
		return
	case f.Get("redirect_uri") != c.redirectURI:
		e.mu.Unlock()
		e.invalidGrant(w, v, "redirect_uri does not match the authorization request")
		return
	}
	if c.challenge != "" {
		verifier := f.Get("code_verifier")
		want := verifier
		if c.method == "S256" {
			sum := sha256.Sum256([]byte(verifier))
			want = base64.RawURLEncoding.EncodeToString(sum[:])
		}
		if verifier == "" || subtle.ConstantTimeCompare([]byte(want), []byte(c.challenge)) != 1 {
			e.mu.Unlock()
			e.count(v, func(c *VendorCounters) { c.PKCEFailures++ })
			e.invalidGrant(w, v, "code_verifier does not match code_challenge")
			return
		}
	}
	c.used = true
	e.nextGrantID++
	g := &grant{id: e.nextGrantID, vendor: v, user: c.user, scopes: c.scopes, explicitScopes: c.explicit}
	c.issuedToGrant = g
	e.grants = append(e.grants, g)
	resp := e.issueLocked(g)
	e.mu.Unlock()
	e.count(v, func(c *VendorCounters) { c.TokensIssued++ })
	writeJSON(w, http.StatusOK, resp)
}

// issueLocked creates a new access token (and refresh token: always for
// Oura, for WHOOP only with the offline scope) for g.
func (e *Emulator) issueLocked(g *grant) map[string]any {
	at := e.tokenLocked(32)
	e.access[at] = &accessToken{g: g, expires: e.now().Add(e.cfg.AccessTokenTTL)}
	resp := map[string]any{
		"access_token": at,
		"token_type":   "bearer",
		"expires_in":   int64(math.Ceil(e.cfg.AccessTokenTTL.Seconds())),
		"scope":        g.scopeString(),
	}
	if g.vendor == Oura || g.scopes["offline"] {
		rt := e.tokenLocked(32)
		e.refresh[rt] = &refreshToken{g: g}
		resp["refresh_token"] = rt
	}
	return resp
}

func (e *Emulator) refreshGrant(w http.ResponseWriter, r *http.Request, v Vendor) {
	e.mu.Lock()
	rt, ok := e.refresh[r.PostForm.Get("refresh_token")]
	switch {
	case !ok || rt.g.vendor != v:
		e.mu.Unlock()
		e.invalidGrant(w, v, "unknown refresh token")
		return
	case rt.used:
		// The rotation hazard: a refresh token presented twice. The vendors
		// treat it as theft and, by default, end the whole grant.
		if !e.cfg.ReuseKeepsGrant {
			rt.g.revoked = true
		}
		e.mu.Unlock()
		e.count(v, func(c *VendorCounters) { c.RefreshTokenReuseViolations++ })
		e.log.Warn("refresh token reused", "vendor", string(v), "grant_revoked", !e.cfg.ReuseKeepsGrant)
		e.invalidGrant(w, v, "refresh token already used")
		return
	case rt.g.revoked:
		e.mu.Unlock()
		e.invalidGrant(w, v, "grant revoked")
		return
	}
	rt.used = true
	resp := e.issueLocked(rt.g)
	lost := e.chanceLocked(e.faults.TokenLostResponseRate)
	e.mu.Unlock()
	e.count(v, func(c *VendorCounters) { c.TokenRefreshes++ })
	if lost {
		// The rotation happened; the answer never reaches the caller.
		e.count(v, func(c *VendorCounters) { c.InjectedErrors++ })
		oauthError(w, http.StatusBadGateway, "server_error", "injected fault: response lost after rotation")
		return
	}
	writeJSON(w, http.StatusOK, resp)
}

// ouraRevoke is Oura's GET/POST /oauth/revoke?access_token=...
func (e *Emulator) ouraRevoke(w http.ResponseWriter, r *http.Request) {
	tok := r.URL.Query().Get("access_token")
	if tok == "" {
		_ = r.ParseForm()
		tok = r.PostForm.Get("access_token")
	}
	e.mu.Lock()
	at, ok := e.access[tok]
	if ok && at.g.vendor == Oura {
		at.g.revoked = true
	}
	e.mu.Unlock()
	if !ok || at.g.vendor != Oura {
		ouraError(w, http.StatusBadRequest, "invalid access token")
		return
	}
	e.count(Oura, func(c *VendorCounters) { c.Revocations++ })
	writeJSON(w, http.StatusOK, map[string]any{})
}

// authenticate resolves a bearer token to its grant.
func (e *Emulator) authenticateLocked(v Vendor, r *http.Request) (*grant, string) {
	h := r.Header.Get("Authorization")
	tok, ok := strings.CutPrefix(h, "Bearer ")
	if !ok {
		tok, ok = strings.CutPrefix(h, "bearer ")
	}
	if !ok || tok == "" {
		return nil, "missing bearer token"
	}
	at, ok := e.access[tok]
	switch {
	case !ok || at.g.vendor != v:
		return nil, "invalid access token"
	case at.g.revoked:
		return nil, "access revoked"
	case !e.now().Before(at.expires):
		return nil, "access token expired"
	}
	return at.g, ""
}

// ExpireAccessTokens makes every current access token of vendor ("" = both)
// for user ("" = all) expire now, so the next API call needs a refresh.
// It returns how many tokens it expired.
func (e *Emulator) ExpireAccessTokens(vendor Vendor, userName string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	now := e.now()
	n := 0
	for _, at := range e.access {
		if (vendor == "" || at.g.vendor == vendor) && (userName == "" || at.g.user.name == userName) && now.Before(at.expires) {
			at.expires = now
			n++
		}
	}
	return n
}

// RevokeGrants revokes every grant of user for vendor ("" = both), as if the
// user disconnected the app at the vendor. It returns how many it revoked.
func (e *Emulator) RevokeGrants(vendor Vendor, userName string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for _, g := range e.grants {
		if (vendor == "" || g.vendor == vendor) && (userName == "" || g.user.name == userName) && !g.revoked {
			g.revoked = true
			n++
		}
	}
	return n
}

// Authorize runs the authorize step in-process (what a browser would do)
// and returns the code. Tests that drive a token exchange without an HTTP
// redirect use it; the real flow goes through the authorize endpoint.
func (e *Emulator) Authorize(ctx context.Context, v Vendor, userName, redirectURI, scope, state string) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", err
	}
	clientID, _ := e.clientCreds(v)
	q := url.Values{
		"client_id": {clientID}, "redirect_uri": {redirectURI}, "response_type": {"code"},
		"scope": {scope}, "state": {state}, "login_hint": {userName},
	}
	path := "/whoop/oauth/oauth2/auth"
	if v == Oura {
		path = "/oura/oauth/authorize"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, path+"?"+q.Encode(), nil)
	if err != nil {
		return "", fmt.Errorf("build authorize request: %w", err)
	}
	rec := &redirectRecorder{header: http.Header{}}
	e.authorize(v)(rec, req)
	loc, err := url.Parse(rec.header.Get("Location"))
	if err != nil || rec.status != http.StatusFound {
		return "", fmt.Errorf("%w: authorize answered %d", ErrInvalid, rec.status)
	}
	if msg := loc.Query().Get("error"); msg != "" {
		return "", fmt.Errorf("%w: authorize: %s: %s", ErrInvalid, msg, loc.Query().Get("error_description"))
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
