package server

import (
	"bytes"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"testing/iotest"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/pkg/auth"
)

// countingBody records whether anything read it.
type countingBody struct {
	r    io.Reader
	read atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.r.Read(p)
	b.read.Add(int64(n))
	return n, err
}

func (b *countingBody) Close() error { return nil }

// TestCredentialsCheckedBeforeTheBody: a request without valid credentials
// is refused with 401 before one byte of its body is read.
func TestCredentialsCheckedBeforeTheBody(t *testing.T) {
	t.Parallel()
	secret := []byte("gateway-test-user-secret-0123456789abcdef")
	users := auth.NewUserVerifier(secret)
	good, err := auth.IssueUserToken(secret, "user-1", time.Hour)
	require.NoError(t, err)
	expired, err := auth.IssueUserToken(secret, "user-1", -time.Hour)
	require.NoError(t, err)
	g := newBodyGuard(prometheus.NewRegistry(), bodyLimits{push: 1 << 20, webhook: 1 << 10, other: 1 << 10}, 4<<20, time.Second, credentialsFor(users))
	h := g.wrap(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusOK) }))

	tests := []struct {
		name       string
		path       string
		header     map[string]string
		wantCode   int
		wantReason string
	}{
		{"push without a token", "/v1/healthkit/samples", nil, http.StatusUnauthorized, auth.ReasonMissingToken},
		{"push with an expired token", "/v1/healthkit/samples", map[string]string{"Authorization": "Bearer " + expired}, http.StatusUnauthorized, auth.ReasonExpiredToken},
		{"push with a forged token", "/v1/healthkit/samples", map[string]string{"Authorization": "Bearer " + good[:len(good)-3] + "AAA"}, http.StatusUnauthorized, auth.ReasonInvalidToken},
		{"push with a service token", "/v1/healthkit/samples", map[string]string{"Authorization": "Bearer dev-agent-token"}, http.StatusUnauthorized, auth.ReasonMalformedToken},
		{"push with a valid token", "/v1/healthkit/samples", map[string]string{"Authorization": "Bearer " + good}, http.StatusOK, ""},
		{"connect without a token", "/v1/connections/whoop/authorize", nil, http.StatusUnauthorized, auth.ReasonMissingToken},
		{"whoop webhook unsigned", "/v1/webhooks/whoop", map[string]string{"X-WHOOP-Signature-Timestamp": "1"}, http.StatusUnauthorized, "missing_signature"},
		{"whoop webhook with its headers", "/v1/webhooks/whoop", map[string]string{"X-WHOOP-Signature": "s", "X-WHOOP-Signature-Timestamp": "1"}, http.StatusOK, ""},
		{"oura webhook unsigned", "/v1/webhooks/oura", nil, http.StatusUnauthorized, "missing_signature"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			body := &countingBody{r: strings.NewReader(strings.Repeat("x", 512))}
			req := httptest.NewRequest(http.MethodPost, tt.path, nil)
			req.Body, req.ContentLength = body, 512
			for k, v := range tt.header {
				req.Header.Set(k, v)
			}
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			assert.Equal(t, tt.wantCode, rec.Code, rec.Body.String())
			if tt.wantCode == http.StatusUnauthorized {
				assert.Zero(t, body.read.Load(), "the body was read before the credentials were checked")
				assert.Contains(t, rec.Body.String(), `"reason":"`+tt.wantReason+`"`)
			}
		})
	}
}

// TestBodyBudgetSheds: past the in-flight body budget a request gets 503
// with Retry-After instead of more memory; room frees when a body is done.
func TestBodyBudgetSheds(t *testing.T) {
	t.Parallel()
	anyone := func(string) credentialCheck { return nil }
	g := newBodyGuard(prometheus.NewRegistry(), bodyLimits{push: 100, webhook: 100, other: 100}, 150, 20*time.Millisecond, anyone)
	inside := make(chan struct{})
	release := make(chan struct{})
	h := g.wrap(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Get("hold") == "1" {
			close(inside)
			<-release
		}
		w.WriteHeader(http.StatusOK)
	}))
	post := func(query string, size int, chunked bool) *httptest.ResponseRecorder {
		req := httptest.NewRequest(http.MethodPost, "/v1/healthkit/samples"+query, strings.NewReader(strings.Repeat("x", size)))
		if chunked {
			req.ContentLength = -1
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		return rec
	}
	held := make(chan *httptest.ResponseRecorder)
	go func() { held <- post("?hold=1", 100, false) }()
	<-inside
	assert.Equal(t, http.StatusOK, post("", 50, false).Code, "what fits beside the held body passes")
	shed := post("", 60, false)
	assert.Equal(t, http.StatusServiceUnavailable, shed.Code)
	assert.Equal(t, "1", shed.Header().Get("Retry-After"))
	assert.Equal(t, http.StatusServiceUnavailable, post("", 10, true).Code, "a body of unknown length reserves the route's cap")
	close(release)
	assert.Equal(t, http.StatusOK, (<-held).Code)
	assert.Equal(t, http.StatusOK, post("", 100, true).Code, "the budget is free again")
}

// TestReadBodyReadsWholeBodies: the presized read returns every byte
// whatever the announced length (exact, larger, smaller, past presizeMax,
// unknown) and however the reader splits them.
func TestReadBodyReadsWholeBodies(t *testing.T) {
	t.Parallel()
	for _, size := range []int{0, 1, 4095, 4096, presizeMax - 1, presizeMax, presizeMax + 1, presizeMax + 70000} {
		data := bytes.Repeat([]byte("0123456789abcdef"), size/16+1)[:size]
		for _, announced := range []int64{int64(size), int64(size) + 100, int64(size / 2), -1} {
			got, err := readBody(iotest.HalfReader(bytes.NewReader(data)), announced)
			if err != nil || !bytes.Equal(got, data) {
				t.Fatalf("size %d, announced %d: %d bytes, %v", size, announced, len(got), err)
			}
		}
	}
	if _, err := readBody(iotest.TimeoutReader(strings.NewReader("abc")), 3); err == nil {
		t.Fatal("a read error was not returned")
	}
}
