// Package stack runs the whole Biometric Bridge suite in one process for
// development, demos, end-to-end tests and benchmarks: every service on its
// own loopback port with real gRPC hops between them, the vendor emulator,
// and an embedded Kafka-protocol broker when KAFKA_BROKERS is empty.
package stack

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"golang.org/x/sync/errgroup"

	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/pkg/pgstore"
	"github.com/biobridge/bridge/pkg/telemetry"
	"github.com/biobridge/bridge/pkg/vendoremu"
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

// Options configure a stack.
type Options struct {
	// Getenv supplies the caller's environment; unset variables get
	// development values.
	Getenv func(string) string
	// Ephemeral picks free loopback ports for everything instead of the
	// documented defaults (tests).
	Ephemeral bool
	// DataDir keeps the embedded Kafka broker's data (default .devstack).
	DataDir string
	// Logger receives every service's logs.
	Logger *slog.Logger
	// EmulatorConfig adjusts the vendor emulator (credentials and webhook
	// URLs are always set by the stack so they match the services).
	EmulatorConfig vendoremu.Config
	// SpanExporter, when set, receives every service's spans as they end,
	// besides any OTLP exporter the OTEL_* variables configure (tests).
	SpanExporter sdktrace.SpanExporter
}

// Stack is a running suite.
type Stack struct {
	env      *env
	logger   *slog.Logger
	Emulator *vendoremu.Emulator
	kafka    *kafkadev.Broker
	servers  []namedServer
	cleanup  []func() error
}

type namedServer struct {
	name  string
	serve func(context.Context) error
}

// Start builds every component and binds every port. Call Serve to run them.
func Start(ctx context.Context, opts Options) (_ *Stack, err error) {
	if opts.Getenv == nil {
		opts.Getenv = os.Getenv
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if opts.DataDir == "" {
		opts.DataDir = ".devstack"
	}
	s := &Stack{env: newEnv(opts.Getenv), logger: opts.Logger}
	defer func() {
		if err != nil {
			err = errors.Join(err, s.close())
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
	persistenceCfg, err1 := persistence.LoadConfig(e.forService("persistence", internal))
	brokerCfg, err2 := tokenbroker.LoadConfig(e.forService("tokenbroker", internal))
	ingestCfg, _, err3 := ingest.LoadConfig(e.forService("ingest", internal))
	publisherCfg, err4 := publisher.LoadConfig(e.forService("publisher", internal))
	gatewayCfg, _, err5 := gateway.LoadConfig(e.forService("gateway", internal))
	if err := errors.Join(err1, err2, err3, err4, err5); err != nil {
		return nil, fmt.Errorf("invalid configuration:\n%w", err)
	}
	// Tracing as the binaries have it: the OTEL_* variables, read once per
	// service, and one tracer provider each, so every span carries its own
	// service's service.name.
	for name, tp := range map[string]*trace.TracerProvider{
		"persistence": &persistenceCfg.TracerProvider, "tokenbroker": &brokerCfg.TracerProvider,
		"ingest": &ingestCfg.TracerProvider, "publisher": &publisherCfg.TracerProvider, "gateway": &gatewayCfg.TracerProvider,
	} {
		if *tp, err = s.tracing(ctx, name, opts.SpanExporter); err != nil {
			return nil, err
		}
	}

	if err := pgstore.EnsureDatabase(ctx, e.get("POSTGRES_URL")); err != nil {
		return nil, fmt.Errorf("prepare database: %w", err)
	}

	// Kafka: a real cluster when KAFKA_BROKERS is set, else the embedded broker.
	if embeddedKafka {
		dir := filepath.Join(opts.DataDir, "kafka")
		if opts.Ephemeral {
			dir = ""
		}
		s.kafka, err = kafkadev.StartConfig(ctx, kafkadev.Config{Addr: e.get("KAFKA_ADDR"), DataDir: dir, Logger: opts.Logger.With("component", "kafka")})
		if err != nil {
			return nil, fmt.Errorf("start embedded kafka: %w", err)
		}
		s.cleanup = append(s.cleanup, s.kafka.Close)
	}

	// The emulator gets the same client credentials and webhook URLs as the
	// services, so overriding any of them keeps the stack consistent.
	emuCfg := opts.EmulatorConfig
	emuCfg.WhoopClientID, emuCfg.WhoopClientSecret = e.get("WHOOP_CLIENT_ID"), e.get("WHOOP_CLIENT_SECRET")
	emuCfg.OuraClientID, emuCfg.OuraClientSecret = e.get("OURA_CLIENT_ID"), e.get("OURA_CLIENT_SECRET")
	emuCfg.OuraVerificationToken = e.get("OURA_VERIFICATION_TOKEN")
	emuCfg.WhoopWebhookURL = e.get("PUBLIC_BASE_URL") + "/v1/webhooks/whoop"
	emuCfg.OuraWebhookURL = e.get("PUBLIC_BASE_URL") + "/v1/webhooks/oura"
	s.Emulator, err = vendoremu.New(emuCfg, opts.Logger.With("component", "emulator"))
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

	// Services, in dependency order (clients connect lazily, so the order
	// only matters for migrations and readiness).
	if err := s.add(ctx, "persistence", func(ctx context.Context, l *slog.Logger) (func(context.Context) error, error) {
		return serving(persistence.New(ctx, persistenceCfg, l))
	}); err != nil {
		return nil, err
	}
	if err := s.add(ctx, "tokenbroker", func(ctx context.Context, l *slog.Logger) (func(context.Context) error, error) {
		return serving(tokenbroker.New(ctx, brokerCfg, l))
	}); err != nil {
		return nil, err
	}
	if err := s.add(ctx, "ingest", func(ctx context.Context, l *slog.Logger) (func(context.Context) error, error) {
		return serving(ingest.New(ctx, ingestCfg, l))
	}); err != nil {
		return nil, err
	}
	if err := s.add(ctx, "publisher", func(ctx context.Context, l *slog.Logger) (func(context.Context) error, error) {
		return serving(publisher.New(ctx, publisherCfg, l))
	}); err != nil {
		return nil, err
	}
	if err := s.add(ctx, "gateway", func(ctx context.Context, l *slog.Logger) (func(context.Context) error, error) {
		return serving(gateway.New(ctx, gatewayCfg, l))
	}); err != nil {
		return nil, err
	}
	return s, nil
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

// serving turns a constructor's result into the Serve function of what it built.
func serving[S interface{ Serve(context.Context) error }](srv S, err error) (func(context.Context) error, error) {
	if err != nil {
		return nil, err
	}
	return srv.Serve, nil
}

func (s *Stack) add(ctx context.Context, name string, build func(context.Context, *slog.Logger) (func(context.Context) error, error)) error {
	serve, err := build(ctx, s.logger.With("service", name))
	if err != nil {
		return fmt.Errorf("start %s: %w", name, err)
	}
	s.servers = append(s.servers, namedServer{name: name, serve: serve})
	return nil
}

// Serve runs every service until ctx ends, then stops them all and the
// embedded broker and emulator. A service that fails stops the others.
func (s *Stack) Serve(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	for _, srv := range s.servers {
		g.Go(func() error {
			if err := srv.serve(gctx); err != nil {
				return fmt.Errorf("%s: %w", srv.name, err)
			}
			return nil
		})
	}
	err := g.Wait()
	return errors.Join(err, s.close())
}

func (s *Stack) close() error {
	var err error
	for i := len(s.cleanup) - 1; i >= 0; i-- {
		err = errors.Join(err, s.cleanup[i]())
	}
	s.cleanup = nil
	return err
}

// Env returns the value a service of the stack sees for k.
func (s *Stack) Env(k string) string { return s.env.get(k) }

// GatewayURL is the REST base URL.
func (s *Stack) GatewayURL() string { return "http://" + s.env.get("GATEWAY_HTTP_ADDR") }

// UserToken issues a development JWT for user, as the iOS app would hold.
func (s *Stack) UserToken(user string, ttl time.Duration) (string, error) {
	return auth.IssueUserToken([]byte(s.env.get("USER_TOKEN_SECRET")), user, ttl)
}

// AgentToken is the service token LangGraph workers present in
// development (the "agent" entry of SERVICE_TOKENS).
func (s *Stack) AgentToken() string { return serviceToken(s.env.get("SERVICE_TOKENS"), "agent") }

// OperatorToken is the service token operators present in development
// (the "operator" entry of SERVICE_TOKENS): jobs, backfills, dead letters.
func (s *Stack) OperatorToken() string {
	return serviceToken(s.env.get("SERVICE_TOKENS"), "operator")
}

func serviceToken(list, name string) string {
	for _, entry := range strings.Split(list, ",") {
		if n, tok, ok := strings.Cut(strings.TrimSpace(entry), ":"); ok && n == name {
			return tok
		}
	}
	return ""
}
