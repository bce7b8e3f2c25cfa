package server

import (
	"errors"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/pkg/config"
	"github.com/biobridge/bridge/pkg/service"
)

// Config is the gateway's configuration. Each field names its environment
// variable and what its values mean; each default is written once, where
// LoadConfig reads the variable (docs/configuration.md lists them).
type Config struct {
	// TracerProvider makes the service's spans; nil is the global one,
	// which the binary sets up from the OTEL_* variables. Not read from the
	// environment: devstack gives each service its own, so each keeps its
	// service.name in one process.
	TracerProvider trace.TracerProvider
	// HTTPAddr is GATEWAY_HTTP_ADDR: the public REST port.
	HTTPAddr string
	// AdminAddr is GATEWAY_ADMIN_ADDR: /metrics, /healthz, /readyz.
	AdminAddr string
	// IngestTarget is INGEST_TARGET.
	IngestTarget string
	// TokenBrokerTarget is TOKENBROKER_TARGET.
	TokenBrokerTarget string
	// PersistenceTarget is PERSISTENCE_TARGET.
	PersistenceTarget string
	// MaxBodyBytes is GATEWAY_MAX_BODY_BYTES: the cap on
	// request bodies (HealthKit pushes); past it the answer is 413.
	MaxBodyBytes int
	// MaxWebhookBodyBytes is GATEWAY_MAX_WEBHOOK_BODY_BYTES:
	// the cap on vendor webhook bodies.
	MaxWebhookBodyBytes int
	// MaxInflightBodyBytes is GATEWAY_MAX_INFLIGHT_BODY_BYTES (at least
	// GATEWAY_MAX_BODY_BYTES): the bytes of all request bodies being read or
	// handled at once; past it (after
	// BodyWaitBudget) the answer is 503 with Retry-After.
	MaxInflightBodyBytes int
	// BodyWaitBudget is GATEWAY_BODY_WAIT_BUDGET: how long a
	// request waits for room in the body budget.
	BodyWaitBudget time.Duration
	// UserTokens is USER_JWKS_URL (or USER_TOKEN_SECRET in development),
	// USER_JWKS_REFRESH_INTERVAL, USER_TOKEN_ISSUER, USER_TOKEN_AUDIENCE:
	// the gateway verifies users' JWTs before it reads their bodies.
	UserTokens auth.UserTokenConfig
	// RequestTimeout is GATEWAY_REQUEST_TIMEOUT: the deadline
	// given to each backend call.
	RequestTimeout time.Duration
	// TLS is TLS_CERT_FILE, TLS_KEY_FILE, TLS_CA_FILE (used for the backend
	// connections; terminate public TLS at the ingress).
	TLS config.TLSFiles

	// Common is LOG_FORMAT, LOG_LEVEL and LOG_PSEUDONYM_KEY (the binary
	// builds the logger from it; New does not read it).
	service.Common
}

// LoadConfig reads and validates the whole configuration, reporting every
// problem at once.
func LoadConfig(getenv func(string) string) (Config, error) {
	l := config.New(getenv)
	c := Config{
		HTTPAddr:             l.String("GATEWAY_HTTP_ADDR", ":8080"),
		AdminAddr:            l.String("GATEWAY_ADMIN_ADDR", ":9200"),
		IngestTarget:         l.String("INGEST_TARGET", "127.0.0.1:9101"),
		TokenBrokerTarget:    l.String("TOKENBROKER_TARGET", "127.0.0.1:9102"),
		PersistenceTarget:    l.String("PERSISTENCE_TARGET", "127.0.0.1:9103"),
		MaxBodyBytes:         l.Int("GATEWAY_MAX_BODY_BYTES", 32<<20, 1<<10, 256<<20),
		MaxWebhookBodyBytes:  l.Int("GATEWAY_MAX_WEBHOOK_BODY_BYTES", 1<<20, 1<<10, 16<<20),
		MaxInflightBodyBytes: l.Int("GATEWAY_MAX_INFLIGHT_BODY_BYTES", 128<<20, 1<<10, 16<<30),
		BodyWaitBudget:       l.Duration("GATEWAY_BODY_WAIT_BUDGET", time.Second),
		UserTokens:           auth.LoadUserTokenConfig(l),
		RequestTimeout:       l.Duration("GATEWAY_REQUEST_TIMEOUT", 30*time.Second),
		TLS:                  l.TLS(),
	}
	c.Common = service.LoadCommon(l)
	return c, errors.Join(l.Err(), c.Validate())
}

// Validate checks the relations between settings; LoadConfig reports its
// problems with the variables' own.
func (c Config) Validate() error {
	p := config.New(nil)
	p.Check("GATEWAY_MAX_INFLIGHT_BODY_BYTES", c.MaxInflightBodyBytes >= c.MaxBodyBytes && c.MaxInflightBodyBytes >= c.MaxWebhookBodyBytes,
		"must be at least GATEWAY_MAX_BODY_BYTES and GATEWAY_MAX_WEBHOOK_BODY_BYTES")
	return p.Err()
}
