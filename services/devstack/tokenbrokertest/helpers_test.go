// Package tokenbrokertest runs the token broker against the vendor emulator
// through the broker's exported server API: one database, one Redis prefix
// and one emulator per test, shared by every broker instance the test
// starts. It lives in the devstack module so the token broker's own module
// requires only gen and pkg.
package tokenbrokertest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/biobridge/bridge/emulator"
	tokensv1 "github.com/biobridge/bridge/gen/go/biobridge/tokens/v1"
	"github.com/biobridge/bridge/pkg/apperr"
	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/pkg/logging"
	"github.com/biobridge/bridge/pkg/testpg"
	"github.com/biobridge/bridge/services/tokenbroker/server"
)

const (
	serviceToken  = "ingest-test-token"
	publicBaseURL = "http://gateway.test"
)

var userSecret = []byte("user-token-secret-for-tests-0123456789")

// env is one test's world: a database, a Redis prefix and an emulator,
// shared by every broker instance the test starts.
type env struct {
	t        *testing.T
	pgURL    string
	redisURL string
	prefix   string
	emu      *emulator.Emulator
	emuURL   string
	keys     string
	// afterRefresh, when set, runs right after the emulator answered a
	// refresh_token grant with 200 (and before the broker reads it).
	afterRefresh atomic.Pointer[func()]
	// beforeRefresh, when set, runs once with the form of the next
	// refresh_token grant before the emulator sees it: the broker has
	// presented the refresh token, the vendor has not answered.
	beforeRefresh atomic.Pointer[func(url.Values)]
}

func newKey(t *testing.T) string {
	t.Helper()
	b := make([]byte, 32)
	_, err := rand.Read(b)
	require.NoError(t, err)
	return base64.StdEncoding.EncodeToString(b)
}

func newEnv(t *testing.T, emuCfg emulator.Config) *env {
	t.Helper()
	pgURL := testpg.New(t, "tokenbroker_"+server.MigrationsVersion(), server.Migrate)
	redisURL, prefix := testpg.NewRedis(t)
	emuCfg.WhoopRateLimit = -1
	emuCfg.WhoopDailyLimit = -1
	emuCfg.OuraRateLimit = -1
	emu, err := emulator.New(emuCfg, nil)
	require.NoError(t, err)
	e := &env{t: t}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !strings.HasSuffix(r.URL.Path, "/token") || r.Method != http.MethodPost {
			emu.Handler().ServeHTTP(w, r)
			return
		}
		body, err := io.ReadAll(r.Body)
		require.NoError(t, err)
		r.Body = io.NopCloser(bytes.NewReader(body))
		form, _ := url.ParseQuery(string(body))
		if form.Get("grant_type") == "refresh_token" {
			if hook := e.beforeRefresh.Swap(nil); hook != nil {
				(*hook)(form)
			}
		}
		rec := &statusRecorder{ResponseWriter: w}
		emu.Handler().ServeHTTP(rec, r)
		if hook := e.afterRefresh.Load(); hook != nil && form.Get("grant_type") == "refresh_token" && rec.status == http.StatusOK {
			// The vendor has rotated; the broker has not seen the answer:
			// the hook runs before the response is flushed to it.
			(*hook)()
		}
	}))
	t.Cleanup(func() {
		srv.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = emu.Close(ctx)
	})
	e.pgURL, e.redisURL, e.prefix, e.emu, e.emuURL, e.keys = pgURL, redisURL, prefix, emu, srv.URL, "k1:"+newKey(t)
	return e
}

// statusRecorder remembers the status a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Write(b []byte) (int, error) {
	if r.status == 0 {
		r.status = http.StatusOK
	}
	return r.ResponseWriter.Write(b)
}

func (e *env) config() server.Config {
	return server.Config{
		GRPCAddr:            "127.0.0.1:0",
		AdminAddr:           "127.0.0.1:0",
		PostgresURL:         e.pgURL,
		RedisURL:            e.redisURL,
		RedisKeyPrefix:      e.prefix,
		TokenEncryptionKeys: e.keys,
		Whoop: server.VendorConfig{
			ClientID: emulator.DefaultWhoopClientID, ClientSecret: emulator.DefaultWhoopClientSecret,
			APIURL: e.emuURL + "/whoop",
		},
		Oura: server.VendorConfig{
			ClientID: emulator.DefaultOuraClientID, ClientSecret: emulator.DefaultOuraClientSecret,
			APIURL: e.emuURL + "/oura", AuthorizeURL: e.emuURL + "/oura/oauth/authorize",
		},
		PublicBaseURL:   publicBaseURL,
		ReturnURLs:      []string{appReturnURL, "https://app.example/oauth/done"},
		UserTokenSecret: userSecret,
		ServiceTokens:   "ingest:" + serviceToken,
		RefreshTimeout:  5 * time.Second,
		LockLease:       10 * time.Second,
	}
}

// instance is one running broker and a client for it.
type instance struct {
	srv    *server.Server
	client tokensv1.TokenBrokerServiceClient
	stop   func()
}

func (e *env) start(cfg server.Config) *instance {
	e.t.Helper()
	return e.startLogged(cfg, logging.New(e.t.Output(), logging.Options{Format: "text", Level: slog.LevelWarn, Service: "tokenbroker"}))
}

func (e *env) startLogged(cfg server.Config, logger *slog.Logger) *instance {
	e.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	srv, err := server.New(ctx, cfg, logger)
	require.NoError(e.t, err)
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	// Tests expire tokens and states by hand: the start-up passes of the
	// proactive refresh and the state cleanup must be behind them.
	select {
	case <-srv.FirstPassesDone():
	case err := <-done:
		e.t.Fatalf("server stopped before its first maintenance passes: %v", err)
	case <-time.After(30 * time.Second):
		e.t.Fatal("server's first maintenance passes did not finish")
	}
	conn, err := grpc.NewClient(srv.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(e.t, err)
	stopped := false
	stop := func() {
		if stopped {
			return
		}
		stopped = true
		_ = conn.Close()
		cancel()
		select {
		case err := <-done:
			require.NoError(e.t, err)
		case <-time.After(30 * time.Second):
			e.t.Error("server did not stop")
		}
	}
	e.t.Cleanup(stop)
	return &instance{srv: srv, client: tokensv1.NewTokenBrokerServiceClient(conn), stop: stop}
}

func userCtx(t *testing.T, user string) context.Context {
	t.Helper()
	tok, err := auth.IssueUserToken(userSecret, user, time.Hour)
	require.NoError(t, err)
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+tok)
}

func svcCtx() context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+serviceToken)
}

// authorize runs StartAuthorization and follows the authorize URL at the
// emulator the way a browser would, returning the callback's query.
func authorize(t *testing.T, in *instance, user, vendor, emuUser string) url.Values {
	t.Helper()
	resp, err := in.client.StartAuthorization(userCtx(t, user), &tokensv1.StartAuthorizationRequest{Vendor: vendor})
	require.NoError(t, err)
	return followAuthorize(t, resp.GetAuthorizeUrl(), emuUser)
}

func followAuthorize(t *testing.T, authorizeURL, emuUser string) url.Values {
	t.Helper()
	u, err := url.Parse(authorizeURL)
	require.NoError(t, err)
	q := u.Query()
	require.NotEmpty(t, q.Get("state"))
	require.Equal(t, "S256", q.Get("code_challenge_method"), "PKCE must be used")
	q.Set("login_hint", emuUser)
	u.RawQuery = q.Encode()
	client := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	res, err := client.Get(u.String())
	require.NoError(t, err)
	require.NoError(t, res.Body.Close())
	require.Equal(t, http.StatusFound, res.StatusCode)
	loc, err := url.Parse(res.Header.Get("Location"))
	require.NoError(t, err)
	require.Equal(t, "/v1/oauth/"+vendorOf(u)+"/callback", loc.Path)
	return loc.Query()
}

func vendorOf(authorizeURL *url.URL) string {
	if authorizeURL.Path == "/oura/oauth/authorize" {
		return "oura"
	}
	return "whoop"
}

// appReturnURL is the app's return URL the tests register (the default).
const appReturnURL = "com.example.app:/oauth"

// callback passes the vendor's redirect (cb, the callback's query) to the
// broker as the gateway does and returns the query the app receives at
// its return URL.
func callback(t *testing.T, in *instance, vendor string, cb url.Values) url.Values {
	t.Helper()
	resp, err := in.client.HandleAuthorizationCallback(context.Background(), &tokensv1.HandleAuthorizationCallbackRequest{
		Vendor: vendor, Code: cb.Get("code"), State: cb.Get("state"), Error: cb.Get("error"),
	})
	require.NoError(t, err)
	base, query, _ := strings.Cut(resp.GetRedirectUrl(), "?")
	require.Equal(t, appReturnURL, base)
	q, err := url.ParseQuery(query)
	require.NoError(t, err)
	require.Equal(t, vendor, q.Get("vendor"))
	return q
}

// connect runs the whole connect flow for user: start with the user's JWT,
// the browser at the vendor, the callback forwarding to the app, and the
// app completing with the same user's JWT.
func connect(t *testing.T, in *instance, user, vendor, emuUser string) *tokensv1.Connection {
	t.Helper()
	app := callback(t, in, vendor, authorize(t, in, user, vendor, emuUser))
	resp, err := in.client.CompleteAuthorization(userCtx(t, user), &tokensv1.CompleteAuthorizationRequest{
		Vendor: vendor, Code: app.Get("code"), State: app.Get("state"),
	})
	require.NoError(t, err)
	return resp.GetConnection()
}

func (e *env) pg(t *testing.T) *pgx.Conn {
	t.Helper()
	c, err := pgx.Connect(context.Background(), e.pgURL)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close(context.Background()) })
	return c
}

func (e *env) redis(t *testing.T) *redis.Client {
	t.Helper()
	opts, err := redis.ParseURL(e.redisURL)
	require.NoError(t, err)
	c := redis.NewClient(opts)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// expire makes the stored access token of user at vendor expired and drops
// it from the cache, as if an hour had passed.
func (e *env) expire(t *testing.T, user, vendor string) {
	t.Helper()
	_, err := e.pg(t).Exec(context.Background(),
		`UPDATE tokens.connections SET access_expires_at = now() - interval '1 minute' WHERE user_id = $1 AND vendor = $2`, user, vendor)
	require.NoError(t, err)
	require.NoError(t, e.redis(t).Del(context.Background(), e.prefix+"bb:{u:"+user+"}:token:"+vendor).Err())
}

// vendorAccepts reports whether the emulator accepts token for vendor's
// user endpoint.
func (e *env) vendorAccepts(t *testing.T, vendor, token string) bool {
	t.Helper()
	path := "/whoop/developer/v2/user/profile/basic"
	if vendor == "oura" {
		path = "/oura/v2/usercollection/personal_info"
	}
	req, err := http.NewRequest(http.MethodGet, e.emuURL+path, nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	require.NoError(t, res.Body.Close())
	return res.StatusCode == http.StatusOK
}

func counters(e *env, vendor string) emulator.VendorCounters {
	c := e.emu.Counters()
	if vendor == "oura" {
		return c.Oura
	}
	return c.Whoop
}

// requireCode checks the gRPC code and the apperr reason of err.
func requireCode(t *testing.T, err error, code codes.Code, reason string) {
	t.Helper()
	require.Error(t, err)
	st, ok := status.FromError(err)
	require.True(t, ok, "not a gRPC status: %v", err)
	require.Equal(t, code, st.Code(), "status: %v", st)
	if reason != "" {
		require.Equal(t, reason, apperr.ReasonFromStatus(st), "status: %v", st)
	}
}

// metricValue sums the samples of a counter or histogram count named name
// whose labels include want.
func metricValue(t *testing.T, reg *prometheus.Registry, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	var sum float64
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if !labelsMatch(m, want) {
				continue
			}
			switch {
			case m.GetCounter() != nil:
				sum += m.GetCounter().GetValue()
			case m.GetGauge() != nil:
				sum += m.GetGauge().GetValue()
			case m.GetHistogram() != nil:
				sum += float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return sum
}

func labelsMatch(m *dto.Metric, want map[string]string) bool {
	have := map[string]string{}
	for _, l := range m.GetLabel() {
		have[l.GetName()] = l.GetValue()
	}
	for k, v := range want {
		if have[k] != v {
			return false
		}
	}
	return true
}
