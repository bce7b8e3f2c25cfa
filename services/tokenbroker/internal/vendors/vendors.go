// Package vendors knows each vendor's OAuth2 endpoints, scopes, user-id
// lookup and revocation, behind one small type so the broker treats WHOOP
// and Oura alike. Token requests go through golang.org/x/oauth2 with the
// broker's own pooled HTTP client.
//
// The client secret is always sent in the form body (AuthStyleInParams).
// oauth2's auto-detection would retry a failed token request with the other
// style, and a retried refresh presents the same single-use refresh token
// twice: exactly the reuse that makes a vendor revoke the connection.
package vendors

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"github.com/biobridge/bridge/pkg/ratebudget"
)

// Vendor names.
const (
	Whoop = "whoop"
	Oura  = "oura"
)

// Default vendor URLs (docs/vendors.md).
const (
	DefaultWhoopAPIURL       = "https://api.prod.whoop.com"
	DefaultOuraAPIURL        = "https://api.ouraring.com"
	DefaultOuraAuthorizeURL  = "https://cloud.ouraring.com/oauth/authorize"
	maxResponseBytes         = 1 << 20
	whoopProfilePath         = "/developer/v2/user/profile/basic"
	whoopRevokePath          = "/developer/v2/user/access"
	ouraPersonalInfoPath     = "/v2/usercollection/personal_info"
	ouraRevokePath           = "/oauth/revoke"
	whoopAuthorizePath       = "/oauth/oauth2/auth"
	whoopTokenPath           = "/oauth/oauth2/token"
	ouraTokenPath            = "/oauth/token"
	callbackPathPrefix       = "/v1/oauth/"
	callbackPathSuffix       = "/callback"
	errorBodyExcerptMaxBytes = 200
)

// WhoopScopes are requested on connect; offline is what yields a refresh token.
var whoopScopes = []string{"read:recovery", "read:cycles", "read:workout", "read:sleep", "read:profile", "read:body_measurement", "offline"}

// ouraScopes: personal is needed for the user id, the rest for the data.
var ouraScopes = []string{"personal", "daily", "heartrate", "workout", "session", "spo2Daily"}

// Credentials configure one vendor.
type Credentials struct {
	ClientID     string
	ClientSecret string
	// APIURL is the vendor's host root; paths are appended.
	APIURL string
	// AuthorizeURL overrides the authorize endpoint (Oura serves it on
	// another host); empty derives it from APIURL.
	AuthorizeURL string
}

// Vendor is one configured vendor.
type Vendor struct {
	name   string
	oauth  *oauth2.Config
	apiURL string
	client *http.Client
	budget Budget
}

// Budget is the vendor's app-wide API request budget, shared with ingest's
// fetches (ratebudget.Budget): the broker's own API calls (the user-id
// lookup on connect, revocation) spend it too, or together they would
// exceed the vendor's limit and get every replica 429s.
type Budget interface {
	// Take reserves one request: 0 when it may be sent now, else how long
	// to wait before asking again.
	Take(ctx context.Context) (time.Duration, error)
}

// SetBudget makes every API call (not the token endpoint, which the
// vendors limit separately) take b first.
func (v *Vendor) SetBudget(b Budget) { v.budget = b }

// ErrBudgetSpent: the shared rate budget did not free up before the call's
// deadline.
var ErrBudgetSpent = errors.New("shared vendor rate budget spent")

// takeBudget waits for the shared budget until ctx's deadline.
func (v *Vendor) takeBudget(ctx context.Context) error {
	if v.budget == nil {
		return nil
	}
	deadline, _ := ctx.Deadline()
	_, err := ratebudget.Wait(ctx, deadline, v.budget.Take)
	switch {
	case errors.Is(err, ratebudget.ErrSpent):
		return fmt.Errorf("%s: %w", v.name, ErrBudgetSpent)
	case err != nil && err == ctx.Err(): // Wait returns ctx.Err() itself; a wrapped one is take's
		return err
	case err != nil:
		// Without Redis there is no shared budget; calling anyway could
		// get the whole app throttled.
		return fmt.Errorf("%s rate budget: %w", v.name, err)
	}
	return nil
}

// New returns the vendor name configured with creds. publicBaseURL is the
// broker's public root: the redirect URI is publicBaseURL +
// /v1/oauth/{vendor}/callback (the gateway route; docs/architecture.md, "The external contract").
func New(name string, creds Credentials, publicBaseURL string, client *http.Client) (*Vendor, error) {
	api := strings.TrimRight(creds.APIURL, "/")
	var ep oauth2.Endpoint
	var scopes []string
	switch name {
	case Whoop:
		if api == "" {
			api = DefaultWhoopAPIURL
		}
		ep = oauth2.Endpoint{AuthURL: api + whoopAuthorizePath, TokenURL: api + whoopTokenPath}
		scopes = whoopScopes
	case Oura:
		if api == "" {
			api = DefaultOuraAPIURL
		}
		ep = oauth2.Endpoint{AuthURL: DefaultOuraAuthorizeURL, TokenURL: api + ouraTokenPath}
		scopes = ouraScopes
	default:
		return nil, fmt.Errorf("unknown vendor %q", name)
	}
	if creds.AuthorizeURL != "" {
		ep.AuthURL = creds.AuthorizeURL
	}
	ep.AuthStyle = oauth2.AuthStyleInParams
	return &Vendor{
		name: name,
		oauth: &oauth2.Config{
			ClientID:     creds.ClientID,
			ClientSecret: creds.ClientSecret,
			Endpoint:     ep,
			RedirectURL:  strings.TrimRight(publicBaseURL, "/") + callbackPathPrefix + name + callbackPathSuffix,
			Scopes:       scopes,
		},
		apiURL: api,
		client: client,
	}, nil
}

// Name is "whoop" or "oura".
func (v *Vendor) Name() string { return v.name }

// RedirectURL is the callback URL registered with the vendor.
func (v *Vendor) RedirectURL() string { return v.oauth.RedirectURL }

// AuthCodeURL is the authorize URL for state with a PKCE S256 challenge of
// verifier. Both vendors get PKCE: an authorization server that does not
// implement it must ignore the unknown parameters (RFC 6749 §3.1), so the
// challenge costs nothing there and protects the code where it is supported.
func (v *Vendor) AuthCodeURL(state, verifier string) string {
	return v.oauth.AuthCodeURL(state, oauth2.S256ChallengeOption(verifier))
}

func (v *Vendor) ctx(ctx context.Context) context.Context {
	return context.WithValue(ctx, oauth2.HTTPClient, v.client)
}

// Exchange trades an authorization code (and its PKCE verifier) for tokens.
func (v *Vendor) Exchange(ctx context.Context, code, verifier string) (*oauth2.Token, error) {
	t, err := v.oauth.Exchange(v.ctx(ctx), code, oauth2.VerifierOption(verifier))
	if err != nil {
		return nil, fmt.Errorf("%s code exchange: %w", v.name, sanitize(err))
	}
	return t, nil
}

// Refresh presents refreshToken once and returns the new token pair. It
// never retries: a retry would present a single-use token twice.
func (v *Vendor) Refresh(ctx context.Context, refreshToken string) (*oauth2.Token, error) {
	t, err := v.oauth.TokenSource(v.ctx(ctx), &oauth2.Token{RefreshToken: refreshToken}).Token()
	if err != nil {
		return nil, fmt.Errorf("%s token refresh: %w", v.name, sanitize(err))
	}
	return t, nil
}

// Scopes returns the scopes a token grants: the token response's scope
// field, else the scopes that were requested.
func (v *Vendor) Scopes(t *oauth2.Token) []string {
	if s, ok := t.Extra("scope").(string); ok && strings.TrimSpace(s) != "" {
		return strings.Fields(s)
	}
	return append([]string(nil), v.oauth.Scopes...)
}

// UserID reads the vendor's id of the user the access token belongs to
// (WHOOP profile user_id, Oura personal_info id).
func (v *Vendor) UserID(ctx context.Context, accessToken string) (string, error) {
	path := whoopProfilePath
	if v.name == Oura {
		path = ouraPersonalInfoPath
	}
	if err := v.takeBudget(ctx); err != nil {
		return "", fmt.Errorf("%s user id: %w", v.name, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, v.apiURL+path, nil)
	if err != nil {
		return "", fmt.Errorf("%s user id: %w", v.name, err)
	}
	req.Header.Set("Authorization", "Bearer "+accessToken)
	req.Header.Set("Accept", "application/json")
	resp, err := v.client.Do(req)
	if err != nil {
		return "", fmt.Errorf("%s user id: %w", v.name, err)
	}
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBytes))
	if err != nil {
		return "", fmt.Errorf("%s user id: read body: %w", v.name, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("%s user id: %w", v.name, &StatusError{Code: resp.StatusCode})
	}
	if v.name == Whoop {
		var p struct {
			UserID json.Number `json:"user_id"`
		}
		if err := json.Unmarshal(body, &p); err != nil {
			return "", fmt.Errorf("whoop user id: decode profile: %w", err)
		}
		if _, err := strconv.ParseInt(p.UserID.String(), 10, 64); err != nil {
			return "", errors.New("whoop user id: profile has no numeric user_id")
		}
		return p.UserID.String(), nil
	}
	var p struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(body, &p); err != nil {
		return "", fmt.Errorf("oura user id: decode personal info: %w", err)
	}
	if p.ID == "" {
		return "", errors.New("oura user id: personal info has no id")
	}
	return p.ID, nil
}

// Revoke ends the grant at the vendor. WHOOP: DELETE
// /developer/v2/user/access with the access token. Oura: its documentation names
// no revoke endpoint, but Oura's API serves /oauth/revoke (as does the
// emulator); the token goes in a POST form body rather than the query
// string so it cannot end up in access logs. It reports whether the vendor
// confirmed.
func (v *Vendor) Revoke(ctx context.Context, accessToken string) (bool, error) {
	var req *http.Request
	var err error
	if v.name == Whoop {
		req, err = http.NewRequestWithContext(ctx, http.MethodDelete, v.apiURL+whoopRevokePath, nil)
		if err == nil {
			req.Header.Set("Authorization", "Bearer "+accessToken)
		}
	} else {
		form := url.Values{"access_token": {accessToken}}
		req, err = http.NewRequestWithContext(ctx, http.MethodPost, v.apiURL+ouraRevokePath, strings.NewReader(form.Encode()))
		if err == nil {
			req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		}
	}
	if err != nil {
		return false, fmt.Errorf("%s revoke: %w", v.name, err)
	}
	if err := v.takeBudget(ctx); err != nil {
		return false, fmt.Errorf("%s revoke: %w", v.name, err)
	}
	resp, err := v.client.Do(req)
	if err != nil {
		return false, fmt.Errorf("%s revoke: %w", v.name, err)
	}
	defer func() { _ = resp.Body.Close() }()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxResponseBytes))
	if resp.StatusCode/100 != 2 {
		return false, fmt.Errorf("%s revoke: %w", v.name, &StatusError{Code: resp.StatusCode})
	}
	return true, nil
}

// StatusError is a non-success HTTP answer from a vendor API.
type StatusError struct{ Code int }

func (e *StatusError) Error() string { return "vendor answered http " + strconv.Itoa(e.Code) }

// OAuthError is a token endpoint error, stripped of the response body
// (which could echo what was sent).
type OAuthError struct {
	// Code is the OAuth error code ("invalid_grant", "invalid_client", ...),
	// or "" when the answer carried none.
	Code string
	// HTTPStatus is the token endpoint's status code.
	HTTPStatus int
}

func (e *OAuthError) Error() string {
	code := e.Code
	if code == "" {
		code = "no error code"
	}
	return fmt.Sprintf("token endpoint answered http %d (%s)", e.HTTPStatus, code)
}

// sanitize replaces oauth2's RetrieveError (whose message includes the raw
// response body) with an OAuthError carrying only the code and status.
func sanitize(err error) error {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		oe := &OAuthError{Code: re.ErrorCode}
		if re.Response != nil {
			oe.HTTPStatus = re.Response.StatusCode
		}
		return oe
	}
	return err
}

// Failure reasons, used in metrics and connection events.
const (
	ReasonInvalidGrant   = "invalid_grant"
	ReasonInvalidClient  = "invalid_client"
	ReasonRateLimited    = "rate_limited"
	ReasonVendorError    = "vendor_error"
	ReasonTimeout        = "timeout"
	ReasonNetwork        = "network"
	ReasonNoRefreshToken = "no_refresh_token"
	ReasonOther          = "other"
)

// Reason classifies a token endpoint error for metrics and decisions.
func Reason(err error) string {
	var oe *OAuthError
	switch {
	case err == nil:
		return ""
	case errors.As(err, &oe):
		switch {
		case oe.Code == "invalid_grant":
			return ReasonInvalidGrant
		case oe.Code == "invalid_client" || oe.Code == "unauthorized_client":
			return ReasonInvalidClient
		case oe.HTTPStatus == http.StatusTooManyRequests:
			return ReasonRateLimited
		}
		return ReasonVendorError
	case errors.Is(err, context.DeadlineExceeded):
		return ReasonTimeout
	}
	var ne net.Error
	if errors.As(err, &ne) {
		if ne.Timeout() {
			return ReasonTimeout
		}
		return ReasonNetwork
	}
	var ue *url.Error
	if errors.As(err, &ue) {
		return ReasonNetwork
	}
	return ReasonOther
}
