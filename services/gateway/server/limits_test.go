package server

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// TestBodyCapsPerRoute: each kind of route has its own cap, applied before
// the body is read, so an unauthenticated route cannot be used to make the
// gateway buffer push-sized bodies.
func TestBodyCapsPerRoute(t *testing.T) {
	t.Parallel()
	limits := bodyLimits{push: 1000, webhook: 100, other: 10}
	reached := false
	anyone := func(string) credentialCheck { return nil }
	g := newBodyGuard(prometheus.NewRegistry(), limits, 1<<20, time.Second, anyone)
	h := g.wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reached = true
		w.WriteHeader(http.StatusOK)
	}))
	tests := []struct {
		path string
		size int
		code int
	}{
		{"/v1/healthkit/samples", 1000, http.StatusOK},
		{"/v1/healthkit/samples", 1001, http.StatusRequestEntityTooLarge},
		{"/v1/webhooks/whoop", 100, http.StatusOK},
		{"/v1/webhooks/whoop", 101, http.StatusRequestEntityTooLarge},
		{"/v1/webhooks/oura", 500, http.StatusRequestEntityTooLarge},
		{"/v1/connections/whoop/authorize", 10, http.StatusOK},
		{"/v1/connections/whoop/authorize", 11, http.StatusRequestEntityTooLarge},
		{"/no/such/route", 500, http.StatusRequestEntityTooLarge},
	}
	for _, tt := range tests {
		for _, chunked := range []bool{false, true} {
			reached = false
			req := httptest.NewRequest(http.MethodPost, tt.path, strings.NewReader(strings.Repeat("x", tt.size)))
			if chunked {
				req.ContentLength = -1 // the cap must hold without a Content-Length too
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tt.code {
				t.Errorf("POST %s with %d bytes (chunked=%v): %d, want %d", tt.path, tt.size, chunked, rec.Code, tt.code)
			}
			if reached != (tt.code == http.StatusOK) {
				t.Errorf("POST %s with %d bytes (chunked=%v): handler reached = %v", tt.path, tt.size, chunked, reached)
			}
		}
	}
}

func TestRouteLabelsCarryNoUserIDs(t *testing.T) {
	t.Parallel()
	for path, want := range map[string]string{
		"/v1/users/alice/biometrics/latest":                  "/v1/users/{user_id}/biometrics/latest",
		"/v1/users/alice/biometrics/heart_rate_bpm/readings": "/v1/users/{user_id}/biometrics/{metric}/readings",
		"/v1/oauth/whoop/callback":                           "/v1/oauth/{vendor}/callback",
		"/v1/users/alice/secrets":                            "other",
	} {
		if got := routeOf(httptest.NewRequest(http.MethodGet, path, nil)); got != want {
			t.Errorf("routeOf(%s) = %s, want %s", path, got, want)
		}
	}
}
