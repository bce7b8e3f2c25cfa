package main

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/biobridge/bridge/pkg/pgstore"
	"github.com/biobridge/bridge/pkg/vendoremu"
	gateway "github.com/biobridge/bridge/services/gateway/server"
	ingest "github.com/biobridge/bridge/services/ingest/server"
	persistence "github.com/biobridge/bridge/services/persistence/server"
	tokenbroker "github.com/biobridge/bridge/services/tokenbroker/server"
)

const (
	serviceToken    = "bench-ingest-token"
	userTokenSecret = "bench-user-token-secret-0123456789abcdef"
	pseudonymKey    = "bench-pseudonym-key"
	whoopSecret     = "bench-whoop-client-secret"
	ouraSecret      = "bench-oura-client-secret"
	publicBaseURL   = "http://gateway.bench"
)

// stack is the part of the suite the benchmarks drive: the REST gateway in
// front of ingest, and persistence behind it, each on its own loopback
// port (real gRPC hops), on a database and a Redis key prefix of their own.
type stack struct {
	dbURL    string
	redisURL string
	prefix   string
	rdb      *redis.Client

	gatewayURL  string
	ingest      *ingest.Server
	persistence *persistence.Server
	emu         *vendoremu.Emulator
	brokerAddr  string

	cancel  context.CancelFunc
	done    []chan error
	cleanup []func() error
}

// extraEnv lets a benchmark add or override ingest variables.
type extraEnv map[string]string

// stackConfig chooses what a benchmark needs.
type stackConfig struct {
	ingestEnv extraEnv
	// vendors adds the vendor emulator and the token broker, with ingest
	// and the broker pointed at the emulator and the emulator's webhooks
	// at the gateway.
	vendors bool
}

func startStack(ctx context.Context, o options, sc stackConfig) (_ *stack, err error) {
	s := &stack{redisURL: o.redisURL}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.close())
		}
	}()
	var drop func() error
	s.dbURL, drop, err = createDatabase(ctx, o.pgURL)
	if err != nil {
		return nil, err
	}
	s.cleanup = append(s.cleanup, drop)
	var clean func() error
	s.rdb, s.prefix, clean, err = redisPrefix(ctx, o.redisURL)
	if err != nil {
		return nil, err
	}
	s.cleanup = append(s.cleanup, clean)

	logger := slog.New(slog.DiscardHandler)
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel = cancel

	pcfg, err := persistence.LoadConfig(env(map[string]string{
		"PERSISTENCE_GRPC_ADDR":  "127.0.0.1:0",
		"PERSISTENCE_ADMIN_ADDR": "127.0.0.1:0",
		"POSTGRES_URL":           s.dbURL,
		"REDIS_URL":              o.redisURL,
		"REDIS_KEY_PREFIX":       s.prefix,
		"SERVICE_TOKENS":         "ingest:" + serviceToken,
		"SERVICE_ACL":            "ingest=/biobridge.persistence.v1.PersistenceService/*|/biobridge.biometrics.v1.BiometricsService/*",
		"LOG_PSEUDONYM_KEY":      pseudonymKey,
	}))
	if err != nil {
		return nil, fmt.Errorf("persistence config: %w", err)
	}
	if s.persistence, err = persistence.New(sctx, pcfg, logger); err != nil {
		return nil, fmt.Errorf("start persistence: %w", err)
	}
	s.serve(sctx, s.persistence.Serve)

	brokerTarget := "127.0.0.1:1" // nothing talks to it without vendors
	if sc.vendors {
		if brokerTarget, err = s.startVendors(sctx, logger); err != nil {
			return nil, err
		}
	}

	ienv := map[string]string{
		"INGEST_GRPC_ADDR":    "127.0.0.1:0",
		"INGEST_ADMIN_ADDR":   "127.0.0.1:0",
		"PERSISTENCE_TARGET":  s.persistence.GRPCAddr(),
		"SERVICE_TOKEN":       serviceToken,
		"SERVICE_TOKENS":      "bench:" + serviceToken,
		"SERVICE_ACL":         "bench=*",
		"USER_TOKEN_SECRET":   userTokenSecret,
		"LOG_PSEUDONYM_KEY":   pseudonymKey,
		"POSTGRES_URL":        s.dbURL,
		"REDIS_URL":           o.redisURL,
		"REDIS_KEY_PREFIX":    s.prefix,
		"WHOOP_CLIENT_SECRET": whoopSecret,
		"OURA_CLIENT_SECRET":  ouraSecret,
		"TOKENBROKER_TARGET":  brokerTarget,
		// The benchmarks measure the webhook and push paths: no backfill,
		// reconciliation or staleness traffic beside them.
		"INGEST_BACKFILL_DAYS":      "0",
		"INGEST_RECONCILE_INTERVAL": "0",
		"INGEST_STALE_AFTER":        "0",
	}
	if s.emu != nil {
		ienv["WHOOP_API_URL"], ienv["OURA_API_URL"] = s.emu.WhoopURL(), s.emu.OuraURL()
	}
	for k, v := range sc.ingestEnv {
		ienv[k] = v
	}
	icfg, _, err := ingest.LoadConfig(env(ienv))
	if err != nil {
		return nil, fmt.Errorf("ingest config: %w", err)
	}
	if s.ingest, err = ingest.New(sctx, icfg, logger); err != nil {
		return nil, fmt.Errorf("start ingest: %w", err)
	}
	s.serve(sctx, s.ingest.Serve)

	gcfg, _, err := gateway.LoadConfig(env(map[string]string{
		"GATEWAY_HTTP_ADDR":  "127.0.0.1:0",
		"GATEWAY_ADMIN_ADDR": "127.0.0.1:0",
		"INGEST_TARGET":      s.ingest.GRPCAddr(),
		"PERSISTENCE_TARGET": s.persistence.GRPCAddr(),
		"TOKENBROKER_TARGET": brokerTarget,
		"USER_TOKEN_SECRET":  userTokenSecret,
		"LOG_PSEUDONYM_KEY":  pseudonymKey,
	}))
	if err != nil {
		return nil, fmt.Errorf("gateway config: %w", err)
	}
	gw, err := gateway.New(sctx, gcfg, logger)
	if err != nil {
		return nil, fmt.Errorf("start gateway: %w", err)
	}
	s.serve(sctx, gw.Serve)
	s.gatewayURL = "http://" + gw.HTTPAddr()
	if s.emu != nil {
		if err := s.emu.SetWebhookTargets(s.gatewayURL+"/v1/webhooks/whoop", s.gatewayURL+"/v1/webhooks/oura"); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// startVendors starts the emulator (without rate limits: the freshness
// benchmark measures latency, not the budget) and the token broker, and
// returns the broker's address.
func (s *stack) startVendors(ctx context.Context, logger *slog.Logger) (string, error) {
	emu, err := vendoremu.New(vendoremu.Config{
		WhoopClientSecret: whoopSecret, OuraClientSecret: ouraSecret,
		WhoopRateLimit: -1, WhoopDailyLimit: -1, OuraRateLimit: -1,
	}, logger)
	if err != nil {
		return "", err
	}
	if err := emu.Start("127.0.0.1:0"); err != nil {
		return "", err
	}
	s.emu = emu
	s.cleanup = append(s.cleanup, func() error {
		cctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		return emu.Close(cctx)
	})
	key := make([]byte, 32)
	_, _ = rand.Read(key)
	bcfg, err := tokenbroker.LoadConfig(env(map[string]string{
		"TOKENBROKER_GRPC_ADDR":  "127.0.0.1:0",
		"TOKENBROKER_ADMIN_ADDR": "127.0.0.1:0",
		"POSTGRES_URL":           s.dbURL,
		"REDIS_URL":              s.redisURL,
		"REDIS_KEY_PREFIX":       s.prefix,
		"TOKEN_ENCRYPTION_KEYS":  "k1:" + base64.StdEncoding.EncodeToString(key),
		"WHOOP_CLIENT_ID":        vendoremu.DefaultWhoopClientID,
		"WHOOP_CLIENT_SECRET":    whoopSecret,
		"WHOOP_API_URL":          emu.WhoopURL(),
		"OURA_CLIENT_ID":         vendoremu.DefaultOuraClientID,
		"OURA_CLIENT_SECRET":     ouraSecret,
		"OURA_API_URL":           emu.OuraURL(),
		"OURA_AUTHORIZE_URL":     emu.OuraAuthorizeURL(),
		"PUBLIC_BASE_URL":        publicBaseURL,
		// Required with a vendor configured; no app completes a linking
		// here (connections are seeded), so any valid URL does.
		"OAUTH_RETURN_URLS": "biobridge-bench-app:/oauth",
		"USER_TOKEN_SECRET": userTokenSecret,
		"SERVICE_TOKENS":    "ingest:" + serviceToken,
		"SERVICE_ACL":       "ingest=/biobridge.tokens.v1.TokenBrokerService/*",
		"LOG_PSEUDONYM_KEY": pseudonymKey,
	}))
	if err != nil {
		return "", fmt.Errorf("token broker config: %w", err)
	}
	broker, err := tokenbroker.New(ctx, bcfg, logger)
	if err != nil {
		return "", fmt.Errorf("start token broker: %w", err)
	}
	s.serve(ctx, broker.Serve)
	s.brokerAddr = broker.GRPCAddr()
	return s.brokerAddr, nil
}

func (s *stack) serve(ctx context.Context, f func(context.Context) error) {
	done := make(chan error, 1)
	s.done = append(s.done, done)
	go func() { done <- f(ctx) }()
}

// close stops the services (gateway first, it was started last) and drops
// the database and the Redis keys.
func (s *stack) close() error {
	var errs []error
	if s.cancel != nil {
		s.cancel()
		for i := len(s.done) - 1; i >= 0; i-- {
			select {
			case err := <-s.done[i]:
				if err != nil {
					errs = append(errs, err)
				}
			case <-time.After(30 * time.Second):
				errs = append(errs, errors.New("a service did not stop within 30s"))
			}
		}
	}
	for i := len(s.cleanup) - 1; i >= 0; i-- {
		errs = append(errs, s.cleanup[i]())
	}
	return errors.Join(errs...)
}

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// createDatabase creates a fresh database on the server and returns its URL
// and a function that drops it.
func createDatabase(ctx context.Context, serverURL string) (string, func() error, error) {
	admin, err := pgx.Connect(ctx, serverURL)
	if err != nil {
		return "", nil, fmt.Errorf("connect to postgres %s: %w", pgstore.Redact(serverURL), err)
	}
	name := "bench_ingest_" + randomHex(6)
	if _, err := admin.Exec(ctx, "CREATE DATABASE "+pgx.Identifier{name}.Sanitize()); err != nil {
		_ = admin.Close(ctx)
		return "", nil, fmt.Errorf("create database: %w", err)
	}
	drop := func() error {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		defer func() { _ = admin.Close(dctx) }()
		if _, err := admin.Exec(dctx, "DROP DATABASE IF EXISTS "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)"); err != nil {
			return fmt.Errorf("drop database %s: %w", name, err)
		}
		return nil
	}
	dbURL, err := pgstore.WithDatabase(serverURL, name)
	if err != nil {
		return "", nil, errors.Join(err, drop())
	}
	return dbURL, drop, nil
}

// redisPrefix returns a client, a fresh key prefix and a function that
// deletes every key under it and closes the client.
func redisPrefix(ctx context.Context, redisURL string) (*redis.Client, string, func() error, error) {
	opts, err := redis.ParseURL(redisURL)
	if err != nil {
		return nil, "", nil, errors.New("invalid redis url")
	}
	rdb := redis.NewClient(opts)
	if err := rdb.Ping(ctx).Err(); err != nil {
		_ = rdb.Close()
		return nil, "", nil, fmt.Errorf("ping redis: %w", err)
	}
	prefix := "bench:ingest:" + randomHex(6) + ":"
	clean := func() error {
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		var errs []error
		iter := rdb.Scan(dctx, 0, prefix+"*", 500).Iterator()
		for iter.Next(dctx) {
			errs = append(errs, rdb.Unlink(dctx, iter.Val()).Err())
		}
		errs = append(errs, iter.Err(), rdb.Close())
		return errors.Join(errs...)
	}
	return rdb, prefix, clean, nil
}
