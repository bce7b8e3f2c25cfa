// Command tokenbroker-bench measures two refresh storms, spread over
// several broker instances that share one database and one Redis:
//
//   - the expiry storm: many concurrent GetAccessToken calls for one
//     expired connection;
//   - the rejected-token storm: the vendor invalidates the access token
//     early, and many concurrent jobs each call the vendor API, get 401,
//     report the rejected token to the broker and call again.
//
// Each value is the number of refreshes that reached the vendor (the
// emulator): it must be 1. The baseline is the same storm through naive
// clients that each refresh on their own, which is what a broker without
// single-flight, a lock and a version fence would send to the vendor.
//
// It starts the vendor emulator and the broker instances on loopback ports,
// with a database it creates and drops and a Redis key prefix it deletes.
package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"golang.org/x/oauth2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"github.com/biobridge/bridge/emulator"
	tokensv1 "github.com/biobridge/bridge/gen/go/biobridge/tokens/v1"
	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/pkg/benchreport"
	"github.com/biobridge/bridge/pkg/service"
	"github.com/biobridge/bridge/services/devstack/benchenv"
	"github.com/biobridge/bridge/services/tokenbroker/server"
)

func main() { service.ExecFunc(run) }

const (
	benchName         = "tokenbroker.refresh_storm_vendor_refreshes"
	rejectedBenchName = "tokenbroker.rejected_token_storm_vendor_refreshes"
	group             = "tokenbroker"
	serviceToken      = "bench-service-token"
	publicBaseURL     = "http://gateway.bench"
	user              = "bench-user"
)

type options struct {
	out       string
	callers   int
	jobs      int
	instances int
	pgURL     string
	redisURL  string
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	fs := flag.NewFlagSet("tokenbroker-bench", flag.ContinueOnError)
	fs.SetOutput(stdout)
	var o options
	fs.StringVar(&o.out, "out", ".bench", "directory for the results file")
	fs.IntVar(&o.callers, "callers", 1000, "concurrent GetAccessToken calls")
	fs.IntVar(&o.jobs, "rejected-jobs", 100, "concurrent jobs hitting 401 in the rejected-token storm")
	fs.IntVar(&o.instances, "instances", 3, "broker instances")
	fs.StringVar(&o.pgURL, "postgres", firstSet(getenv("TEST_POSTGRES_URL"), getenv("POSTGRES_URL"), "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable"),
		"PostgreSQL server URL (a fresh database is created on it and dropped)")
	fs.StringVar(&o.redisURL, "redis", firstSet(getenv("TEST_REDIS_URL"), getenv("REDIS_URL"), "redis://127.0.0.1:6379/0"), "Redis URL (a fresh key prefix is used and deleted)")
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if o.callers < 1 || o.instances < 1 || o.jobs < 1 {
		return errors.New("-callers, -rejected-jobs and -instances must be positive")
	}
	res, err := storm(ctx, o)
	if err != nil {
		return err
	}
	notes := fmt.Sprintf("callers=%d instances=%d reuse_violations=%d errors=%d p50=%s p99=%s; baseline: %d naive clients refreshing on their own caused %d reuse violations",
		o.callers, o.instances, res.violations, res.errors, res.p50.Round(time.Microsecond), res.p99.Round(time.Microsecond),
		o.callers, res.naiveViolations)
	result := benchreport.Lower(benchName, "refreshes", float64(res.refreshes), float64(res.naiveRefreshes), notes)
	rj := res.rejected
	rejectedNotes := fmt.Sprintf("jobs=%d instances=%d reuse_violations=%d failed_jobs=%d p50=%s p99=%s (401, report, new token, second call); baseline: %d naive jobs refreshing on their own caused %d reuse violations",
		o.jobs, o.instances, rj.violations, rj.errors, rj.p50.Round(time.Microsecond), rj.p99.Round(time.Microsecond), o.jobs, rj.naiveViolations)
	rejected := benchreport.Lower(rejectedBenchName, "refreshes", float64(rj.refreshes), float64(rj.naiveRefreshes), rejectedNotes)
	if err := benchreport.SaveGroup(o.out, benchreport.Group{
		Group: group,
		Method: fmt.Sprintf("%s: %d concurrent GetAccessToken calls over gRPC for one expired WHOOP connection, spread round-robin over %d broker instances "+
			"sharing PostgreSQL and Redis; value = token refreshes counted by the vendor emulator. Baseline = token requests the same number "+
			"of naive clients (each refreshing with the stored refresh token, no coordination) send to the emulator. "+
			"%s: the emulator invalidates the connection's access token long before its expiry (POST /_admin/tokens/expire); %d concurrent jobs, "+
			"round-robin over the same instances, each get a token, call the emulator's WHOOP profile endpoint (401), report the rejected token "+
			"in GetAccessToken and call again with the token they get (which must answer 200); value = token refreshes counted by the emulator, "+
			"baseline = token requests of as many naive jobs refreshing on their own.",
			benchName, o.callers, o.instances, rejectedBenchName, o.jobs),
		Results: []benchreport.Result{result, rejected},
	}); err != nil {
		return err
	}
	fmt.Fprintf(stdout, "%s = %.0f refreshes (baseline %.0f, ratio %.0f) %s\n", benchName, result.Value, result.Baseline, result.Ratio, notes)
	fmt.Fprintf(stdout, "%s = %.0f refreshes (baseline %.0f, ratio %.0f) %s\n", rejectedBenchName, rejected.Value, rejected.Baseline, rejected.Ratio, rejectedNotes)
	if res.refreshes != 1 || res.violations != 0 || res.errors != 0 {
		return fmt.Errorf("refresh storm: want exactly 1 refresh, 0 reuse violations and 0 errors; got %d, %d, %d", res.refreshes, res.violations, res.errors)
	}
	if rj.refreshes != 1 || rj.violations != 0 || rj.errors != 0 {
		return fmt.Errorf("rejected-token storm: want exactly 1 refresh, 0 reuse violations and 0 failed jobs; got %d, %d, %d", rj.refreshes, rj.violations, rj.errors)
	}
	return nil
}

func firstSet(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}

type stormResult struct {
	refreshes, violations, errors int64
	p50, p99                      time.Duration
	naiveRefreshes                int64
	naiveViolations               int64
	// rejected is the rejected-token storm (errors = failed jobs).
	rejected *stormResult
}

func storm(ctx context.Context, o options) (_ stormResult, err error) {
	var res stormResult
	dbURL, dropDB, err := benchenv.Database(ctx, o.pgURL, "tokenbroker")
	if err != nil {
		return res, err
	}
	defer func() { err = errors.Join(err, dropDB()) }()
	rdb, prefix, cleanRedis, err := benchenv.RedisPrefix(ctx, o.redisURL, "tokenbroker")
	if err != nil {
		return res, err
	}
	defer func() { err = errors.Join(err, cleanRedis()) }()
	_ = rdb

	emu, err := emulator.New(emulator.Config{WhoopRateLimit: -1, WhoopDailyLimit: -1, OuraRateLimit: -1}, nil)
	if err != nil {
		return res, err
	}
	if err := emu.Start("127.0.0.1:0"); err != nil {
		return res, err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 15*time.Second)
		defer cancel()
		err = errors.Join(err, emu.Close(cctx))
	}()

	key := make([]byte, 32)
	_, _ = rand.Read(key)
	userSecret := []byte(benchenv.RandomHex(32))
	cfg := server.Config{
		GRPCAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0",
		PostgresURL: dbURL, RedisURL: o.redisURL, RedisKeyPrefix: prefix,
		TokenEncryptionKeys: "bench:" + base64.StdEncoding.EncodeToString(key),
		Whoop: server.VendorConfig{
			ClientID: emulator.DefaultWhoopClientID, ClientSecret: emulator.DefaultWhoopClientSecret, APIURL: emu.WhoopURL(),
		},
		PublicBaseURL: publicBaseURL, ReturnURLs: []string{"bench-app:/oauth"},
		UserTokenSecret: userSecret, ServiceTokens: "bench:" + serviceToken,
	}
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	sctx, stopServers := context.WithCancel(ctx)
	var serveWG sync.WaitGroup
	serveErrs := make([]error, o.instances)
	defer func() {
		stopServers()
		serveWG.Wait()
		err = errors.Join(err, errors.Join(serveErrs...))
	}()
	clients := make([]tokensv1.TokenBrokerServiceClient, o.instances)
	for i := range o.instances {
		srv, err := server.New(sctx, cfg, logger)
		if err != nil {
			return res, fmt.Errorf("start broker %d: %w", i, err)
		}
		serveWG.Go(func() { serveErrs[i] = srv.Serve(sctx) })
		conn, err := grpc.NewClient(srv.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			return res, err
		}
		defer func() { _ = conn.Close() }()
		clients[i] = tokensv1.NewTokenBrokerServiceClient(conn)
	}

	if err := connect(ctx, clients[0], userSecret); err != nil {
		return res, fmt.Errorf("connect: %w", err)
	}
	if err := expire(ctx, dbURL, rdb, prefix); err != nil {
		return res, err
	}

	before := emu.Counters().Whoop
	svc := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+serviceToken)
	latencies := make([]time.Duration, o.callers)
	errs := make([]error, o.callers)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range o.callers {
		wg.Go(func() {
			<-start
			cctx, cancel := context.WithTimeout(svc, time.Minute)
			defer cancel()
			t0 := time.Now()
			_, errs[i] = clients[i%o.instances].GetAccessToken(cctx, &tokensv1.GetAccessTokenRequest{UserId: user, Vendor: "whoop"})
			latencies[i] = time.Since(t0)
		})
	}
	close(start)
	wg.Wait()
	after := emu.Counters().Whoop
	res.refreshes = after.TokenRefreshes - before.TokenRefreshes
	res.violations = after.RefreshTokenReuseViolations - before.RefreshTokenReuseViolations
	for _, e := range errs {
		if e != nil {
			res.errors++
		}
	}
	slices.Sort(latencies)
	res.p50 = latencies[len(latencies)/2]
	res.p99 = latencies[min(len(latencies)-1, len(latencies)*99/100)]

	res.naiveRefreshes, res.naiveViolations, err = naiveStorm(ctx, emu, "naive", o.callers)
	if err != nil {
		return res, err
	}
	res.rejected, err = rejectedStorm(ctx, emu, clients, svc, o.jobs)
	return res, err
}

// rejectedStorm invalidates the connection's access token at the vendor
// and runs jobs concurrent fetch jobs the way ingest's workers do: token,
// vendor call (401), GetAccessToken naming the rejected token, vendor
// call again.
func rejectedStorm(ctx context.Context, emu *emulator.Emulator, clients []tokensv1.TokenBrokerServiceClient, svc context.Context, jobs int) (*stormResult, error) {
	res := &stormResult{}
	if _, err := clients[0].GetAccessToken(svc, &tokensv1.GetAccessTokenRequest{UserId: user, Vendor: "whoop"}); err != nil {
		return nil, fmt.Errorf("warm token: %w", err)
	}
	if n := emu.ExpireAccessTokens(emulator.Whoop, "bench"); n == 0 {
		return nil, errors.New("expire access tokens at the emulator: none expired")
	}
	hc := &http.Client{Timeout: 30 * time.Second}
	defer hc.CloseIdleConnections()
	profile := func(ctx context.Context, token string) (int, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, emu.WhoopURL()+"/developer/v2/user/profile/basic", nil)
		if err != nil {
			return 0, err
		}
		req.Header.Set("Authorization", "Bearer "+token)
		resp, err := hc.Do(req)
		if err != nil {
			return 0, err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, resp.Body.Close()
	}
	job := func(c tokensv1.TokenBrokerServiceClient) error {
		cctx, cancel := context.WithTimeout(svc, time.Minute)
		defer cancel()
		first, err := c.GetAccessToken(cctx, &tokensv1.GetAccessTokenRequest{UserId: user, Vendor: "whoop"})
		if err != nil {
			return err
		}
		code, err := profile(cctx, first.GetAccessToken())
		if err != nil || code == http.StatusOK {
			return err
		}
		if code != http.StatusUnauthorized {
			return fmt.Errorf("vendor answered %d", code)
		}
		second, err := c.GetAccessToken(cctx, &tokensv1.GetAccessTokenRequest{UserId: user, Vendor: "whoop", RejectedAccessToken: first.GetAccessToken()})
		if err != nil {
			return err
		}
		if code, err = profile(cctx, second.GetAccessToken()); err == nil && code != http.StatusOK {
			err = fmt.Errorf("vendor answered %d with the new token", code)
		}
		return err
	}
	before := emu.Counters().Whoop
	latencies := make([]time.Duration, jobs)
	errs := make([]error, jobs)
	var wg sync.WaitGroup
	start := make(chan struct{})
	for i := range jobs {
		wg.Go(func() {
			<-start
			t0 := time.Now()
			errs[i] = job(clients[i%len(clients)])
			latencies[i] = time.Since(t0)
		})
	}
	close(start)
	wg.Wait()
	after := emu.Counters().Whoop
	res.refreshes = after.TokenRefreshes - before.TokenRefreshes
	res.violations = after.RefreshTokenReuseViolations - before.RefreshTokenReuseViolations
	for _, e := range errs {
		if e != nil {
			res.errors++
		}
	}
	slices.Sort(latencies)
	res.p50 = latencies[len(latencies)/2]
	res.p99 = latencies[min(len(latencies)-1, len(latencies)*99/100)]
	var err error
	res.naiveRefreshes, res.naiveViolations, err = naiveStorm(ctx, emu, "naive-rejected", jobs)
	return res, err
}

// connect runs the connect flow: StartAuthorization, the emulator's
// authorize redirect, CompleteAuthorization with the same user's JWT (the
// app's part; the callback's forwarding to the app is skipped).
func connect(ctx context.Context, c tokensv1.TokenBrokerServiceClient, userSecret []byte) error {
	jwt, err := auth.IssueUserToken(userSecret, user, time.Hour)
	if err != nil {
		return err
	}
	uctx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+jwt)
	start, err := c.StartAuthorization(uctx, &tokensv1.StartAuthorizationRequest{Vendor: "whoop"})
	if err != nil {
		return err
	}
	hc := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	defer hc.CloseIdleConnections()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, start.GetAuthorizeUrl()+"&login_hint=bench", nil)
	if err != nil {
		return err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	_ = resp.Body.Close()
	loc, err := url.Parse(resp.Header.Get("Location"))
	if err != nil || loc.Query().Get("code") == "" {
		return fmt.Errorf("authorize did not redirect with a code (status %d)", resp.StatusCode)
	}
	_, err = c.CompleteAuthorization(uctx, &tokensv1.CompleteAuthorizationRequest{
		Vendor: "whoop", Code: loc.Query().Get("code"), State: loc.Query().Get("state"),
	})
	return err
}

// expire makes the stored token expired and drops it from the cache.
func expire(ctx context.Context, dbURL string, rdb *redis.Client, prefix string) error {
	conn, err := pgx.Connect(ctx, dbURL)
	if err != nil {
		return err
	}
	defer func() { _ = conn.Close(context.WithoutCancel(ctx)) }()
	if _, err := conn.Exec(ctx, `UPDATE tokens.connections SET access_expires_at = now() - interval '1 minute' WHERE user_id = $1`, user); err != nil {
		return fmt.Errorf("expire token: %w", err)
	}
	return rdb.Del(ctx, prefix+"bb:{u:"+user+"}:token:whoop").Err()
}

// naiveStorm connects another emulated user directly and lets callers
// goroutines each refresh with the same refresh token, as uncoordinated
// workers would. It returns the token requests the emulator received and
// the reuse violations they caused.
func naiveStorm(ctx context.Context, emu *emulator.Emulator, emuUser string, callers int) (int64, int64, error) {
	redirect := publicBaseURL + "/v1/oauth/whoop/callback"
	code, err := emu.Authorize(ctx, emulator.Whoop, emuUser, redirect, "read:profile offline", "naive-state-"+benchenv.RandomHex(8))
	if err != nil {
		return 0, 0, err
	}
	cfg := &oauth2.Config{
		ClientID: emulator.DefaultWhoopClientID, ClientSecret: emulator.DefaultWhoopClientSecret, RedirectURL: redirect,
		Endpoint: oauth2.Endpoint{TokenURL: emu.WhoopURL() + "/oauth/oauth2/token", AuthStyle: oauth2.AuthStyleInParams},
	}
	// A client of its own, closed afterwards: connections it dialed but
	// never used would otherwise hold up the emulator's shutdown.
	hc := &http.Client{Timeout: 30 * time.Second}
	defer hc.CloseIdleConnections()
	ctx = context.WithValue(ctx, oauth2.HTTPClient, hc)
	tok, err := cfg.Exchange(ctx, code)
	if err != nil {
		return 0, 0, fmt.Errorf("naive exchange: %w", err)
	}
	before := emu.Counters().Whoop
	var wg sync.WaitGroup
	start := make(chan struct{})
	for range callers {
		wg.Go(func() {
			<-start
			_, _ = cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: tok.RefreshToken}).Token()
		})
	}
	close(start)
	wg.Wait()
	after := emu.Counters().Whoop
	return after.TokenRequests - before.TokenRequests, after.RefreshTokenReuseViolations - before.RefreshTokenReuseViolations, nil
}
