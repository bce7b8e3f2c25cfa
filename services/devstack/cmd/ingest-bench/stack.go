package main

import (
	"context"
	"errors"

	"github.com/redis/go-redis/v9"

	"github.com/biobridge/bridge/emulator"
	"github.com/biobridge/bridge/services/devstack/benchenv"
	devstack "github.com/biobridge/bridge/services/devstack/stack"
	ingest "github.com/biobridge/bridge/services/ingest/server"
	persistence "github.com/biobridge/bridge/services/persistence/server"
)

const (
	serviceToken    = "bench-ingest-token"
	userTokenSecret = "bench-user-token-secret-0123456789abcdef"
	pseudonymKey    = "bench-pseudonym-key"
	whoopSecret     = "bench-whoop-client-secret"
	ouraSecret      = "bench-oura-client-secret"
)

// stack is the part of the suite the benchmarks drive: the REST gateway in
// front of ingest, and persistence behind it, each on its own loopback
// port (real gRPC hops), on a database and a Redis key prefix of their
// own, started by the devstack's stack builder.
type stack struct {
	dbURL  string
	prefix string
	rdb    *redis.Client

	gatewayURL  string
	ingest      *ingest.Server
	persistence *persistence.Server
	emu         *emulator.Emulator
	brokerAddr  string

	stop    func() error
	cleanup []func() error
}

// stackConfig chooses what a benchmark needs.
type stackConfig struct {
	// ingest adjusts ingest's configuration.
	ingest func(*ingest.Config)
	// vendors adds the vendor emulator and the token broker, with ingest
	// and the broker pointed at the emulator and the emulator's webhooks
	// at the gateway.
	vendors bool
}

func startStack(ctx context.Context, o options, sc stackConfig) (_ *stack, err error) {
	s := &stack{}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.close())
		}
	}()
	var drop func() error
	s.dbURL, drop, err = benchenv.Database(ctx, o.pgURL, "ingest")
	if err != nil {
		return nil, err
	}
	s.cleanup = append(s.cleanup, drop)
	var clean func() error
	s.rdb, s.prefix, clean, err = benchenv.RedisPrefix(ctx, o.redisURL, "ingest")
	if err != nil {
		return nil, err
	}
	s.cleanup = append(s.cleanup, clean)

	vars := map[string]string{
		"POSTGRES_URL":     s.dbURL,
		"REDIS_URL":        o.redisURL,
		"REDIS_KEY_PREFIX": s.prefix,
		// One token for every internal call and the benchmark's own, with
		// no per-method ACL.
		"SERVICE_TOKEN":       serviceToken,
		"SERVICE_TOKENS":      "ingest:" + serviceToken,
		"SERVICE_ACL_OPEN":    "true",
		"USER_TOKEN_SECRET":   userTokenSecret,
		"LOG_PSEUDONYM_KEY":   pseudonymKey,
		"WHOOP_CLIENT_ID":     emulator.DefaultWhoopClientID,
		"WHOOP_CLIENT_SECRET": whoopSecret,
		"OURA_CLIENT_ID":      emulator.DefaultOuraClientID,
		"OURA_CLIENT_SECRET":  ouraSecret,
		// No app completes a linking here but the benchmark (connections
		// are seeded through the gateway), so any valid URL does.
		"OAUTH_RETURN_URLS": appReturnURL,
	}
	components := []devstack.Component{devstack.Persistence, devstack.Ingest, devstack.Gateway}
	if sc.vendors {
		components = append(components, devstack.Emulator, devstack.TokenBroker)
	}
	st, err := devstack.Start(ctx, devstack.Options{
		Getenv:     func(k string) string { return vars[k] },
		Ephemeral:  true,
		Components: components,
		NoTracing:  true,
		// Without rate limits: the freshness benchmark measures latency,
		// not the budget.
		EmulatorConfig: emulator.Config{WhoopRateLimit: -1, WhoopDailyLimit: -1, OuraRateLimit: -1},
		Configure: devstack.Hooks{Ingest: func(c *ingest.Config) {
			// The benchmarks measure the webhook and push paths: no
			// backfill, reconciliation, staleness or Oura subscription
			// traffic beside them.
			c.BackfillDays, c.ReconcileInterval, c.StaleAfter = 0, 0, 0
			c.OuraClientID = ""
			if sc.ingest != nil {
				sc.ingest(c)
			}
		}},
	})
	if err != nil {
		return nil, err
	}
	s.stop = st.Run(context.WithoutCancel(ctx))
	s.gatewayURL = st.GatewayURL()
	s.ingest, s.persistence, s.emu = st.Ingest(), st.Persistence(), st.Emulator
	if b := st.TokenBroker(); b != nil {
		s.brokerAddr = b.GRPCAddr()
	}
	return s, nil
}

// close stops the services (gateway first) and drops the database and the
// Redis keys.
func (s *stack) close() error {
	var errs []error
	if s.stop != nil {
		errs = append(errs, s.stop())
	}
	for i := len(s.cleanup) - 1; i >= 0; i-- {
		errs = append(errs, s.cleanup[i]())
	}
	return errors.Join(errs...)
}
