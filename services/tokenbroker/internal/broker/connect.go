package broker

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"github.com/biobridge/bridge/pkg/apperr"
	"github.com/biobridge/bridge/pkg/logging"
	"github.com/biobridge/bridge/services/tokenbroker/internal/store"
	"github.com/biobridge/bridge/services/tokenbroker/internal/vendors"
)

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
	if err := b.store.SaveState(ctx, state, store.State{
		UserID: userID, Vendor: vendor, KeyID: kid, CodeVerifierEnc: sealed, ReturnTo: returnTo, ExpiresAt: expires,
	}); err != nil {
		return "", time.Time{}, err
	}
	return v.AuthCodeURL(state, verifier), expires, nil
}

func stateAAD(state string) []byte {
	return []byte("biobridge.tokens.v1|state|" + hex.EncodeToString(store.HashState(state)))
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
func (b *Broker) validState(ctx context.Context, vendor, state string, consume bool) (*store.State, error) {
	if state == "" {
		return nil, apperr.E(apperr.Invalid, ReasonInvalidState, "state is required")
	}
	read := b.store.PeekState
	if consume {
		read = b.store.ConsumeState
	}
	st, err := read(ctx, state)
	if errors.Is(err, store.ErrNotFound) {
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
	c, err := b.store.Connect(ctx, &store.Connection{
		UserID: st.UserID, Vendor: vendor, VendorUserID: vendorUserID, Scopes: v.Scopes(tok),
		KeyID: sealed.KeyID, AccessTokenEnc: sealed.AccessTokenEnc, RefreshTokenEnc: sealed.RefreshTokenEnc,
		AccessExpiresAt: sealed.AccessExpiresAt,
	}, time.Now())
	if errors.Is(err, store.ErrVendorAccountInUse) {
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
