package emulator_test

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/emulator"
)

// fakeClock is a settable clock for expiry and determinism tests.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{t: time.Date(2026, 11, 20, 9, 30, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// startEmu runs an emulator behind a real HTTP server for the test.
func startEmu(t *testing.T, cfg emulator.Config) (*emulator.Emulator, string) {
	t.Helper()
	if cfg.Seed == 0 {
		cfg.Seed = 1
	}
	if cfg.WebhookRetryDelays == nil {
		cfg.WebhookRetryDelays = []time.Duration{time.Millisecond, 2 * time.Millisecond}
	}
	emu, err := emulator.New(cfg, nil)
	require.NoError(t, err)
	srv := httptest.NewServer(emu.Handler())
	t.Cleanup(func() {
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		require.NoError(t, emu.Close(ctx))
	})
	return emu, srv.URL
}

// delivery is one request the receiver got.
type delivery struct {
	method string
	header http.Header
	query  url.Values
	body   []byte
}

// receiver stands in for the gateway: it records webhook POSTs, answers
// Oura's verification handshake, and answers POSTs with status(n).
type receiver struct {
	srv         *httptest.Server
	verifyToken string
	mu          sync.Mutex
	got         []delivery
	status      func(n int) int
}

func newReceiver(t *testing.T) *receiver {
	t.Helper()
	r := &receiver{verifyToken: emulator.DefaultOuraVerificationToken}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		n := 0
		for _, d := range r.got {
			if d.method == http.MethodPost {
				n++
			}
		}
		r.got = append(r.got, delivery{method: req.Method, header: req.Header.Clone(), query: req.URL.Query(), body: body})
		status := r.status
		r.mu.Unlock()
		if req.Method == http.MethodGet {
			if req.URL.Query().Get("verification_token") != r.verifyToken {
				w.WriteHeader(http.StatusUnauthorized)
				return
			}
			w.Header().Set("Content-Type", "application/json")
			_ = json.NewEncoder(w).Encode(map[string]string{"challenge": req.URL.Query().Get("challenge")})
			return
		}
		if status != nil {
			w.WriteHeader(status(n))
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *receiver) posts() []delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []delivery
	for _, d := range r.got {
		if d.method == http.MethodPost {
			out = append(out, d)
		}
	}
	return out
}

func (r *receiver) gets() []delivery {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []delivery
	for _, d := range r.got {
		if d.method == http.MethodGet {
			out = append(out, d)
		}
	}
	return out
}

func waitHooks(t *testing.T, emu *emulator.Emulator) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.NoError(t, emu.WaitWebhooks(ctx))
}

type whoopHook struct {
	UserID  int64  `json:"user_id"`
	ID      string `json:"id"`
	Type    string `json:"type"`
	TraceID string `json:"trace_id"`
}

type ouraHook struct {
	EventType string `json:"event_type"`
	DataType  string `json:"data_type"`
	ObjectID  string `json:"object_id"`
	EventTime string `json:"event_time"`
	UserID    string `json:"user_id"`
}

func decode[T any](t *testing.T, b []byte) T {
	t.Helper()
	var v T
	require.NoError(t, json.Unmarshal(b, &v), string(b))
	return v
}

// tokens is a token endpoint answer.
type tokens struct {
	AccessToken  string `json:"access_token"`
	RefreshToken string `json:"refresh_token"`
	ExpiresIn    int64  `json:"expires_in"`
	Scope        string `json:"scope"`
	TokenType    string `json:"token_type"`
	Error        string `json:"error"`
}

var noRedirect = &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}

func paths(v emulator.Vendor) (authorize, token string) {
	if v == emulator.Whoop {
		return "/whoop/oauth/oauth2/auth", "/whoop/oauth/oauth2/token"
	}
	return "/oura/oauth/authorize", "/oura/oauth/token"
}

func creds(v emulator.Vendor) url.Values {
	if v == emulator.Whoop {
		return url.Values{"client_id": {emulator.DefaultWhoopClientID}, "client_secret": {emulator.DefaultWhoopClientSecret}}
	}
	return url.Values{"client_id": {emulator.DefaultOuraClientID}, "client_secret": {emulator.DefaultOuraClientSecret}}
}

// authorize drives the authorize endpoint like a browser and returns the
// code, checking the state comes back.
func authorize(t *testing.T, base string, v emulator.Vendor, user string, extra url.Values) string {
	t.Helper()
	authPath, _ := paths(v)
	q := url.Values{
		"response_type": {"code"}, "client_id": {creds(v).Get("client_id")},
		"redirect_uri": {"http://app.test/callback?x=1"}, "state": {"state-1234567"}, "login_hint": {user},
	}
	if v == emulator.Whoop {
		q.Set("scope", "offline read:recovery read:cycles read:workout read:sleep read:profile read:body_measurement")
	}
	for k, vals := range extra {
		q[k] = vals
	}
	resp, err := noRedirect.Get(base + authPath + "?" + q.Encode())
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, http.StatusFound, resp.StatusCode)
	loc, err := url.Parse(resp.Header.Get("Location"))
	require.NoError(t, err)
	require.Equal(t, "app.test", loc.Host)
	require.Equal(t, "1", loc.Query().Get("x"), "existing redirect query kept")
	require.Equal(t, "state-1234567", loc.Query().Get("state"))
	require.Empty(t, loc.Query().Get("error"), loc.Query().Get("error_description"))
	return loc.Query().Get("code")
}

// postToken calls the token endpoint and returns status and answer.
func postToken(t *testing.T, base string, v emulator.Vendor, form url.Values) (int, tokens) {
	t.Helper()
	_, tokPath := paths(v)
	resp, err := http.PostForm(base+tokPath, form)
	require.NoError(t, err)
	defer func() { require.NoError(t, resp.Body.Close()) }()
	var tk tokens
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&tk))
	return resp.StatusCode, tk
}

func exchange(t *testing.T, base string, v emulator.Vendor, code string, extra url.Values) (int, tokens) {
	t.Helper()
	form := creds(v)
	form.Set("grant_type", "authorization_code")
	form.Set("code", code)
	form.Set("redirect_uri", "http://app.test/callback?x=1")
	for k, vals := range extra {
		form[k] = vals
	}
	return postToken(t, base, v, form)
}

func refresh(t *testing.T, base string, v emulator.Vendor, rt string) (int, tokens) {
	t.Helper()
	form := creds(v)
	form.Set("grant_type", "refresh_token")
	form.Set("refresh_token", rt)
	form.Set("scope", "offline")
	return postToken(t, base, v, form)
}

// connect runs the whole OAuth flow for user.
func connect(t *testing.T, base string, v emulator.Vendor, user string) tokens {
	t.Helper()
	status, tk := exchange(t, base, v, authorize(t, base, v, user, nil), nil)
	require.Equal(t, http.StatusOK, status, tk.Error)
	require.NotEmpty(t, tk.AccessToken)
	require.NotEmpty(t, tk.RefreshToken)
	return tk
}

// apiGet calls a data endpoint with a bearer token.
func apiGet(t *testing.T, rawURL, token string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, rawURL, nil)
	require.NoError(t, err)
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	return resp, b
}

func pkcePair(verifier string) string {
	sum := sha256.Sum256([]byte(verifier))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

func adminDo(t *testing.T, method, rawURL, body string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, rawURL, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	return resp.StatusCode, b
}
