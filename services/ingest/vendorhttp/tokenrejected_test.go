package vendorhttp

import (
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestTokenRejected(t *testing.T) {
	t.Parallel()
	bearer := func(v string) http.Header { return http.Header{"Www-Authenticate": {v}} }
	tests := []struct {
		name   string
		status int
		header http.Header
		body   string
		want   bool
	}{
		{"401 without a body", http.StatusUnauthorized, nil, "", true},
		{"401 from WHOOP", http.StatusUnauthorized, nil, `{"error":"invalid access token"}`, true},
		{"403 missing scope (WHOOP)", http.StatusForbidden, nil, `{"error":"missing scope read:sleep"}`, false},
		{"403 missing scope (Oura)", http.StatusForbidden, nil, `{"detail":"missing scope heartrate"}`, false},
		{"403 expired subscription (Oura)", http.StatusForbidden, nil, `{"detail":"The user's subscription has expired"}`, false},
		{"403 revoked token", http.StatusForbidden, nil, `{"message":"Access token has been revoked"}`, true},
		{"403 expired token", http.StatusForbidden, nil, `{"detail":"Token expired"}`, true},
		{"403 invalid_token code", http.StatusForbidden, nil, `{"error":"invalid_token"}`, true},
		{"403 RFC 6750 invalid_token header", http.StatusForbidden, bearer(`Bearer error="invalid_token"`), "", true},
		{"403 RFC 6750 insufficient_scope header", http.StatusForbidden, bearer(`Bearer error="insufficient_scope"`), `{"error":"token invalid"}`, false},
		{"403 without a body", http.StatusForbidden, nil, "", false},
		{"403 not JSON", http.StatusForbidden, nil, "<html>token expired</html>", false},
		{"404", http.StatusNotFound, nil, `{"error":"invalid_token"}`, false},
		{"500", http.StatusInternalServerError, nil, "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			h := tc.header
			if h == nil {
				h = http.Header{}
			}
			require.Equal(t, tc.want, TokenRejected(tc.status, h, []byte(tc.body)))
		})
	}
}

// FuzzTokenRejected feeds vendor answers (status, WWW-Authenticate, body)
// to the classifier: it must never panic, every 401 is a rejected token,
// only 401 and 403 can be, and a 403 whose text names a scope never is.
func FuzzTokenRejected(f *testing.F) {
	f.Add(401, "", []byte(`{"error":"invalid access token"}`))
	f.Add(403, "", []byte(`{"error":"missing scope read:sleep"}`))
	f.Add(403, `Bearer error="invalid_token"`, []byte(""))
	f.Add(403, "", []byte(`{"detail":"Token expired"}`))
	f.Add(403, "", []byte(`{"detail":["not","a","string"]}`))
	f.Add(500, "", []byte(`{"error":"invalid_token"}`))
	f.Fuzz(func(t *testing.T, status int, authenticate string, body []byte) {
		got := TokenRejected(status, http.Header{"Www-Authenticate": {authenticate}}, body)
		switch {
		case status == http.StatusUnauthorized && !got:
			t.Fatal("a 401 is always a rejected token")
		case status != http.StatusUnauthorized && status != http.StatusForbidden && got:
			t.Fatalf("status %d taken for a rejected token", status)
		case status == http.StatusForbidden && got && strings.Contains(strings.ToLower(authenticate), "insufficient_scope"):
			t.Fatal("an insufficient_scope 403 taken for a rejected token")
		}
	})
}
