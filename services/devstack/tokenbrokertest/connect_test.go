package tokenbrokertest

import (
	"context"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"

	"github.com/biobridge/bridge/emulator"
	tokensv1 "github.com/biobridge/bridge/gen/go/biobridge/tokens/v1"
	"github.com/biobridge/bridge/services/tokenbroker/server"
	"github.com/biobridge/bridge/services/tokenbroker/tokencache"
)

// TestConnectFlow drives StartAuthorization → the emulator's authorize
// redirect → CompleteAuthorization for both vendors, then uses the stored
// connection.
func TestConnectFlow(t *testing.T) {
	e := newEnv(t, emulator.Config{})
	in := e.start(e.config())
	alice, err := e.emu.AddUser(emulator.UserSpec{Name: "alice"})
	require.NoError(t, err)

	tests := []struct {
		vendor       string
		vendorUserID string
		scope        string
	}{
		{vendor: "whoop", vendorUserID: strconv.FormatInt(alice.WhoopUserID, 10), scope: "offline"},
		{vendor: "oura", vendorUserID: alice.OuraUserID, scope: "personal"},
	}
	for _, tc := range tests {
		t.Run(tc.vendor, func(t *testing.T) {
			start, err := in.client.StartAuthorization(userCtx(t, "user-1"), &tokensv1.StartAuthorizationRequest{Vendor: tc.vendor, ReturnTo: "https://app.example/oauth/done"})
			require.NoError(t, err)
			u, err := url.Parse(start.GetAuthorizeUrl())
			require.NoError(t, err)
			require.Equal(t, publicBaseURL+"/v1/oauth/"+tc.vendor+"/callback", u.Query().Get("redirect_uri"))
			require.WithinDuration(t, time.Now().Add(10*time.Minute), start.GetExpiresAt().AsTime(), time.Minute)
			cb := followAuthorize(t, start.GetAuthorizeUrl(), "alice")
			// The callback links nothing; it sends the browser to the
			// return URL the app chose, with the code and state.
			redirect, err := in.client.HandleAuthorizationCallback(context.Background(), &tokensv1.HandleAuthorizationCallbackRequest{
				Vendor: tc.vendor, Code: cb.Get("code"), State: cb.Get("state"),
			})
			require.NoError(t, err)
			back, err := url.Parse(redirect.GetRedirectUrl())
			require.NoError(t, err)
			require.Equal(t, "https://app.example/oauth/done", back.Scheme+"://"+back.Host+back.Path)
			require.Equal(t, cb.Get("code"), back.Query().Get("code"))
			require.Equal(t, cb.Get("state"), back.Query().Get("state"))
			list, err := in.client.ListConnections(userCtx(t, "user-1"), &tokensv1.ListConnectionsRequest{})
			require.NoError(t, err)
			require.Len(t, list.GetConnections(), map[string]int{"whoop": 0, "oura": 1}[tc.vendor], "the callback alone connects nothing")

			resp, err := in.client.CompleteAuthorization(userCtx(t, "user-1"), &tokensv1.CompleteAuthorizationRequest{
				Vendor: tc.vendor, Code: cb.Get("code"), State: cb.Get("state"),
			})
			require.NoError(t, err)
			c := resp.GetConnection()
			require.Equal(t, "user-1", c.GetUserId())
			require.Equal(t, tc.vendorUserID, c.GetVendorUserId())
			require.Equal(t, tokensv1.ConnectionStatus_CONNECTION_STATUS_ACTIVE, c.GetStatus())
			require.Contains(t, c.GetScopes(), tc.scope)

			// The state is single-use.
			_, err = in.client.CompleteAuthorization(userCtx(t, "user-1"), &tokensv1.CompleteAuthorizationRequest{
				Vendor: tc.vendor, Code: cb.Get("code"), State: cb.Get("state"),
			})
			requireCode(t, err, codes.InvalidArgument, "invalid_state")

			res, err := in.client.ResolveVendorUser(svcCtx(), &tokensv1.ResolveVendorUserRequest{Vendor: tc.vendor, VendorUserId: tc.vendorUserID})
			require.NoError(t, err)
			require.Equal(t, "user-1", res.GetUserId())
			require.Equal(t, tokensv1.ConnectionStatus_CONNECTION_STATUS_ACTIVE, res.GetStatus())

			tok, err := in.client.GetAccessToken(svcCtx(), &tokensv1.GetAccessTokenRequest{UserId: "user-1", Vendor: tc.vendor})
			require.NoError(t, err)
			require.True(t, e.vendorAccepts(t, tc.vendor, tok.GetAccessToken()))
		})
	}

	list, err := in.client.ListConnections(userCtx(t, "user-1"), &tokensv1.ListConnectionsRequest{UserId: "user-1"})
	require.NoError(t, err)
	require.Len(t, list.GetConnections(), 2)
	require.Equal(t, "oura", list.GetConnections()[0].GetVendor(), "ordered by vendor")
	require.Equal(t, "whoop", list.GetConnections()[1].GetVendor())
	require.Equal(t, []string{"connected", "connected"}, eventTypes(t, e, "user-1"))
	require.Zero(t, counters(e, "whoop").PKCEFailures)

	_, err = in.client.ResolveVendorUser(svcCtx(), &tokensv1.ResolveVendorUserRequest{Vendor: "whoop", VendorUserId: "999"})
	requireCode(t, err, codes.NotFound, "connection_not_found")
}

// TestConnectFlowRejectsBadStates covers what a replayed, expired, foreign
// or denied authorization does: nothing gets connected.
func TestConnectFlowRejectsBadStates(t *testing.T) {
	e := newEnv(t, emulator.Config{})
	in := e.start(e.config())

	tests := []struct {
		name   string
		mutate func(t *testing.T, cb url.Values) *tokensv1.CompleteAuthorizationRequest
		code   codes.Code
		reason string
	}{
		{
			name: "unknown state",
			mutate: func(_ *testing.T, cb url.Values) *tokensv1.CompleteAuthorizationRequest {
				return &tokensv1.CompleteAuthorizationRequest{Vendor: "whoop", Code: cb.Get("code"), State: "forged-state-value"}
			},
			code: codes.InvalidArgument, reason: "invalid_state",
		},
		{
			name: "missing state",
			mutate: func(_ *testing.T, cb url.Values) *tokensv1.CompleteAuthorizationRequest {
				return &tokensv1.CompleteAuthorizationRequest{Vendor: "whoop", Code: cb.Get("code")}
			},
			code: codes.InvalidArgument, reason: "invalid_state",
		},
		{
			name: "expired state",
			mutate: func(t *testing.T, cb url.Values) *tokensv1.CompleteAuthorizationRequest {
				_, err := e.pg(t).Exec(context.Background(), `UPDATE tokens.oauth_states SET expires_at = now() - interval '1 second'`)
				require.NoError(t, err)
				return &tokensv1.CompleteAuthorizationRequest{Vendor: "whoop", Code: cb.Get("code"), State: cb.Get("state")}
			},
			code: codes.FailedPrecondition, reason: "state_expired",
		},
		{
			name: "state of another vendor",
			mutate: func(_ *testing.T, cb url.Values) *tokensv1.CompleteAuthorizationRequest {
				return &tokensv1.CompleteAuthorizationRequest{Vendor: "oura", Code: cb.Get("code"), State: cb.Get("state")}
			},
			code: codes.InvalidArgument, reason: "invalid_state",
		},
		{
			name: "user denied at the vendor",
			mutate: func(_ *testing.T, cb url.Values) *tokensv1.CompleteAuthorizationRequest {
				return &tokensv1.CompleteAuthorizationRequest{Vendor: "whoop", State: cb.Get("state"), Error: "access_denied"}
			},
			code: codes.FailedPrecondition, reason: "authorization_denied",
		},
		{
			name: "code of another authorization (PKCE verifier does not match)",
			mutate: func(t *testing.T, cb url.Values) *tokensv1.CompleteAuthorizationRequest {
				other := authorize(t, in, "user-1", "whoop", "alice")
				return &tokensv1.CompleteAuthorizationRequest{Vendor: "whoop", Code: other.Get("code"), State: cb.Get("state")}
			},
			code: codes.FailedPrecondition, reason: "invalid_code",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cb := authorize(t, in, "user-1", "whoop", "alice")
			_, err := in.client.CompleteAuthorization(userCtx(t, "user-1"), tc.mutate(t, cb))
			requireCode(t, err, tc.code, tc.reason)
			list, err := in.client.ListConnections(userCtx(t, "user-1"), &tokensv1.ListConnectionsRequest{})
			require.NoError(t, err)
			require.Empty(t, list.GetConnections(), "nothing may be connected")
		})
	}
	require.Empty(t, eventTypes(t, e, "user-1"))
}

// TestConnectCompletesOnlyForTheUserWhoStarted is the account-linking
// CSRF: user A starts, user B approves at the vendor with B's account, and
// B's app (signed in as B) or anyone else completes. Nothing is linked to
// A, the state is spent, and the refusal says why; without a user JWT the
// completion is refused outright.
func TestConnectCompletesOnlyForTheUserWhoStarted(t *testing.T) {
	e := newEnv(t, emulator.Config{})
	in := e.start(e.config())
	app := callback(t, in, "whoop", authorize(t, in, "user-a", "whoop", "bob"))

	_, err := in.client.CompleteAuthorization(context.Background(), &tokensv1.CompleteAuthorizationRequest{
		Vendor: "whoop", Code: app.Get("code"), State: app.Get("state"),
	})
	requireCode(t, err, codes.Unauthenticated, "missing_token")
	_, err = in.client.CompleteAuthorization(userCtx(t, "user-b"), &tokensv1.CompleteAuthorizationRequest{
		Vendor: "whoop", Code: app.Get("code"), State: app.Get("state"),
	})
	requireCode(t, err, codes.PermissionDenied, "started_by_another_user")
	_, err = in.client.CompleteAuthorization(userCtx(t, "user-a"), &tokensv1.CompleteAuthorizationRequest{
		Vendor: "whoop", Code: app.Get("code"), State: app.Get("state"),
	})
	requireCode(t, err, codes.InvalidArgument, "invalid_state")
	for _, u := range []string{"user-a", "user-b"} {
		list, err := in.client.ListConnections(userCtx(t, u), &tokensv1.ListConnectionsRequest{})
		require.NoError(t, err)
		require.Empty(t, list.GetConnections(), "nothing may be connected to %s", u)
	}
	require.Zero(t, counters(e, "whoop").TokensIssued, "the code was never exchanged")
}

// TestVendorAccountBelongsToOneUser: a vendor account connected to one
// user cannot be claimed by another (webhooks route by it).
func TestVendorAccountBelongsToOneUser(t *testing.T) {
	e := newEnv(t, emulator.Config{})
	in := e.start(e.config())
	connect(t, in, "user-1", "whoop", "alice")
	cb := authorize(t, in, "user-2", "whoop", "alice")
	_, err := in.client.CompleteAuthorization(userCtx(t, "user-2"), &tokensv1.CompleteAuthorizationRequest{Vendor: "whoop", Code: cb.Get("code"), State: cb.Get("state")})
	requireCode(t, err, codes.AlreadyExists, "vendor_account_in_use")

	// After user-1 revokes, user-2 may connect it.
	_, err = in.client.RevokeConnection(userCtx(t, "user-1"), &tokensv1.RevokeConnectionRequest{Vendor: "whoop"})
	require.NoError(t, err)
	c := connect(t, in, "user-2", "whoop", "alice")
	res, err := in.client.ResolveVendorUser(svcCtx(), &tokensv1.ResolveVendorUserRequest{Vendor: "whoop", VendorUserId: c.GetVendorUserId()})
	require.NoError(t, err)
	require.Equal(t, "user-2", res.GetUserId())
}

// TestRevokeConnection revokes at the vendor and deletes the tokens.
func TestRevokeConnection(t *testing.T) {
	e := newEnv(t, emulator.Config{})
	in := e.start(e.config())
	for _, vendor := range []string{"whoop", "oura"} {
		t.Run(vendor, func(t *testing.T) {
			connect(t, in, "user-1", vendor, "alice")
			tok, err := in.client.GetAccessToken(svcCtx(), &tokensv1.GetAccessTokenRequest{UserId: "user-1", Vendor: vendor})
			require.NoError(t, err)
			// What a concurrent caller read before the revocation and may
			// still write back to the cache afterwards.
			cache := tokencache.New(e.redis(t), e.prefix)
			stale, err := cache.Get(context.Background(), "user-1", vendor)
			require.NoError(t, err)
			require.NotNil(t, stale, "GetAccessToken filled the cache")

			resp, err := in.client.RevokeConnection(userCtx(t, "user-1"), &tokensv1.RevokeConnectionRequest{Vendor: vendor})
			require.NoError(t, err)
			require.NoError(t, cache.Put(context.Background(), "user-1", vendor, *stale, time.Hour))
			_, err = in.client.GetAccessToken(svcCtx(), &tokensv1.GetAccessTokenRequest{UserId: "user-1", Vendor: vendor})
			requireCode(t, err, codes.NotFound, "connection_revoked")
			require.True(t, resp.GetRevokedAtVendor())
			require.EqualValues(t, 1, counters(e, vendor).Revocations)
			require.False(t, e.vendorAccepts(t, vendor, tok.GetAccessToken()), "the grant is gone at the vendor")

			var tokensLeft bool
			require.NoError(t, e.pg(t).QueryRow(context.Background(),
				`SELECT access_token_enc IS NOT NULL OR refresh_token_enc IS NOT NULL FROM tokens.connections WHERE user_id = 'user-1' AND vendor = $1`, vendor).Scan(&tokensLeft))
			require.False(t, tokensLeft, "tokens are deleted")
			_, err = in.client.GetAccessToken(svcCtx(), &tokensv1.GetAccessTokenRequest{UserId: "user-1", Vendor: vendor})
			requireCode(t, err, codes.NotFound, "connection_revoked")

			// Idempotent.
			resp, err = in.client.RevokeConnection(userCtx(t, "user-1"), &tokensv1.RevokeConnectionRequest{Vendor: vendor, UserId: "user-1"})
			require.NoError(t, err)
			require.False(t, resp.GetRevokedAtVendor())
		})
	}
	list, err := in.client.ListConnections(userCtx(t, "user-1"), &tokensv1.ListConnectionsRequest{})
	require.NoError(t, err)
	for _, c := range list.GetConnections() {
		require.Equal(t, tokensv1.ConnectionStatus_CONNECTION_STATUS_REVOKED, c.GetStatus())
	}
	require.Equal(t, []string{"connected", "revoked", "connected", "revoked"}, eventTypes(t, e, "user-1"))
}

// TestAuthorization checks who may call what.
func TestAuthorization(t *testing.T) {
	e := newEnv(t, emulator.Config{})
	cfg := e.config()
	cfg.Oura = server.VendorConfig{}
	in := e.start(cfg)
	connect(t, in, "user-1", "whoop", "alice")

	tests := []struct {
		name   string
		call   func() error
		code   codes.Code
		reason string
	}{
		{"GetAccessToken without a token", func() error {
			_, err := in.client.GetAccessToken(context.Background(), &tokensv1.GetAccessTokenRequest{UserId: "user-1", Vendor: "whoop"})
			return err
		}, codes.Unauthenticated, "invalid_service_token"},
		{"GetAccessToken with a user token", func() error {
			_, err := in.client.GetAccessToken(userCtx(t, "user-1"), &tokensv1.GetAccessTokenRequest{UserId: "user-1", Vendor: "whoop"})
			return err
		}, codes.Unauthenticated, "invalid_service_token"},
		{"ResolveVendorUser with a user token", func() error {
			_, err := in.client.ResolveVendorUser(userCtx(t, "user-1"), &tokensv1.ResolveVendorUserRequest{Vendor: "whoop", VendorUserId: "1"})
			return err
		}, codes.Unauthenticated, "invalid_service_token"},
		{"ListConnections with a service token", func() error {
			_, err := in.client.ListConnections(svcCtx(), &tokensv1.ListConnectionsRequest{UserId: "user-1"})
			return err
		}, codes.Unauthenticated, ""},
		{"ListConnections of another user", func() error {
			_, err := in.client.ListConnections(userCtx(t, "user-2"), &tokensv1.ListConnectionsRequest{UserId: "user-1"})
			return err
		}, codes.PermissionDenied, "other_user"},
		{"RevokeConnection of another user", func() error {
			_, err := in.client.RevokeConnection(userCtx(t, "user-2"), &tokensv1.RevokeConnectionRequest{UserId: "user-1", Vendor: "whoop"})
			return err
		}, codes.PermissionDenied, "other_user"},
		{"StartAuthorization for another user", func() error {
			_, err := in.client.StartAuthorization(userCtx(t, "user-2"), &tokensv1.StartAuthorizationRequest{UserId: "user-1", Vendor: "whoop"})
			return err
		}, codes.PermissionDenied, "other_user"},
		{"StartAuthorization for a vendor without a client id", func() error {
			_, err := in.client.StartAuthorization(userCtx(t, "user-1"), &tokensv1.StartAuthorizationRequest{Vendor: "oura"})
			return err
		}, codes.FailedPrecondition, "vendor_not_configured"},
		{"StartAuthorization for an unknown vendor", func() error {
			_, err := in.client.StartAuthorization(userCtx(t, "user-1"), &tokensv1.StartAuthorizationRequest{Vendor: "fitbit"})
			return err
		}, codes.InvalidArgument, "unknown_vendor"},
		{"StartAuthorization with an open redirect", func() error {
			_, err := in.client.StartAuthorization(userCtx(t, "user-1"), &tokensv1.StartAuthorizationRequest{Vendor: "whoop", ReturnTo: "https://evil.example/x"})
			return err
		}, codes.InvalidArgument, "invalid_return_to"},
		{"GetAccessToken for a vendor without a client id", func() error {
			_, err := in.client.GetAccessToken(svcCtx(), &tokensv1.GetAccessTokenRequest{UserId: "user-1", Vendor: "oura"})
			return err
		}, codes.FailedPrecondition, "vendor_not_configured"},
		{"GetAccessToken for a user without a connection", func() error {
			_, err := in.client.GetAccessToken(svcCtx(), &tokensv1.GetAccessTokenRequest{UserId: "user-2", Vendor: "whoop"})
			return err
		}, codes.NotFound, "connection_not_found"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			requireCode(t, tc.call(), tc.code, tc.reason)
		})
	}

	// And the allowed calls work.
	_, err := in.client.StartAuthorization(userCtx(t, "user-2"), &tokensv1.StartAuthorizationRequest{Vendor: "whoop", ReturnTo: "https://app.example/oauth/done"})
	require.NoError(t, err)
	list, err := in.client.ListConnections(userCtx(t, "user-1"), &tokensv1.ListConnectionsRequest{})
	require.NoError(t, err)
	require.Len(t, list.GetConnections(), 1)
}
