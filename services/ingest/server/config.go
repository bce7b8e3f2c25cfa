package server

import (
	"time"

	"github.com/biobridge/bridge/pkg/config"
	"github.com/biobridge/bridge/pkg/service"
)

// Config is the ingest service's configuration. Each field names its
// environment variable and default.
type Config struct {
	// GRPCAddr is INGEST_GRPC_ADDR (default ":9101").
	GRPCAddr string
	// AdminAddr is INGEST_ADMIN_ADDR (default ":9201"): /metrics, /healthz, /readyz.
	AdminAddr string
	// PersistenceTarget is PERSISTENCE_TARGET (default "127.0.0.1:9103").
	PersistenceTarget string
	// ServiceToken is SERVICE_TOKEN (required): the bearer token ingest
	// presents to internal services.
	ServiceToken string
	// ServiceTokens is SERVICE_TOKENS (required): "name:token,..." allowed to
	// call IngestEvents, ListJobs and RetryJobs.
	ServiceTokens string
	// UserTokenSecret is USER_TOKEN_SECRET (required, >= 32 bytes): HS256 key
	// of the users' JWTs (HealthKit pushes).
	UserTokenSecret []byte
	// OuraVerificationToken is OURA_VERIFICATION_TOKEN: the token Oura echoes
	// in its subscription handshake (empty: the handshake is refused).
	OuraVerificationToken string
	// HealthKitMaxSamples is HEALTHKIT_MAX_SAMPLES (default 10000, 1..100000):
	// samples plus deletions accepted in one push.
	HealthKitMaxSamples int
	// MaxConcurrentWrites is MAX_CONCURRENT_WEBHOOKS (default 50, 1..1000):
	// concurrent pushes and webhooks in flight before callers wait.
	MaxConcurrentWrites int
	// WaitBudget is INGEST_WAIT_BUDGET (default 2s): how long a request may wait
	// for a slot before it is shed with RESOURCE_EXHAUSTED (HTTP 429).
	WaitBudget time.Duration
	// TLS is TLS_CERT_FILE, TLS_KEY_FILE, TLS_CA_FILE.
	TLS config.TLSFiles
}

// LoadConfig reads and validates the whole configuration, reporting every
// problem at once.
func LoadConfig(getenv func(string) string) (Config, service.Common, error) {
	l := config.New(getenv)
	c := Config{
		GRPCAddr:              l.String("INGEST_GRPC_ADDR", ":9101"),
		AdminAddr:             l.String("INGEST_ADMIN_ADDR", ":9201"),
		PersistenceTarget:     l.String("PERSISTENCE_TARGET", "127.0.0.1:9103"),
		ServiceToken:          l.Required("SERVICE_TOKEN"),
		ServiceTokens:         l.Required("SERVICE_TOKENS"),
		UserTokenSecret:       []byte(l.Required("USER_TOKEN_SECRET")),
		OuraVerificationToken: l.String("OURA_VERIFICATION_TOKEN", ""),
		HealthKitMaxSamples:   l.Int("HEALTHKIT_MAX_SAMPLES", 10000, 1, 100000),
		MaxConcurrentWrites:   l.Int("MAX_CONCURRENT_WEBHOOKS", 50, 1, 1000),
		WaitBudget:            l.Duration("INGEST_WAIT_BUDGET", 2*time.Second),
		TLS:                   l.TLS(),
	}
	if len(c.UserTokenSecret) > 0 {
		l.Check("USER_TOKEN_SECRET", len(c.UserTokenSecret) >= 32, "must be at least 32 bytes")
	}
	common := service.LoadCommon(l)
	return c, common, l.Err()
}
