// Package ingesttest runs ingest with the services around it (the vendor
// emulator, persistence, the token broker and the REST gateway) on loopback
// ports, through ingest's exported server API, started by the devstack's
// stack builder. It lives in the devstack module, the one module that
// imports several services, so ingest's own module requires only gen and
// pkg.
package ingesttest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/biobridge/bridge/emulator"
	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	ingestv1 "github.com/biobridge/bridge/gen/go/biobridge/ingest/v1"
	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/pkg/logging"
	"github.com/biobridge/bridge/pkg/testpg"
	"github.com/biobridge/bridge/services/devstack/stack"
	"github.com/biobridge/bridge/services/ingest/server"
	persistence "github.com/biobridge/bridge/services/persistence/server"
	tokenbroker "github.com/biobridge/bridge/services/tokenbroker/server"
)

const (
	ingestToken   = "ingest-to-services-token"
	brokerToken   = "broker-to-persistence-token"
	opsToken      = "ops-token"
	readerToken   = "reader-token"
	publicBaseURL = "http://gateway.test"
	pseudonymKey  = "test-pseudonym-key-0123"
)

var userSecret = []byte("user-token-secret-for-ingest-tests-0123")

// databaseURL gives the test a database with every schema the suite's
// services own, from a template migrated once per migrations version.
func databaseURL(t *testing.T) string {
	t.Helper()
	name := "ingest_e2e_" + server.MigrationsVersion() + "_" + persistence.MigrationsVersion + "_" + tokenbroker.MigrationsVersion()
	return testpg.New(t, name, func(ctx context.Context, url string) error {
		if err := server.Migrate(ctx, url); err != nil {
			return err
		}
		if err := persistence.Migrate(ctx, url); err != nil {
			return err
		}
		return tokenbroker.Migrate(ctx, url)
	})
}

// env is one test's world: the vendor emulator, persistence, the token
// broker, ingest and the REST gateway, started by the devstack's stack
// builder on loopback ports, on a database and a Redis key prefix of their
// own.
type env struct {
	t        *testing.T
	pgURL    string
	redisURL string
	prefix   string
	db       *pgxpool.Pool
	st       *stack.Stack

	emu    *emulator.Emulator
	emuURL string

	persistenceAddr string
	brokerAddr      string
	ingestAddr      string
	gatewayURL      string

	// ingestCfg is ingest's configuration (for an ingest the test runs
	// itself, the one it is to run with).
	ingestCfg server.Config
	ingest    *server.Server

	biometrics biometricsv1.BiometricsServiceClient
	ingestRPC  ingestv1.IngestServiceClient
}

type options struct {
	emu    func(*emulator.Config)
	ingest func(*server.Config)
	// externalIngest: the test runs ingest itself (in a child process).
	externalIngest bool
	// ingestLog, when set, receives ingest's log at info level.
	ingestLog *syncBuffer
}

// syncBuffer is a bytes.Buffer safe for the logger's concurrent writes.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func testLogger(t *testing.T, service string) *slog.Logger {
	return logging.New(t.Output(), logging.Options{Format: "text", Level: slog.LevelWarn, PseudonymKey: []byte(pseudonymKey), Service: service})
}

func newEnv(t *testing.T, o options) *env {
	t.Helper()
	e := &env{t: t, pgURL: databaseURL(t)}
	e.redisURL, e.prefix = testpg.NewRedis(t)
	pool, err := pgxpool.New(context.Background(), e.pgURL)
	require.NoError(t, err)
	t.Cleanup(pool.Close)
	e.db = pool

	ecfg := emulator.Config{WebhookRetryDelays: []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond, time.Second}}
	if o.emu != nil {
		o.emu(&ecfg)
	}
	vars := map[string]string{
		"POSTGRES_URL": e.pgURL, "REDIS_URL": e.redisURL, "REDIS_KEY_PREFIX": e.prefix,
		// The emulator's own app credentials, which the stack gives the
		// emulator too.
		"WHOOP_CLIENT_ID": emulator.DefaultWhoopClientID, "WHOOP_CLIENT_SECRET": emulator.DefaultWhoopClientSecret,
		"OURA_CLIENT_ID": emulator.DefaultOuraClientID, "OURA_CLIENT_SECRET": emulator.DefaultOuraClientSecret,
		"OURA_VERIFICATION_TOKEN": emulator.DefaultOuraVerificationToken,
		"USER_TOKEN_SECRET":       string(userSecret), "LOG_PSEUDONYM_KEY": pseudonymKey,
	}
	components := []stack.Component{stack.Emulator, stack.Persistence, stack.TokenBroker, stack.Ingest, stack.Gateway}
	if o.externalIngest {
		// An in-process ingest binds a port the system picks; only an
		// ingest run as a separate process needs one up front.
		vars["INGEST_GRPC_ADDR"] = freeAddr(t)
		components = slices.DeleteFunc(components, func(c stack.Component) bool { return c == stack.Ingest })
	}
	ingestLogger := testLogger(t, "ingest")
	if o.ingestLog != nil {
		ingestLogger = logging.New(o.ingestLog, logging.Options{Format: "json", Level: slog.LevelInfo, PseudonymKey: []byte(pseudonymKey), Service: "ingest"})
	}
	opts := stack.Options{
		Getenv:         func(k string) string { return vars[k] },
		Ephemeral:      true,
		Components:     components,
		EmulatorConfig: ecfg,
		Configure:      hooks(o),
		Loggers: map[stack.Component]*slog.Logger{
			stack.Emulator: testLogger(t, "vendoremu"), stack.Persistence: testLogger(t, "persistence"),
			stack.TokenBroker: testLogger(t, "tokenbroker"), stack.Ingest: ingestLogger, stack.Gateway: testLogger(t, "gateway"),
		},
	}
	// The gateway's and the emulator's ports are picked before the stack
	// starts (the services need them up front), so another test process
	// can take one in between: such a start is retried with new ports.
	for attempt := 0; attempt < 3; attempt++ {
		e.st, err = stack.Start(context.Background(), opts)
		if err == nil || !strings.Contains(err.Error(), "address already in use") {
			break
		}
	}
	require.NoError(t, err)
	stop := e.st.Run(context.Background())
	t.Cleanup(func() { require.NoError(t, stop()) })

	e.emu = e.st.Emulator
	e.emuURL = e.emu.BaseURL()
	e.persistenceAddr = e.st.Persistence().GRPCAddr()
	e.brokerAddr = e.st.TokenBroker().GRPCAddr()
	e.ingestAddr = e.st.Env("INGEST_GRPC_ADDR")
	e.ingest = e.st.Ingest()
	e.ingestCfg = e.st.Configs().Ingest
	e.gatewayURL = e.st.GatewayURL()

	pconn := dial(t, e.persistenceAddr)
	e.biometrics = biometricsv1.NewBiometricsServiceClient(pconn)
	e.ingestRPC = ingestv1.NewIngestServiceClient(dial(t, e.ingestAddr))
	return e
}

// hooks put the tests' settings over the stack's wiring (listen
// addresses, targets, database, Redis, tracing, vendor URLs): the tests'
// own tokens without ACLs (every caller may call every service-token
// method), short intervals and timeouts, and, as in a hand-built ingest
// Config, no backfill, reconciliation or staleness unless a test turns
// them on.
func hooks(o options) stack.Hooks {
	return stack.Hooks{
		Persistence: func(c *persistence.Config) {
			*c = persistence.Config{
				TracerProvider: c.TracerProvider, GRPCAddr: c.GRPCAddr, AdminAddr: c.AdminAddr,
				PostgresURL: c.PostgresURL, RedisURL: c.RedisURL, RedisKeyPrefix: c.RedisKeyPrefix,
				ServiceTokens:      "ingest:" + ingestToken + ",reader:" + readerToken + ",tokenbroker:" + brokerToken,
				AuditFlushInterval: 20 * time.Millisecond,
			}
		},
		TokenBroker: func(c *tokenbroker.Config) {
			keys := make([]byte, 32)
			_, _ = rand.Read(keys)
			*c = tokenbroker.Config{
				TracerProvider: c.TracerProvider, GRPCAddr: c.GRPCAddr, AdminAddr: c.AdminAddr,
				PostgresURL: c.PostgresURL, RedisURL: c.RedisURL, RedisKeyPrefix: c.RedisKeyPrefix,
				TokenEncryptionKeys: "k1:" + base64.StdEncoding.EncodeToString(keys),
				Whoop: tokenbroker.VendorConfig{ClientID: emulator.DefaultWhoopClientID, ClientSecret: emulator.DefaultWhoopClientSecret,
					APIURL: c.Whoop.APIURL},
				Oura: tokenbroker.VendorConfig{ClientID: emulator.DefaultOuraClientID, ClientSecret: emulator.DefaultOuraClientSecret,
					APIURL: c.Oura.APIURL, AuthorizeURL: c.Oura.AuthorizeURL},
				PublicBaseURL: publicBaseURL, ReturnURLs: []string{appReturnURL}, UserTokenSecret: userSecret, ServiceTokens: "ingest:" + ingestToken,
				RefreshTimeout: 5 * time.Second, LockLease: 10 * time.Second,
				// Connection events (the broker's and ingest's
				// backfill_completed) reach persistence through the
				// broker's relay.
				PersistenceTarget: c.PersistenceTarget, ServiceToken: brokerToken,
			}
		},
		Ingest: func(c *server.Config) {
			*c = server.Config{
				TracerProvider: c.TracerProvider, GRPCAddr: c.GRPCAddr, AdminAddr: c.AdminAddr,
				PersistenceTarget: c.PersistenceTarget, TokenBrokerTarget: c.TokenBrokerTarget,
				PostgresURL: c.PostgresURL, RedisURL: c.RedisURL, RedisKeyPrefix: c.RedisKeyPrefix,
				ServiceToken: ingestToken, ServiceTokens: "ops:" + opsToken, UserTokenSecret: userSecret,
				PseudonymKey:          []byte(pseudonymKey),
				OuraVerificationToken: emulator.DefaultOuraVerificationToken,
				WhoopClientSecret:     []byte(emulator.DefaultWhoopClientSecret),
				OuraClientSecret:      []byte(emulator.DefaultOuraClientSecret),
				WhoopAPIURL:           c.WhoopAPIURL, OuraAPIURL: c.OuraAPIURL,
				Workers: 4, PollInterval: 100 * time.Millisecond, RetryBase: 100 * time.Millisecond, RetryMax: time.Second,
				JobLease: 5 * time.Second, PendingScoreDelay: 200 * time.Millisecond, ShutdownGrace: 5 * time.Second,
				VendorRequestTimeout: 5 * time.Second,
			}
			if o.ingest != nil {
				o.ingest(c)
			}
		},
	}
}

// startIngest starts ingest in this process (after a child-process ingest
// was killed): on the same address, so clients keep reaching it.
func (e *env) startIngest() {
	e.t.Helper()
	require.NoError(e.t, e.st.Restart(context.Background(), stack.Ingest, stack.Hooks{}))
	e.ingest = e.st.Ingest()
	e.ingestAddr = e.ingest.GRPCAddr()
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()
	require.NoError(t, ln.Close())
	return addr
}

func dial(t *testing.T, addr string) *grpc.ClientConn {
	t.Helper()
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func svc(token string) context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+token)
}

// connect runs the connect flow through the REST gateway the way the app
// and the user's browser do: authorize → vendor (the emulator auto-approves
// emuUser) → callback.
func (e *env) connect(user, vendor, emuUser string) {
	e.t.Helper()
	_, err := e.emu.AddUser(emulator.UserSpec{Name: emuUser})
	require.NoError(e.t, err)
	tok, err := auth.IssueUserToken(userSecret, user, time.Hour)
	require.NoError(e.t, err)
	req, err := http.NewRequest(http.MethodPost, e.gatewayURL+"/v1/connections/"+vendor+"/authorize", strings.NewReader(`{}`))
	require.NoError(e.t, err)
	req.Header.Set("Authorization", "Bearer "+tok)
	body := e.do(req, http.StatusOK)
	var start struct {
		AuthorizeURL string `json:"authorize_url"`
	}
	require.NoError(e.t, json.Unmarshal(body, &start))
	u, err := url.Parse(start.AuthorizeURL)
	require.NoError(e.t, err)
	q := u.Query()
	q.Set("login_hint", emuUser)
	u.RawQuery = q.Encode()
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	res, err := noFollow.Get(u.String())
	require.NoError(e.t, err)
	require.NoError(e.t, res.Body.Close())
	require.Equal(e.t, http.StatusFound, res.StatusCode)
	loc, err := url.Parse(res.Header.Get("Location"))
	require.NoError(e.t, err)
	// The redirect names the public base URL; the test's gateway serves it
	// and sends the browser on to the app, which completes with its JWT.
	cb, err := http.NewRequest(http.MethodGet, e.gatewayURL+loc.Path+"?"+loc.RawQuery, nil)
	require.NoError(e.t, err)
	res, err = noFollow.Do(cb)
	require.NoError(e.t, err)
	require.NoError(e.t, res.Body.Close())
	require.Equal(e.t, http.StatusFound, res.StatusCode)
	back, query, _ := strings.Cut(res.Header.Get("Location"), "?")
	require.Equal(e.t, appReturnURL, back)
	app, err := url.ParseQuery(query)
	require.NoError(e.t, err)
	complete, err := http.NewRequest(http.MethodPost, e.gatewayURL+"/v1/connections/"+vendor+"/complete",
		strings.NewReader(`{"code":"`+app.Get("code")+`","state":"`+app.Get("state")+`"}`))
	require.NoError(e.t, err)
	complete.Header.Set("Authorization", "Bearer "+tok)
	e.do(complete, http.StatusOK)
}

// appReturnURL is the app return URL the broker forwards the vendor's
// redirect to.
const appReturnURL = "ingest-test-app:/oauth"

func (e *env) do(req *http.Request, want int) []byte {
	e.t.Helper()
	res, err := http.DefaultClient.Do(req)
	require.NoError(e.t, err)
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	require.NoError(e.t, err)
	require.Equal(e.t, want, res.StatusCode, "%s %s: %s", req.Method, req.URL.Path, b)
	return b
}

// latest returns the user's latest values by metric.
func (e *env) latest(user string) map[string]*biometricsv1.LatestValue {
	e.t.Helper()
	resp, err := e.biometrics.GetLatest(svc(readerToken), &biometricsv1.GetLatestRequest{UserId: user})
	require.NoError(e.t, err)
	out := map[string]*biometricsv1.LatestValue{}
	for _, v := range resp.GetValues() {
		out[v.GetMetric()] = v
	}
	return out
}

// waitLatest waits until every metric in want has that value for user.
func (e *env) waitLatest(user string, want map[string]float64, within time.Duration) map[string]*biometricsv1.LatestValue {
	e.t.Helper()
	var got map[string]*biometricsv1.LatestValue
	require.Eventually(e.t, func() bool {
		got = e.latest(user)
		for m, v := range want {
			if g, ok := got[m]; !ok || !near(g.GetValue(), v) {
				return false
			}
		}
		return true
	}, within, 50*time.Millisecond, "latest values of %s never became %v; last seen %v", user, want, summary(got))
	return got
}

func near(a, b float64) bool {
	d := a - b
	return d < 1e-6 && d > -1e-6
}

func summary(m map[string]*biometricsv1.LatestValue) map[string]float64 {
	out := map[string]float64{}
	for k, v := range m {
		out[k] = v.GetValue()
	}
	return out
}

// jobCounts counts ingest's jobs by state.
func (e *env) jobCounts() map[string]int {
	e.t.Helper()
	rows, err := e.db.Query(context.Background(), `SELECT state, count(*) FROM ingest.jobs GROUP BY state`)
	require.NoError(e.t, err)
	defer rows.Close()
	names := map[int16]string{1: "queued", 2: "running", 3: "done", 4: "dead"}
	out := map[string]int{}
	for rows.Next() {
		var s int16
		var n int
		require.NoError(e.t, rows.Scan(&s, &n))
		out[names[s]] = n
	}
	require.NoError(e.t, rows.Err())
	return out
}

// outcomes counts done jobs by outcome.
func (e *env) outcomes() map[string]int {
	e.t.Helper()
	rows, err := e.db.Query(context.Background(), `SELECT outcome, count(*) FROM ingest.jobs WHERE state = 3 GROUP BY outcome`)
	require.NoError(e.t, err)
	defer rows.Close()
	out := map[string]int{}
	for rows.Next() {
		var o string
		var n int
		require.NoError(e.t, rows.Scan(&o, &n))
		out[o] = n
	}
	require.NoError(e.t, rows.Err())
	return out
}

// waitJobsSettled waits until no job is queued or running.
func (e *env) waitJobsSettled(within time.Duration) {
	e.t.Helper()
	require.Eventually(e.t, func() bool {
		c := e.jobCounts()
		return c["queued"] == 0 && c["running"] == 0
	}, within, 50*time.Millisecond, "jobs never settled: %v", e.jobCounts())
}

func (e *env) waitWebhooks() {
	e.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(e.t, e.emu.WaitWebhooks(ctx))
}

// signedWhoop posts a body to the WHOOP webhook route, signed with secret
// at time at.
func (e *env) postWhoop(body []byte, secret string, at time.Time) *http.Response {
	e.t.Helper()
	ts := strconv.FormatInt(at.UnixMilli(), 10)
	req, err := http.NewRequest(http.MethodPost, e.gatewayURL+"/v1/webhooks/whoop", strings.NewReader(string(body)))
	require.NoError(e.t, err)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-WHOOP-Signature-Timestamp", ts)
	req.Header.Set("X-WHOOP-Signature", emulator.WhoopSignature(secret, ts, body))
	res, err := http.DefaultClient.Do(req)
	require.NoError(e.t, err)
	return res
}

func (e *env) postOura(body []byte, secret string, at time.Time) *http.Response {
	e.t.Helper()
	ts := strconv.FormatInt(at.Unix(), 10)
	req, err := http.NewRequest(http.MethodPost, e.gatewayURL+"/v1/webhooks/oura", strings.NewReader(string(body)))
	require.NoError(e.t, err)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("x-oura-timestamp", ts)
	req.Header.Set("x-oura-signature", emulator.OuraSignature(secret, ts, body))
	res, err := http.DefaultClient.Do(req)
	require.NoError(e.t, err)
	return res
}

// answer reads an HTTP answer: status, body, and the ErrorInfo reason when
// it is an error.
func answer(t *testing.T, res *http.Response) (int, string, string) {
	t.Helper()
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	require.NoError(t, err)
	var ge struct {
		Details []struct {
			Reason string `json:"reason"`
		} `json:"details"`
	}
	_ = json.Unmarshal(b, &ge)
	reason := ""
	for _, d := range ge.Details {
		if d.Reason != "" {
			reason = d.Reason
		}
	}
	return res.StatusCode, string(b), reason
}

// counter sums a counter's series whose labels include match.
func counter(t *testing.T, reg prometheus.Gatherer, name string, match map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	require.NoError(t, err)
	total := 0.0
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if labelsMatch(m, match) {
				total += m.GetCounter().GetValue()
			}
		}
	}
	return total
}

func labelsMatch(m *dto.Metric, match map[string]string) bool {
	for k, v := range match {
		found := false
		for _, l := range m.GetLabel() {
			if l.GetName() == k && l.GetValue() == v {
				found = true
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// emuRecordTimes gives a sleep's start and end hours ago, to the second.
func night(hoursAgo int) (time.Time, time.Time) {
	end := time.Now().UTC().Add(-time.Duration(hoursAgo) * time.Hour).Truncate(time.Second)
	return end.Add(-8 * time.Hour), end
}

func (e *env) debugJobs() string {
	rows, _ := e.db.Query(context.Background(), `SELECT id, kind, state, attempts, run_at - now(), last_error, outcome FROM ingest.jobs ORDER BY id`)
	defer rows.Close()
	out := ""
	for rows.Next() {
		var id int64
		var kind, le, outcome string
		var st int16
		var att int
		var in time.Duration
		_ = rows.Scan(&id, &kind, &st, &att, &in, &le, &outcome)
		out += fmt.Sprintf("[%d %s state=%d attempts=%d due_in=%s err=%q outcome=%s]\n", id, kind, st, att, in, le, outcome)
	}
	return out
}
