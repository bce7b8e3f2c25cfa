package emulator

import (
	"context"

	"github.com/biobridge/bridge/emulator/internal/oauth"
	"github.com/biobridge/bridge/emulator/internal/store"
)

// oauthUsers lets the authorization server find and add users.
type oauthUsers struct{ e *Emulator }

var _ oauth.Users = oauthUsers{}

// LoginLocked resolves an authorize request's login_hint: the named user
// (added on first use), else the first user, else a new "demo" user. The
// caller holds e.st.Mu.
func (o oauthUsers) LoginLocked(hint string) (string, error) {
	e := o.e
	var u *store.Person
	var err error
	switch {
	case hint != "":
		u, err = e.addUserLocked(UserSpec{Name: hint})
	case len(e.st.UserOrder) > 0:
		u = e.st.UserOrder[0]
	default:
		u, err = e.addUserLocked(UserSpec{Name: "demo"})
	}
	if err != nil {
		return "", err
	}
	return u.Name, nil
}

// grantUserLocked is the user a grant belongs to. Users are never removed,
// so every grant's user exists. Caller holds e.st.Mu.
func (e *Emulator) grantUserLocked(g *store.Grant) *store.Person { return e.st.Users[g.User] }

// ExpireAccessTokens makes every current access token of vendor ("" = both)
// for user ("" = all) expire now, so the next API call needs a refresh.
// It returns how many tokens it expired.
func (e *Emulator) ExpireAccessTokens(vendor Vendor, userName string) int {
	return e.oauth.ExpireAccessTokens(vendor, userName)
}

// RevokeGrants revokes every grant of user for vendor ("" = both), as if the
// user disconnected the app at the vendor. It returns how many it revoked.
func (e *Emulator) RevokeGrants(vendor Vendor, userName string) int {
	return e.oauth.RevokeGrants(vendor, userName)
}

// Authorize runs the authorize step in-process (what a browser would do)
// and returns the code. Tests that drive a token exchange without an HTTP
// redirect use it; the real flow goes through the authorize endpoint.
func (e *Emulator) Authorize(ctx context.Context, v Vendor, userName, redirectURI, scope, state string) (string, error) {
	return e.oauth.Authorize(ctx, v, userName, redirectURI, scope, state)
}
