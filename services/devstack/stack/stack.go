// Package stack runs the whole Biometric Bridge suite in one process for
// development, demos, end-to-end tests and benchmarks: every service on its
// own loopback port with real gRPC hops between them, the vendor emulator,
// and an embedded Kafka-protocol broker when KAFKA_BROKERS is empty.
//
// It is the one place that assembles several services: the devstack
// command, the end-to-end and multi-service tests and the benchmarks all
// start their services here, choosing the components they need
// (Options.Components) and adjusting each service's configuration
// (Options.Configure).
package stack

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"github.com/biobridge/bridge/emulator"
	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/pkg/pgstore"
	"github.com/biobridge/bridge/pkg/telemetry"
	gateway "github.com/biobridge/bridge/services/gateway/server"
	ingest "github.com/biobridge/bridge/services/ingest/server"
	persistence "github.com/biobridge/bridge/services/persistence/server"
	"github.com/biobridge/bridge/services/publisher/kafkadev"
	publisher "github.com/biobridge/bridge/services/publisher/server"
	tokenbroker "github.com/biobridge/bridge/services/tokenbroker/server"
)

// DevAppReturnURL is the app return URL of a development stack: the
// vendor's redirect is forwarded there with vendor, code and state.
const DevAppReturnURL = "biobridge-dev-app:/oauth"

// Component is one part of a stack.
type Component string

// The components of a stack. Kafka is the embedded broker (nothing when
// KAFKA_BROKERS names a real cluster); Emulator is the vendor emulator.
const (
	Kafka       Component = "kafka"
	Emulator    Component = "emulator"
	Persistence Component = "persistence"
	TokenBroker Component = "tokenbroker"
	Ingest      Component = "ingest"
	Publisher   Component = "publisher"
	Gateway     Component = "gateway"
)

// All is every component, in the order a stack starts them: a service is
// built after the services it calls, so it is given their real addresses.
var All = []Component{Kafka, Emulator, Persistence, TokenBroker, Ingest, Publisher, Gateway}

// services are the components that are services of the suite, in start order.
var services = []Component{Persistence, TokenBroker, Ingest, Publisher, Gateway}

// Hooks adjust each service's configuration after the stack has filled it
// in (from the environment, with the addresses of the other components)
// and before the service is built. A nil hook leaves the configuration as
// it is. Hooks may run more than once (Configs, Restart) and should only
// set fields.
type Hooks struct {
	Persistence func(*persistence.Config)
	TokenBroker func(*tokenbroker.Config)
	Ingest      func(*ingest.Config)
	Publisher   func(*publisher.Config)
	Gateway     func(*gateway.Config)
}

// Configs are the services' configurations.
type Configs struct {
	Persistence persistence.Config
	TokenBroker tokenbroker.Config
	Ingest      ingest.Config
	Publisher   publisher.Config
	Gateway     gateway.Config
}

// Options configure a stack.
type Options struct {
	// Getenv supplies the caller's environment; unset variables get
	// development values.
	Getenv func(string) string
	// Ephemeral picks free loopback ports for everything instead of the
	// documented defaults (tests): each service listens on a port the
	// system picks and the services started after it are given the real
	// address; the gateway's HTTP address (PUBLIC_BASE_URL is made from
	// it), the emulator's and Kafka's are picked before anything starts.
	Ephemeral bool
	// Components are the components started (nil: All). A service that is
	// left out is not running: the others are pointed at its address
	// (its *_GRPC_ADDR, which the caller may set to run it elsewhere),
	// and Restart can start it later.
	Components []Component
	// Configure adjusts each service's configuration before it is built.
	Configure Hooks
	// DataDir keeps the embedded Kafka broker's data (default .devstack).
	DataDir string
	// Logger receives every component's logs.
	Logger *slog.Logger
	// Loggers, when set for a component, receive its logs instead.
	Loggers map[Component]*slog.Logger
	// EmulatorConfig adjusts the vendor emulator (credentials and webhook
	// URLs are always set by the stack so they match the services).
	EmulatorConfig emulator.Config
	// SpanExporter, when set, receives every service's spans as they end,
	// besides any OTLP exporter the OTEL_* variables configure (tests).
	SpanExporter sdktrace.SpanExporter
	// NoTracing leaves the services on the global tracer provider (a
	// no-op unless the process installs one) instead of giving each its
	// own from the OTEL_* variables: the benchmarks measure the services
	// without span recording.
	NoTracing bool
}

// Stack is a suite, built by Start and run by Serve or Run.
type Stack struct {
	env      *env
	opts     Options
	Emulator *emulator.Emulator
	kafka    *kafkadev.Broker
	// loaded are the configurations read from the environment; a service
	// is built from its own with the other components' addresses filled in
	// (wire) and the hooks applied.
	loaded Configs
	// bound lists the listen variables whose real address is known (a
	// service bound them once), so a restart binds the same address again.
	bound   map[string]bool
	cleanup []func() error

	mu sync.Mutex
	// built are the configurations the services were last built with.
	built       Configs
	persistence *persistence.Server
	tokenbroker *tokenbroker.Server
	ingest      *ingest.Server
	publisher   *publisher.Server
	gateway     *gateway.Server
	// runCtx is the context the services run under once Run was called.
	runCtx  context.Context
	running map[Component]*run
	failed  chan struct{}
}

// server is what every service's constructor returns.
type server interface{ Serve(context.Context) error }

// run is one service being served.
type run struct {
	cancel context.CancelFunc
	done   chan error
}

// Start builds the chosen components and binds their ports. Call Serve (or
// Run) to run them.
func Start(ctx context.Context, opts Options) (_ *Stack, err error) {
	if opts.Getenv == nil {
		opts.Getenv = os.Getenv
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.DataDir == "" {
		opts.DataDir = ".devstack"
	}
	if opts.Components == nil {
		opts.Components = All
	}
	for _, c := range opts.Components {
		if !slices.Contains(All, c) {
			return nil, fmt.Errorf("stack: unknown component %q", c)
		}
	}
	s := &Stack{env: newEnv(opts.Getenv), opts: opts, bound: map[string]bool{}, running: map[Component]*run{}, failed: make(chan struct{}, 1)}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.stopAll(), s.close())
		}
	}()
	e := s.env
	e.fillSecrets()
	if err := e.fillAddrs(opts.Ephemeral); err != nil {
		return nil, err
	}
	e.setDefault("POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/biobridge?sslmode=disable")
	e.setDefault("REDIS_URL", "redis://127.0.0.1:6379/0")
	e.setDefault("LOG_FORMAT", "text")
	e.setDefault("KAFKA_TOPIC_PARTITIONS", "3")
	e.setDefault("KAFKA_REPLICATION_FACTOR", "1")
	e.setDefault("KAFKA_MIN_INSYNC_REPLICAS", "1")
	// Kafka: a real cluster when KAFKA_BROKERS is set, else the embedded
	// broker on KAFKA_ADDR. Vendors: the emulator unless their URLs are set.
	embeddedKafka := e.get("KAFKA_BROKERS") == ""
	if embeddedKafka {
		e.filled["KAFKA_BROKERS"] = e.get("KAFKA_ADDR")
	}
	emu := "http://" + e.get("EMULATOR_ADDR")
	e.setDefault("WHOOP_API_URL", emu+"/whoop")
	e.setDefault("OURA_API_URL", emu+"/oura")
	e.setDefault("OURA_AUTHORIZE_URL", emu+"/oura/oauth/authorize")
	// The app's return URL: the demo and the tests play the app, stopping
	// at this redirect and completing with the user's JWT.
	e.setDefault("OAUTH_RETURN_URLS", DevAppReturnURL)

	// devstack runs a real SERVICE_ACL per service (the production path),
	// so it sets them itself.
	if e.base("SERVICE_ACL") != "" {
		return nil, errors.New("invalid configuration:\nSERVICE_ACL: devstack gives each service the SERVICE_ACL its own wiring needs; unset it (or set SERVICE_ACL_OPEN=true to allow every caller every method)")
	}
	internal, err := e.internalCaller()
	if err != nil {
		return nil, fmt.Errorf("invalid configuration:\n%w", err)
	}
	// Every service's configuration is validated before anything starts, so
	// a bad environment is reported in one message naming every variable.
	var err1, err2, err3, err4, err5 error
	s.loaded.Persistence, err1 = persistence.LoadConfig(e.forService("persistence", internal))
	s.loaded.TokenBroker, err2 = tokenbroker.LoadConfig(e.forService("tokenbroker", internal))
	s.loaded.Ingest, err3 = ingest.LoadConfig(e.forService("ingest", internal))
	s.loaded.Publisher, err4 = publisher.LoadConfig(e.forService("publisher", internal))
	s.loaded.Gateway, err5 = gateway.LoadConfig(e.forService("gateway", internal))
	if err := errors.Join(err1, err2, err3, err4, err5); err != nil {
		return nil, fmt.Errorf("invalid configuration:\n%w", err)
	}
	// Tracing as the binaries have it: the OTEL_* variables, read once per
	// service, and one tracer provider each, so every span carries its own
	// service's service.name.
	for name, tp := range map[string]*trace.TracerProvider{
		"persistence": &s.loaded.Persistence.TracerProvider, "tokenbroker": &s.loaded.TokenBroker.TracerProvider,
		"ingest": &s.loaded.Ingest.TracerProvider, "publisher": &s.loaded.Publisher.TracerProvider, "gateway": &s.loaded.Gateway.TracerProvider,
	} {
		if opts.NoTracing {
			break
		}
		if *tp, err = s.tracing(ctx, name, opts.SpanExporter); err != nil {
			return nil, err
		}
	}

	if s.selected(Persistence) || s.selected(TokenBroker) || s.selected(Ingest) {
		if err := pgstore.EnsureDatabase(ctx, e.get("POSTGRES_URL")); err != nil {
			return nil, fmt.Errorf("prepare database: %w", err)
		}
	}

	if embeddedKafka && s.selected(Kafka) {
		dir := filepath.Join(opts.DataDir, "kafka")
		if opts.Ephemeral {
			dir = ""
		}
		s.kafka, err = kafkadev.StartConfig(ctx, kafkadev.Config{Addr: e.get("KAFKA_ADDR"), DataDir: dir, Logger: s.logger(Kafka)})
		if err != nil {
			return nil, fmt.Errorf("start embedded kafka: %w", err)
		}
		s.cleanup = append(s.cleanup, s.kafka.Close)
	}

	if s.selected(Emulator) {
		// The emulator gets the same client credentials and webhook URLs
		// as the services, so overriding any of them keeps the stack
		// consistent.
		emuCfg := opts.EmulatorConfig
		emuCfg.WhoopClientID, emuCfg.WhoopClientSecret = e.get("WHOOP_CLIENT_ID"), e.get("WHOOP_CLIENT_SECRET")
		emuCfg.OuraClientID, emuCfg.OuraClientSecret = e.get("OURA_CLIENT_ID"), e.get("OURA_CLIENT_SECRET")
		emuCfg.OuraVerificationToken = e.get("OURA_VERIFICATION_TOKEN")
		emuCfg.WhoopWebhookURL = e.get("PUBLIC_BASE_URL") + "/v1/webhooks/whoop"
		emuCfg.OuraWebhookURL = e.get("PUBLIC_BASE_URL") + "/v1/webhooks/oura"
		s.Emulator, err = emulator.New(emuCfg, s.logger(Emulator))
		if err != nil {
			return nil, fmt.Errorf("build emulator: %w", err)
		}
		if err := s.Emulator.Start(e.get("EMULATOR_ADDR")); err != nil {
			return nil, fmt.Errorf("start emulator: %w", err)
		}
		s.cleanup = append(s.cleanup, func() error {
			cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return s.Emulator.Close(cctx)
		})
	}

	// Services, in dependency order (clients connect lazily, so the order
	// matters for migrations, readiness and the addresses each is given).
	for _, c := range services {
		if !s.selected(c) {
			continue
		}
		if err := s.build(ctx, c, Hooks{}); err != nil {
			return nil, err
		}
	}
	return s, nil
}

func (s *Stack) selected(c Component) bool { return slices.Contains(s.opts.Components, c) }

func (s *Stack) logger(c Component) *slog.Logger {
	if l := s.opts.Loggers[c]; l != nil {
		return l
	}
	switch c {
	case Kafka, Emulator:
		return s.opts.Logger.With("component", string(c))
	}
	return s.opts.Logger.With("service", string(c))
}

// tracing builds the tracer provider of one service from the OTEL_*
// variables. OTEL_SERVICE_NAME is not applied: one name for the whole
// stack would hide which service a span comes from. The provider is shut
// down (its spans flushed) when the stack stops.
func (s *Stack) tracing(ctx context.Context, service string, exporter sdktrace.SpanExporter) (trace.TracerProvider, error) {
	getenv := func(k string) string {
		if k == "OTEL_SERVICE_NAME" {
			return ""
		}
		return s.env.get(k)
	}
	var extra []sdktrace.TracerProviderOption
	if exporter != nil {
		extra = append(extra, sdktrace.WithSpanProcessor(sdktrace.NewSimpleSpanProcessor(exporter)))
	}
	tp, err := telemetry.NewTracerProvider(ctx, service, getenv, extra...)
	if err != nil {
		return nil, fmt.Errorf("invalid configuration:\n%w", err)
	}
	s.cleanup = append(s.cleanup, func() error {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return tp.Shutdown(cctx)
	})
	return tp, nil
}

// listen is the address a service binds for the listen variable k: in an
// ephemeral stack, a port the system picks the first time (unless the
// caller set k), the same address on every later start.
func (s *Stack) listen(k string) string {
	if s.opts.Ephemeral && s.env.base(k) == "" && !s.bound[k] {
		return "127.0.0.1:0"
	}
	return s.env.get(k)
}

// bind records the real address behind the listen variable k and, unless
// the caller set them, the client target that points at it.
func (s *Stack) bind(k, addr, target string) {
	s.bound[k] = true
	if s.env.base(k) == "" {
		s.env.filled[k] = addr
	}
	if target != "" && s.env.base(target) == "" {
		s.env.filled[target] = addr
	}
}

// configs are the configurations the services would be built with now:
// each loaded configuration with the other components' current addresses
// (the real ones of those already started) and the hooks applied.
func (s *Stack) configs(extra Hooks) Configs {
	e := s.env
	c := s.loaded
	c.Persistence.GRPCAddr, c.Persistence.AdminAddr = s.listen("PERSISTENCE_GRPC_ADDR"), s.listen("PERSISTENCE_ADMIN_ADDR")

	c.TokenBroker.GRPCAddr, c.TokenBroker.AdminAddr = s.listen("TOKENBROKER_GRPC_ADDR"), s.listen("TOKENBROKER_ADMIN_ADDR")
	c.TokenBroker.PersistenceTarget = e.get("PERSISTENCE_TARGET")

	c.Ingest.GRPCAddr, c.Ingest.AdminAddr = s.listen("INGEST_GRPC_ADDR"), s.listen("INGEST_ADMIN_ADDR")
	c.Ingest.PersistenceTarget, c.Ingest.TokenBrokerTarget = e.get("PERSISTENCE_TARGET"), e.get("TOKENBROKER_TARGET")

	c.Publisher.GRPCAddr, c.Publisher.AdminAddr = s.listen("PUBLISHER_GRPC_ADDR"), s.listen("PUBLISHER_ADMIN_ADDR")
	c.Publisher.PersistenceTarget = e.get("PERSISTENCE_TARGET")
	if s.kafka != nil {
		c.Publisher.KafkaBrokers = []string{s.kafka.Addr()}
	}

	c.Gateway.HTTPAddr, c.Gateway.AdminAddr = e.get("GATEWAY_HTTP_ADDR"), s.listen("GATEWAY_ADMIN_ADDR")
	c.Gateway.IngestTarget, c.Gateway.TokenBrokerTarget, c.Gateway.PersistenceTarget =
		e.get("INGEST_TARGET"), e.get("TOKENBROKER_TARGET"), e.get("PERSISTENCE_TARGET")

	for _, h := range []Hooks{s.opts.Configure, extra} {
		apply(h.Persistence, &c.Persistence)
		apply(h.TokenBroker, &c.TokenBroker)
		apply(h.Ingest, &c.Ingest)
		apply(h.Publisher, &c.Publisher)
		apply(h.Gateway, &c.Gateway)
	}
	return c
}

func apply[C any](hook func(*C), c *C) {
	if hook != nil {
		hook(c)
	}
}

// build constructs service c (binding its ports) from its current
// configuration, extra's hook applied after Options.Configure's.
func (s *Stack) build(ctx context.Context, c Component, extra Hooks) error {
	cfgs := s.configs(extra)
	l := s.logger(c)
	var err error
	switch c {
	case Persistence:
		var srv *persistence.Server
		if srv, err = persistence.New(ctx, cfgs.Persistence, l); err == nil {
			s.persistence, s.built.Persistence = srv, cfgs.Persistence
			s.bind("PERSISTENCE_GRPC_ADDR", srv.GRPCAddr(), "PERSISTENCE_TARGET")
			s.bind("PERSISTENCE_ADMIN_ADDR", srv.AdminAddr(), "")
		}
	case TokenBroker:
		var srv *tokenbroker.Server
		if srv, err = tokenbroker.New(ctx, cfgs.TokenBroker, l); err == nil {
			s.tokenbroker, s.built.TokenBroker = srv, cfgs.TokenBroker
			s.bind("TOKENBROKER_GRPC_ADDR", srv.GRPCAddr(), "TOKENBROKER_TARGET")
			s.bind("TOKENBROKER_ADMIN_ADDR", srv.AdminAddr(), "")
		}
	case Ingest:
		var srv *ingest.Server
		if srv, err = ingest.New(ctx, cfgs.Ingest, l); err == nil {
			s.ingest, s.built.Ingest = srv, cfgs.Ingest
			s.bind("INGEST_GRPC_ADDR", srv.GRPCAddr(), "INGEST_TARGET")
			s.bind("INGEST_ADMIN_ADDR", srv.AdminAddr(), "")
		}
	case Publisher:
		var srv *publisher.Server
		if srv, err = publisher.New(ctx, cfgs.Publisher, l); err == nil {
			s.publisher, s.built.Publisher = srv, cfgs.Publisher
			s.bind("PUBLISHER_GRPC_ADDR", srv.GRPCAddr(), "PUBLISHER_TARGET")
			s.bind("PUBLISHER_ADMIN_ADDR", srv.AdminAddr(), "")
		}
	case Gateway:
		var srv *gateway.Server
		if srv, err = gateway.New(ctx, cfgs.Gateway, l); err == nil {
			s.gateway, s.built.Gateway = srv, cfgs.Gateway
			s.bind("GATEWAY_ADMIN_ADDR", srv.AdminAddr(), "")
		}
	default:
		return fmt.Errorf("stack: %s is not a service", c)
	}
	if err != nil {
		return fmt.Errorf("start %s: %w", c, err)
	}
	return nil
}

// server returns the built service c, nil when it is not built.
func (s *Stack) server(c Component) server {
	switch c {
	case Persistence:
		if s.persistence != nil {
			return s.persistence
		}
	case TokenBroker:
		if s.tokenbroker != nil {
			return s.tokenbroker
		}
	case Ingest:
		if s.ingest != nil {
			return s.ingest
		}
	case Publisher:
		if s.publisher != nil {
			return s.publisher
		}
	case Gateway:
		if s.gateway != nil {
			return s.gateway
		}
	}
	return nil
}

func (s *Stack) forget(c Component) {
	switch c {
	case Persistence:
		s.persistence = nil
	case TokenBroker:
		s.tokenbroker = nil
	case Ingest:
		s.ingest = nil
	case Publisher:
		s.publisher = nil
	case Gateway:
		s.gateway = nil
	}
}

// Serve runs every service until ctx ends or one of them fails, then stops
// them all and the embedded broker and emulator.
func (s *Stack) Serve(ctx context.Context) error {
	stop := s.Run(ctx)
	select {
	case <-ctx.Done():
	case <-s.failed:
	}
	return stop()
}

// Run starts serving every built service in the background and returns at
// once; services Restart starts later run under ctx too. stop stops every
// service (the gateway first), then the embedded broker and emulator, and
// returns what went wrong, each service's error under its name.
func (s *Stack) Run(ctx context.Context) (stop func() error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.runCtx = ctx
	for _, c := range services {
		s.launch(c)
	}
	return func() error { return errors.Join(s.stopAll(), s.close()) }
}

// launch serves c if it is built, not running, and Run was called. The
// caller holds s.mu.
func (s *Stack) launch(c Component) {
	srv := s.server(c)
	if srv == nil || s.runCtx == nil || s.running[c] != nil {
		return
	}
	ctx, cancel := context.WithCancel(s.runCtx)
	r := &run{cancel: cancel, done: make(chan error, 1)}
	s.running[c] = r
	go func() {
		err := srv.Serve(ctx)
		if err != nil {
			err = fmt.Errorf("%s: %w", c, err)
			if ctx.Err() == nil {
				select {
				case s.failed <- struct{}{}:
				default:
				}
			}
		}
		r.done <- err
	}()
}

// halt stops c if it runs and returns its Serve error. A service built but
// never served is served with an ended context, so it releases its ports.
// The caller holds s.mu.
func (s *Stack) halt(c Component) error {
	if s.running[c] == nil {
		srv := s.server(c)
		if srv == nil {
			return nil
		}
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		s.forget(c)
		if err := srv.Serve(ctx); err != nil {
			return fmt.Errorf("%s: %w", c, err)
		}
		return nil
	}
	r := s.running[c]
	delete(s.running, c)
	s.forget(c)
	r.cancel()
	return <-r.done
}

// Stop stops service c and returns the error its Serve returned.
func (s *Stack) Stop(c Component) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.halt(c)
}

// Restart stops service c if it runs (returning that error, if any), builds
// it again from its configuration, extra's hook for c applied after
// Options.Configure's, and, once Run was called, serves it. It listens on
// the addresses it had, so its clients keep reaching it. A service left
// out of Options.Components starts here for the first time.
func (s *Stack) Restart(ctx context.Context, c Component, extra Hooks) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.halt(c); err != nil {
		return err
	}
	if err := s.build(ctx, c, extra); err != nil {
		return err
	}
	s.launch(c)
	return nil
}

// stopAll stops every service, the gateway first.
func (s *Stack) stopAll() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	var errs []error
	for _, c := range slices.Backward(services) {
		errs = append(errs, s.halt(c))
	}
	return errors.Join(errs...)
}

func (s *Stack) close() error {
	var err error
	for i := len(s.cleanup) - 1; i >= 0; i-- {
		err = errors.Join(err, s.cleanup[i]())
	}
	s.cleanup = nil
	return err
}

// Configs returns the services' configurations: for a service built, the
// one it was last built with; for one not built, the one it would be built
// with now.
func (s *Stack) Configs() Configs {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.configs(Hooks{})
	if s.persistence != nil {
		c.Persistence = s.built.Persistence
	}
	if s.tokenbroker != nil {
		c.TokenBroker = s.built.TokenBroker
	}
	if s.ingest != nil {
		c.Ingest = s.built.Ingest
	}
	if s.publisher != nil {
		c.Publisher = s.built.Publisher
	}
	if s.gateway != nil {
		c.Gateway = s.built.Gateway
	}
	return c
}

// Persistence is the persistence service as last built (nil when it is not).
func (s *Stack) Persistence() *persistence.Server {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.persistence
}

// TokenBroker is the token broker as last built (nil when it is not).
func (s *Stack) TokenBroker() *tokenbroker.Server {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.tokenbroker
}

// Ingest is the ingest service as last built (nil when it is not).
func (s *Stack) Ingest() *ingest.Server { s.mu.Lock(); defer s.mu.Unlock(); return s.ingest }

// Publisher is the publisher as last built (nil when it is not).
func (s *Stack) Publisher() *publisher.Server { s.mu.Lock(); defer s.mu.Unlock(); return s.publisher }

// Gateway is the REST gateway as last built (nil when it is not).
func (s *Stack) Gateway() *gateway.Server { s.mu.Lock(); defer s.mu.Unlock(); return s.gateway }

// Kafka is the embedded Kafka broker (nil with KAFKA_BROKERS set or Kafka
// left out).
func (s *Stack) Kafka() *kafkadev.Broker { return s.kafka }

// Env returns the value a service of the stack sees for k; a listen
// address is the real one once the service has bound it.
func (s *Stack) Env(k string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.env.get(k)
}

// GatewayURL is the REST base URL.
func (s *Stack) GatewayURL() string { return "http://" + s.Env("GATEWAY_HTTP_ADDR") }

// UserToken issues a development JWT for user, as the iOS app would hold.
func (s *Stack) UserToken(user string, ttl time.Duration) (string, error) {
	return auth.IssueUserToken([]byte(s.Env("USER_TOKEN_SECRET")), user, ttl)
}

// ServiceToken is the token every service of the stack presents to the
// others (SERVICE_TOKEN).
func (s *Stack) ServiceToken() string { return s.Env("SERVICE_TOKEN") }

// AgentToken is the service token LangGraph workers present in
// development (the "agent" entry of SERVICE_TOKENS).
func (s *Stack) AgentToken() string { return serviceToken(s.Env("SERVICE_TOKENS"), "agent") }

// OperatorToken is the service token operators present in development
// (the "operator" entry of SERVICE_TOKENS): jobs, backfills, dead letters.
func (s *Stack) OperatorToken() string {
	return serviceToken(s.Env("SERVICE_TOKENS"), "operator")
}

func serviceToken(list, name string) string {
	for _, entry := range strings.Split(list, ",") {
		if n, tok, ok := strings.Cut(strings.TrimSpace(entry), ":"); ok && n == name {
			return tok
		}
	}
	return ""
}
