package emulator_test

import (
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/emulator"
)

func TestRefreshTokenWorksOnceAndOnlyOnce(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name         string
		vendor       emulator.Vendor
		keepGrant    bool
		profilePath  string
		wantNewAlive bool
	}{
		{"whoop revokes the grant", emulator.Whoop, false, "/whoop/developer/v2/user/profile/basic", false},
		{"oura revokes the grant", emulator.Oura, false, "/oura/v2/usercollection/personal_info", false},
		{"whoop keeps the grant", emulator.Whoop, true, "/whoop/developer/v2/user/profile/basic", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			emu, base := startEmu(t, emulator.Config{ReuseKeepsGrant: tc.keepGrant})
			first := connect(t, base, tc.vendor, "alice")

			status, second := refresh(t, base, tc.vendor, first.RefreshToken)
			require.Equal(t, http.StatusOK, status, second.Error)
			require.NotEqual(t, first.RefreshToken, second.RefreshToken, "refresh tokens rotate")
			require.NotEqual(t, first.AccessToken, second.AccessToken)
			resp, _ := apiGet(t, base+tc.profilePath, second.AccessToken)
			require.Equal(t, http.StatusOK, resp.StatusCode)

			status, again := refresh(t, base, tc.vendor, first.RefreshToken)
			require.Equal(t, http.StatusBadRequest, status)
			require.Equal(t, "invalid_grant", again.Error)

			c := emu.Counters()
			vc := c.Whoop
			if tc.vendor == emulator.Oura {
				vc = c.Oura
			}
			require.EqualValues(t, 1, vc.TokenRefreshes)
			require.EqualValues(t, 1, vc.RefreshTokenReuseViolations)
			require.EqualValues(t, 1, vc.InvalidGrants)

			// The reuse broke the connection unless configured otherwise.
			status, third := refresh(t, base, tc.vendor, second.RefreshToken)
			resp, _ = apiGet(t, base+tc.profilePath, second.AccessToken)
			if tc.wantNewAlive {
				require.Equal(t, http.StatusOK, status, third.Error)
				require.Equal(t, http.StatusOK, resp.StatusCode)
			} else {
				require.Equal(t, http.StatusBadRequest, status)
				require.Equal(t, "invalid_grant", third.Error)
				require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
				require.False(t, emu.Users()[0].WhoopConnected || emu.Users()[0].OuraConnected)
			}
		})
	}
}

func TestTokenEndpointChecksClientAuthentication(t *testing.T) {
	t.Parallel()
	emu, base := startEmu(t, emulator.Config{})
	code := authorize(t, base, emulator.Whoop, "alice", nil)

	status, tk := exchange(t, base, emulator.Whoop, code, url.Values{"client_secret": {"wrong"}})
	require.Equal(t, http.StatusUnauthorized, status)
	require.Equal(t, "invalid_client", tk.Error)

	// HTTP Basic works as well as form fields, and the code is still usable
	// because the failed attempt never reached it.
	form := url.Values{"grant_type": {"authorization_code"}, "code": {code}, "redirect_uri": {"http://app.test/callback?x=1"}}
	req, err := http.NewRequest(http.MethodPost, base+"/whoop/oauth/oauth2/token", strings.NewReader(form.Encode()))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	req.SetBasicAuth(emulator.DefaultWhoopClientID, emulator.DefaultWhoopClientSecret)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, http.StatusOK, resp.StatusCode)

	// A code is single-use.
	status, tk = exchange(t, base, emulator.Whoop, code, nil)
	require.Equal(t, http.StatusBadRequest, status)
	require.Equal(t, "invalid_grant", tk.Error)
	require.EqualValues(t, 1, emu.Counters().Whoop.InvalidClient)
}

func TestPKCE(t *testing.T) {
	t.Parallel()
	const verifier = "a-long-enough-code-verifier-0123456789-abcdefghijkl"
	for _, tc := range []struct {
		name     string
		method   string
		verifier string
		want     int
	}{
		{"s256 right verifier", "S256", verifier, http.StatusOK},
		{"s256 wrong verifier", "S256", verifier + "x", http.StatusBadRequest},
		{"s256 missing verifier", "S256", "", http.StatusBadRequest},
		{"plain right verifier", "plain", verifier, http.StatusOK},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			emu, base := startEmu(t, emulator.Config{})
			challenge := verifier
			if tc.method == "S256" {
				challenge = pkcePair(verifier)
			}
			code := authorize(t, base, emulator.Oura, "alice", url.Values{
				"code_challenge": {challenge}, "code_challenge_method": {tc.method},
			})
			extra := url.Values{}
			if tc.verifier != "" {
				extra.Set("code_verifier", tc.verifier)
			}
			status, tk := exchange(t, base, emulator.Oura, code, extra)
			require.Equal(t, tc.want, status, tk.Error)
			if tc.want != http.StatusOK {
				require.Equal(t, "invalid_grant", tk.Error)
				require.EqualValues(t, 1, emu.Counters().Oura.PKCEFailures)
			}
		})
	}
}

func TestAuthorizeRejectsWhatTheVendorRejects(t *testing.T) {
	t.Parallel()
	_, base := startEmu(t, emulator.Config{})
	for _, tc := range []struct {
		name      string
		vendor    emulator.Vendor
		params    url.Values
		wantError string // in the redirect; "" = a 400 without redirect
	}{
		{"unknown client", emulator.Whoop, url.Values{"client_id": {"nope"}}, ""},
		{"no redirect uri", emulator.Whoop, url.Values{"redirect_uri": {""}}, ""},
		{"short whoop state", emulator.Whoop, url.Values{"state": {"short"}}, "invalid_request"},
		{"unknown scope", emulator.Whoop, url.Values{"scope": {"read:everything"}}, "invalid_scope"},
		{"user denies", emulator.Oura, url.Values{"emu_deny": {"1"}}, "access_denied"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			authPath, _ := paths(tc.vendor)
			q := url.Values{
				"response_type": {"code"}, "client_id": {creds(tc.vendor).Get("client_id")},
				"redirect_uri": {"http://app.test/cb"}, "state": {"state-1234567"}, "scope": {"offline read:sleep"},
			}
			if tc.vendor == emulator.Oura {
				q.Set("scope", "daily")
			}
			for k, v := range tc.params {
				q[k] = v
			}
			resp, err := noRedirect.Get(base + authPath + "?" + q.Encode())
			require.NoError(t, err)
			require.NoError(t, resp.Body.Close())
			if tc.wantError == "" {
				require.Equal(t, http.StatusBadRequest, resp.StatusCode)
				return
			}
			require.Equal(t, http.StatusFound, resp.StatusCode)
			loc, err := url.Parse(resp.Header.Get("Location"))
			require.NoError(t, err)
			require.Equal(t, tc.wantError, loc.Query().Get("error"))
			require.Empty(t, loc.Query().Get("code"))
		})
	}
}

func TestExpiredAccessTokenIs401UntilRefreshed(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	emu, base := startEmu(t, emulator.Config{Now: clock.Now, AccessTokenTTL: 10 * time.Minute})
	tk := connect(t, base, emulator.Whoop, "alice")
	require.EqualValues(t, 600, tk.ExpiresIn)
	profile := base + "/whoop/developer/v2/user/profile/basic"

	resp, _ := apiGet(t, profile, tk.AccessToken)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	clock.Advance(10 * time.Minute)
	resp, _ = apiGet(t, profile, tk.AccessToken)
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)

	status, fresh := refresh(t, base, emulator.Whoop, tk.RefreshToken)
	require.Equal(t, http.StatusOK, status)
	resp, _ = apiGet(t, profile, fresh.AccessToken)
	require.Equal(t, http.StatusOK, resp.StatusCode)

	// The admin shortcut does the same without a clock.
	require.Equal(t, 1, emu.ExpireAccessTokens(emulator.Whoop, "alice"))
	resp, _ = apiGet(t, profile, fresh.AccessToken)
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	require.EqualValues(t, 2, emu.Counters().Whoop.Unauthorized)
}

func TestWhoopIssuesRefreshTokenOnlyWithOffline(t *testing.T) {
	t.Parallel()
	_, base := startEmu(t, emulator.Config{})
	code := authorize(t, base, emulator.Whoop, "alice", url.Values{"scope": {"read:sleep read:profile"}})
	status, tk := exchange(t, base, emulator.Whoop, code, nil)
	require.Equal(t, http.StatusOK, status)
	require.NotEmpty(t, tk.AccessToken)
	require.Empty(t, tk.RefreshToken)
	require.Equal(t, "read:profile read:sleep", tk.Scope)

	// And the token is limited to its scopes.
	resp, _ := apiGet(t, base+"/whoop/developer/v2/recovery", tk.AccessToken)
	require.Equal(t, http.StatusForbidden, resp.StatusCode)
}

func TestTokenFaults(t *testing.T) {
	t.Parallel()
	emu, base := startEmu(t, emulator.Config{})
	tk := connect(t, base, emulator.Oura, "alice")

	require.NoError(t, emu.SetFaults(emulator.Faults{TokenErrorRate: 1}))
	status, _ := refresh(t, base, emulator.Oura, tk.RefreshToken)
	require.Equal(t, http.StatusInternalServerError, status)

	// Nothing rotated, so the same token still works; but a lost response
	// spends it without the caller learning the new one.
	require.NoError(t, emu.SetFaults(emulator.Faults{TokenLostResponseRate: 1}))
	status, _ = refresh(t, base, emulator.Oura, tk.RefreshToken)
	require.Equal(t, http.StatusBadGateway, status)
	require.NoError(t, emu.SetFaults(emulator.Faults{}))
	status, again := refresh(t, base, emulator.Oura, tk.RefreshToken)
	require.Equal(t, http.StatusBadRequest, status)
	require.Equal(t, "invalid_grant", again.Error)
	c := emu.Counters().Oura
	require.EqualValues(t, 1, c.TokenRefreshes)
	require.EqualValues(t, 1, c.RefreshTokenReuseViolations)
	require.EqualValues(t, 2, c.InjectedErrors)
}
