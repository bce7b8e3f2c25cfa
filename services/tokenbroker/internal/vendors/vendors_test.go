package vendors

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/oauth2"
)

type timeoutErr struct{}

func (timeoutErr) Error() string   { return "i/o timeout" }
func (timeoutErr) Timeout() bool   { return true }
func (timeoutErr) Temporary() bool { return true }

var _ net.Error = timeoutErr{}

func TestReason(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"invalid_grant", &OAuthError{Code: "invalid_grant", HTTPStatus: 400}, ReasonInvalidGrant},
		{"wrapped invalid_grant", fmt.Errorf("whoop token refresh: %w", &OAuthError{Code: "invalid_grant", HTTPStatus: 400}), ReasonInvalidGrant},
		{"invalid_client", &OAuthError{Code: "invalid_client", HTTPStatus: 401}, ReasonInvalidClient},
		{"429", &OAuthError{HTTPStatus: 429}, ReasonRateLimited},
		{"500", &OAuthError{Code: "server_error", HTTPStatus: 500}, ReasonVendorError},
		{"deadline", fmt.Errorf("x: %w", context.DeadlineExceeded), ReasonTimeout},
		{"net timeout", &url.Error{Op: "Post", URL: "http://x", Err: timeoutErr{}}, ReasonTimeout},
		{"connection refused", &url.Error{Op: "Post", URL: "http://x", Err: errors.New("connection refused")}, ReasonNetwork},
		{"other", errors.New("boom"), ReasonOther},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.Equal(t, tc.want, Reason(tc.err))
		})
	}
}

// TestSanitizeDropsResponseBody: oauth2's RetrieveError carries the raw
// response body, which may echo what was sent; our error must not.
func TestSanitizeDropsResponseBody(t *testing.T) {
	re := &oauth2.RetrieveError{Body: []byte(`{"error":"invalid_grant","echo":"rt-secret-value"}`), ErrorCode: "invalid_grant"}
	err := sanitize(re)
	require.Equal(t, ReasonInvalidGrant, Reason(err))
	require.False(t, strings.Contains(err.Error(), "rt-secret-value"))
}

func TestRedirectURLAndEndpoints(t *testing.T) {
	w, err := New(Whoop, Credentials{ClientID: "id", ClientSecret: "s", APIURL: "http://emu/whoop/"}, "https://bridge.example/", nil)
	require.NoError(t, err)
	require.Equal(t, "https://bridge.example/v1/oauth/whoop/callback", w.RedirectURL())
	u, err := url.Parse(w.AuthCodeURL("state-123456", oauth2.GenerateVerifier()))
	require.NoError(t, err)
	require.Equal(t, "/whoop/oauth/oauth2/auth", u.Path)
	require.Contains(t, u.Query().Get("scope"), "offline")

	o, err := New(Oura, Credentials{ClientID: "id", ClientSecret: "s"}, "https://bridge.example", nil)
	require.NoError(t, err)
	u, err = url.Parse(o.AuthCodeURL("state-123456", oauth2.GenerateVerifier()))
	require.NoError(t, err)
	require.Equal(t, "cloud.ouraring.com", u.Host)
	require.Equal(t, "https://api.ouraring.com/oauth/token", o.oauth.Endpoint.TokenURL)
	require.Equal(t, oauth2.AuthStyleInParams, o.oauth.Endpoint.AuthStyle, "never auto-detect: it retries refreshes")

	_, err = New("fitbit", Credentials{}, "https://bridge.example", nil)
	require.Error(t, err)
}
