package server

import (
	"errors"
	"net/url"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/trace"

	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/pkg/config"
	"github.com/biobridge/bridge/pkg/service"
	"github.com/biobridge/bridge/services/ingest/internal/completeness"
	"github.com/biobridge/bridge/services/ingest/internal/webhook"
	"github.com/biobridge/bridge/services/ingest/internal/worker"
)

// Config is the ingest service's configuration. Each field names its
// environment variable and what its values mean; each default is written
// once, where LoadConfig reads the variable or as the constant it reads it
// over (worker.Default* for the job pool; docs/configuration.md lists
// them all), and New gives a hand-built Config's zero fields the same
// defaults (setDefaults), so a Config built by hand (devstack, tests)
// needs only the addresses, URLs, secrets and tokens.
type Config struct {
	// TracerProvider makes the service's spans; nil is the global one,
	// which the binary sets up from the OTEL_* variables. Not read from the
	// environment: devstack gives each service its own, so each keeps its
	// service.name in one process.
	TracerProvider trace.TracerProvider
	// GRPCAddr is INGEST_GRPC_ADDR.
	GRPCAddr string
	// AdminAddr is INGEST_ADMIN_ADDR: /metrics, /healthz, /readyz.
	AdminAddr string
	// PersistenceTarget is PERSISTENCE_TARGET.
	PersistenceTarget string
	// TokenBrokerTarget is TOKENBROKER_TARGET.
	TokenBrokerTarget string
	// PostgresURL is POSTGRES_URL (required): the database in which ingest
	// owns schema "ingest" (its job queue), migrated at start.
	PostgresURL string
	// RedisURL is REDIS_URL (required): the vendors' app-wide rate budgets
	// shared by every replica.
	RedisURL string
	// RedisKeyPrefix is REDIS_KEY_PREFIX: put in front of every key.
	RedisKeyPrefix string
	// ServiceToken is SERVICE_TOKEN (required): the bearer token ingest
	// presents to internal services.
	ServiceToken string
	// ServiceTokens is SERVICE_TOKENS (required): "name:token,..." allowed to
	// call IngestEvents, ListJobs, RetryJobs and GetBackfillProgress.
	ServiceTokens string
	// ServiceACL is SERVICE_ACL ("caller=pattern|pattern;...", required by
	// LoadConfig unless SERVICE_ACL_OPEN=true; empty in a hand-built
	// Config: every caller may call every service-token method): which of
	// those methods each caller may call.
	ServiceACL string
	// PseudonymKey is LOG_PSEUDONYM_KEY (LoadConfig copies it from the
	// common settings): the key of the pseudonym an erasure is recorded
	// under. Empty in a hand-built Config: a random per-process key.
	PseudonymKey []byte
	// ErasureAfterStep, when set, runs after each recorded erasure step
	// with the step's name; an error stops the erasure there. Tests use it
	// to crash the process between steps.
	ErasureAfterStep func(step string) error
	// UserTokenSecret is USER_TOKEN_SECRET (>= 32 bytes): HS256 key of the
	// users' JWTs (HealthKit pushes), for development. Production verifies
	// against the identity provider's JWKS (UserTokens).
	UserTokenSecret []byte
	// UserTokens is USER_JWKS_URL, USER_JWKS_REFRESH_INTERVAL,
	// USER_TOKEN_ISSUER and USER_TOKEN_AUDIENCE (see auth.UserTokenConfig);
	// its Secret defaults to UserTokenSecret.
	UserTokens auth.UserTokenConfig
	// OuraVerificationToken is OURA_VERIFICATION_TOKEN: the token Oura echoes
	// in its subscription handshake (empty: the handshake is refused).
	OuraVerificationToken string
	// HealthKitMaxSamples is HEALTHKIT_MAX_SAMPLES (1..100000):
	// samples plus deletions accepted in one push.
	HealthKitMaxSamples int
	// MaxConcurrentPushes is MAX_CONCURRENT_PUSHES (1..1000):
	// HealthKit pushes and IngestEvents calls in flight before callers wait.
	MaxConcurrentPushes int
	// WaitBudget is INGEST_WAIT_BUDGET: how long a push may wait
	// for a slot before it is shed with RESOURCE_EXHAUSTED (HTTP 429).
	WaitBudget time.Duration
	// TLS is TLS_CERT_FILE, TLS_KEY_FILE, TLS_CA_FILE.
	TLS config.TLSFiles

	// Webhooks.

	// WhoopClientSecret is WHOOP_CLIENT_SECRET (required): the key of WHOOP's
	// webhook signatures.
	WhoopClientSecret []byte
	// OuraClientSecret is OURA_CLIENT_SECRET (required): the key of Oura's
	// webhook signatures.
	OuraClientSecret []byte
	// WebhookTolerance is WEBHOOK_TIMESTAMP_TOLERANCE (1s..1h):
	// how far a signed timestamp may be from now.
	WebhookTolerance time.Duration
	// MaxConcurrentWebhooks is MAX_CONCURRENT_WEBHOOKS (1..1000):
	// webhooks being committed at once.
	MaxConcurrentWebhooks int
	// WebhookWaitBudget is WEBHOOK_WAIT_BUDGET: how long a
	// webhook may wait for a slot before it is shed with 503 and
	// Retry-After (vendors retry; they want an answer within about a second).
	WebhookWaitBudget time.Duration

	// Fetch jobs.

	// Workers is INGEST_WORKERS (1..256): jobs run at once.
	Workers int
	// JobLease is INGEST_JOB_LEASE (at least 1s): how long a
	// job stays with a worker that stopped renewing it (a crashed one).
	JobLease time.Duration
	// JobMaxAttempts is INGEST_JOB_MAX_ATTEMPTS (1..100): failed
	// attempts before a job is dead.
	JobMaxAttempts int
	// RetryBase is INGEST_RETRY_BASE and RetryMax is
	// INGEST_RETRY_MAX: the backoff between failed attempts
	// (exponential, full jitter).
	RetryBase time.Duration
	RetryMax  time.Duration
	// PollInterval is INGEST_POLL_INTERVAL: how often idle
	// workers look for jobs enqueued by other replicas or come due.
	PollInterval time.Duration
	// PendingScoreDelay is INGEST_PENDING_SCORE_DELAY: the wait
	// before a PENDING_SCORE WHOOP record is fetched again.
	PendingScoreDelay time.Duration
	// PendingScoreMaxAge is INGEST_PENDING_SCORE_MAX_AGE.
	PendingScoreMaxAge time.Duration
	// JobRetention is INGEST_JOB_RETENTION (at least 2h): how
	// long done jobs, and so their dedupe keys, are kept.
	JobRetention time.Duration
	// ShutdownGrace is SHUTDOWN_GRACE_PERIOD: how long running
	// jobs and RPCs may finish at shutdown.
	ShutdownGrace time.Duration

	// Vendor APIs.

	// WhoopAPIURL is WHOOP_API_URL: the
	// host root; /developer/v2/... is appended.
	WhoopAPIURL string
	// OuraAPIURL is OURA_API_URL: the host
	// root; /v2/... is appended.
	OuraAPIURL string
	// WhoopRateLimit is WHOOP_RATE_LIMIT requests per
	// WhoopRateWindow, WHOOP_RATE_WINDOW, for the whole app
	// across replicas; WhoopDailyLimit is WHOOP_DAILY_LIMIT (0 disables it,
	// also in a hand-built Config).
	WhoopRateLimit  int
	WhoopRateWindow time.Duration
	WhoopDailyLimit int
	// OuraRateLimit is OURA_RATE_LIMIT requests per
	// OuraRateWindow, OURA_RATE_WINDOW.
	OuraRateLimit  int
	OuraRateWindow time.Duration
	// RateBudgetSlack is RATE_BUDGET_SLACK (0: window/50 + 500ms):
	// padding of each budget window against requests delayed in transit.
	RateBudgetSlack time.Duration
	// VendorConnectTimeout is VENDOR_CONNECT_TIMEOUT, the
	// dial and TLS handshake bound of vendor calls.
	VendorConnectTimeout time.Duration
	// VendorRequestTimeout is VENDOR_REQUEST_TIMEOUT: one
	// vendor call, start to last byte.
	VendorRequestTimeout time.Duration
	// VendorMaxConns is VENDOR_MAX_CONNS (1..1024): connections
	// per vendor.
	VendorMaxConns int

	// Data completeness. From the environment every part is on by default;
	// in a hand-built Config a zero BackfillDays, ReconcileInterval or
	// StaleAfter leaves that part off (as WhoopDailyLimit does).

	// BackfillDays is INGEST_BACKFILL_DAYS (0..400; 0 turns backfill off): the
	// history a new connection gets.
	BackfillDays int
	// ConnectionSyncInterval is INGEST_CONNECTION_SYNC_INTERVAL: how often the
	// token broker is asked for new connections, so a backfill starts within
	// about this long of a connect.
	ConnectionSyncInterval time.Duration
	// ReconcileInterval is INGEST_RECONCILE_INTERVAL (0 turns reconciliation
	// off): every active connection's recent window is read again once per
	// interval, each at its own offset within it.
	ReconcileInterval time.Duration
	// ReconcileWindow is INGEST_RECONCILE_WINDOW: how far back
	// a reconciliation reads.
	ReconcileWindow time.Duration
	// StaleAfter is INGEST_STALE_AFTER (0 turns staleness off): a connection
	// without new data for this long is stale.
	StaleAfter time.Duration
	// StaleCheckInterval is INGEST_STALE_CHECK_INTERVAL.
	StaleCheckInterval time.Duration
	// BackgroundRatePercent is INGEST_BACKGROUND_RATE_PERCENT (1..100): the
	// part of each vendor rate window backfill and reconciliation may use; the
	// rest is kept for live webhooks.
	BackgroundRatePercent int
	// BackgroundWorkers is INGEST_BACKGROUND_WORKERS (0:
	// INGEST_WORKERS minus a quarter of them, at least one kept for live
	// work): background jobs running at once per replica.
	BackgroundWorkers int

	// Oura webhook subscriptions (kept only when OuraClientID,
	// PublicBaseURL and OuraVerificationToken are all set).

	// OuraClientID is OURA_CLIENT_ID: with OURA_CLIENT_SECRET, the app
	// credentials of Oura's subscription API.
	OuraClientID string
	// PublicBaseURL is PUBLIC_BASE_URL: Oura delivers to PublicBaseURL +
	// /v1/webhooks/oura.
	PublicBaseURL string
	// OuraSubscriptionInterval is INGEST_OURA_SUBSCRIPTION_INTERVAL: how
	// often the subscriptions are checked.
	OuraSubscriptionInterval time.Duration
	// OuraSubscriptionRenewBefore is INGEST_OURA_SUBSCRIPTION_RENEW_BEFORE:
	// a subscription expiring within this is renewed.
	OuraSubscriptionRenewBefore time.Duration

	// Common is LOG_FORMAT, LOG_LEVEL and LOG_PSEUDONYM_KEY (the binary
	// builds the logger from it; New reads PseudonymKey above instead).
	service.Common
}

// setDefaults fills a hand-built Config's zero fields with LoadConfig's
// defaults, so each default is written once, where LoadConfig reads its
// variable, and trims the URLs as LoadConfig does.
func (c *Config) setDefaults() {
	config.FillZero(c, defaults())
	c.WhoopAPIURL, c.OuraAPIURL = strings.TrimRight(c.WhoopAPIURL, "/"), strings.TrimRight(c.OuraAPIURL, "/")
	c.PublicBaseURL = strings.TrimRight(c.PublicBaseURL, "/")
}

// defaults is the Config LoadConfig reads from an empty environment (the
// errors about required variables are expected), less what a hand-built
// Config leaves off when zero (WhoopDailyLimit, BackfillDays,
// ReconcileInterval, StaleAfter), the user-token settings (pkg/auth's own
// defaults) and the shared logging settings, which New does not read.
func defaults() Config {
	d, _ := LoadConfig(func(string) string { return "" })
	d.WhoopDailyLimit, d.BackfillDays, d.ReconcileInterval, d.StaleAfter = 0, 0, 0, 0
	d.UserTokens = auth.UserTokenConfig{}
	d.Common = service.Common{}
	return d
}

// LoadConfig reads and validates the whole configuration, reporting every
// problem at once.
func LoadConfig(getenv func(string) string) (Config, error) {
	l := config.New(getenv)
	c := Config{
		GRPCAddr:              l.String("INGEST_GRPC_ADDR", ":9101"),
		AdminAddr:             l.String("INGEST_ADMIN_ADDR", ":9201"),
		PersistenceTarget:     l.String("PERSISTENCE_TARGET", "127.0.0.1:9103"),
		TokenBrokerTarget:     l.String("TOKENBROKER_TARGET", "127.0.0.1:9102"),
		PostgresURL:           l.String("POSTGRES_URL", ""),
		RedisURL:              l.String("REDIS_URL", ""),
		RedisKeyPrefix:        l.String("REDIS_KEY_PREFIX", ""),
		ServiceToken:          l.Required("SERVICE_TOKEN"),
		ServiceTokens:         l.Required("SERVICE_TOKENS"),
		ServiceACL:            auth.LoadACL(l),
		UserTokens:            auth.LoadUserTokenConfig(l),
		OuraVerificationToken: l.String("OURA_VERIFICATION_TOKEN", ""),
		HealthKitMaxSamples:   l.Int("HEALTHKIT_MAX_SAMPLES", 10000, 1, 100000),
		MaxConcurrentPushes:   l.Int("MAX_CONCURRENT_PUSHES", 50, 1, 1000),
		WaitBudget:            l.Duration("INGEST_WAIT_BUDGET", 2*time.Second),
		TLS:                   l.TLS(),

		WhoopClientSecret:     []byte(l.String("WHOOP_CLIENT_SECRET", "")),
		OuraClientSecret:      []byte(l.String("OURA_CLIENT_SECRET", "")),
		WebhookTolerance:      l.Duration("WEBHOOK_TIMESTAMP_TOLERANCE", webhook.DefaultTolerance),
		MaxConcurrentWebhooks: l.Int("MAX_CONCURRENT_WEBHOOKS", 50, 1, 1000),
		WebhookWaitBudget:     l.Duration("WEBHOOK_WAIT_BUDGET", 500*time.Millisecond),

		Workers:            l.Int("INGEST_WORKERS", worker.DefaultWorkers, 1, 256),
		JobLease:           l.Duration("INGEST_JOB_LEASE", worker.DefaultLease),
		JobMaxAttempts:     l.Int("INGEST_JOB_MAX_ATTEMPTS", worker.DefaultMaxAttempts, 1, 100),
		RetryBase:          l.Duration("INGEST_RETRY_BASE", worker.DefaultRetryBase),
		RetryMax:           l.Duration("INGEST_RETRY_MAX", worker.DefaultRetryMax),
		PollInterval:       l.Duration("INGEST_POLL_INTERVAL", worker.DefaultPollInterval),
		PendingScoreDelay:  l.Duration("INGEST_PENDING_SCORE_DELAY", worker.DefaultPendingDelay),
		PendingScoreMaxAge: l.Duration("INGEST_PENDING_SCORE_MAX_AGE", worker.DefaultPendingMaxAge),
		JobRetention:       l.Duration("INGEST_JOB_RETENTION", worker.DefaultRetention),
		ShutdownGrace:      l.Duration("SHUTDOWN_GRACE_PERIOD", worker.DefaultShutdownGrace),

		WhoopAPIURL:          strings.TrimRight(l.String("WHOOP_API_URL", "https://api.prod.whoop.com"), "/"),
		OuraAPIURL:           strings.TrimRight(l.String("OURA_API_URL", "https://api.ouraring.com"), "/"),
		WhoopRateLimit:       l.Int("WHOOP_RATE_LIMIT", 100, 1, 1_000_000),
		WhoopRateWindow:      l.Duration("WHOOP_RATE_WINDOW", time.Minute),
		WhoopDailyLimit:      l.Int("WHOOP_DAILY_LIMIT", 10000, 0, 100_000_000),
		OuraRateLimit:        l.Int("OURA_RATE_LIMIT", 5000, 1, 1_000_000),
		OuraRateWindow:       l.Duration("OURA_RATE_WINDOW", 5*time.Minute),
		RateBudgetSlack:      l.Duration("RATE_BUDGET_SLACK", 0),
		VendorConnectTimeout: l.Duration("VENDOR_CONNECT_TIMEOUT", 5*time.Second),
		VendorRequestTimeout: l.Duration("VENDOR_REQUEST_TIMEOUT", 15*time.Second),
		VendorMaxConns:       l.Int("VENDOR_MAX_CONNS", 16, 1, 1024),

		BackfillDays:           l.Int("INGEST_BACKFILL_DAYS", 30, 0, 400),
		ConnectionSyncInterval: l.Duration("INGEST_CONNECTION_SYNC_INTERVAL", completeness.DefaultSyncInterval),
		ReconcileInterval:      l.Duration("INGEST_RECONCILE_INTERVAL", 6*time.Hour),
		ReconcileWindow:        l.Duration("INGEST_RECONCILE_WINDOW", completeness.DefaultReconcileWindow),
		StaleAfter:             l.Duration("INGEST_STALE_AFTER", 48*time.Hour),
		StaleCheckInterval:     l.Duration("INGEST_STALE_CHECK_INTERVAL", completeness.DefaultStaleCheckInterval),
		BackgroundRatePercent:  l.Int("INGEST_BACKGROUND_RATE_PERCENT", 50, 1, 100),
		BackgroundWorkers:      l.Int("INGEST_BACKGROUND_WORKERS", 0, 0, 256),

		OuraClientID:                l.String("OURA_CLIENT_ID", ""),
		PublicBaseURL:               strings.TrimRight(l.String("PUBLIC_BASE_URL", ""), "/"),
		OuraSubscriptionInterval:    l.Duration("INGEST_OURA_SUBSCRIPTION_INTERVAL", time.Hour),
		OuraSubscriptionRenewBefore: l.Duration("INGEST_OURA_SUBSCRIPTION_RENEW_BEFORE", 7*24*time.Hour),
	}
	c.UserTokenSecret = c.UserTokens.Secret
	c.Common = service.LoadCommon(l)
	c.PseudonymKey = c.Common.PseudonymKey
	return c, errors.Join(l.Err(), c.Validate())
}

// Validate checks what is required, the relations between settings and
// their formats beyond their types: the one check of a Config, whether
// LoadConfig read it (and reports its problems with the variables' own) or
// it was built by hand (New checks it).
func (c Config) Validate() error {
	l := config.New(nil)
	l.Check("POSTGRES_URL", c.PostgresURL != "", "is required")
	l.Check("REDIS_URL", c.RedisURL != "", "is required")
	if c.RedisURL != "" {
		_, err := redis.ParseURL(c.RedisURL)
		l.Check("REDIS_URL", err == nil, "must be a redis:// or rediss:// URL")
	}
	l.Check("WHOOP_CLIENT_SECRET", len(c.WhoopClientSecret) > 0, "is required (the key of WHOOP's webhook signatures)")
	l.Check("OURA_CLIENT_SECRET", len(c.OuraClientSecret) > 0, "is required (the key of Oura's webhook signatures)")
	l.Check("WEBHOOK_TIMESTAMP_TOLERANCE", c.WebhookTolerance >= time.Second && c.WebhookTolerance <= time.Hour, "must be between 1s and 1h")
	l.Check("WEBHOOK_WAIT_BUDGET", c.WebhookWaitBudget > 0 && c.WebhookWaitBudget <= 10*time.Second, "must be between 1ns and 10s (vendors want an answer within about a second)")
	l.Check("INGEST_JOB_LEASE", c.JobLease >= time.Second, "must be at least 1s")
	l.Check("INGEST_RETRY_BASE", c.RetryBase > 0, "must be positive")
	l.Check("INGEST_RETRY_MAX", c.RetryMax >= c.RetryBase, "must not be less than INGEST_RETRY_BASE")
	l.Check("INGEST_POLL_INTERVAL", c.PollInterval >= 10*time.Millisecond, "must be at least 10ms")
	l.Check("INGEST_PENDING_SCORE_DELAY", c.PendingScoreDelay > 0, "must be positive")
	l.Check("INGEST_JOB_RETENTION", c.JobRetention >= 2*time.Hour, "must be at least 2h (longer than the vendors' retry window, or redeliveries are not recognised)")
	l.Check("WHOOP_RATE_WINDOW", c.WhoopRateWindow >= time.Second, "must be at least 1s")
	l.Check("OURA_RATE_WINDOW", c.OuraRateWindow >= time.Second, "must be at least 1s")
	l.Check("VENDOR_CONNECT_TIMEOUT", c.VendorConnectTimeout > 0, "must be positive")
	l.Check("VENDOR_REQUEST_TIMEOUT", c.VendorRequestTimeout > 0, "must be positive")
	l.Check("INGEST_CONNECTION_SYNC_INTERVAL", c.ConnectionSyncInterval >= 10*time.Millisecond, "must be at least 10ms")
	l.Check("INGEST_RECONCILE_INTERVAL", c.ReconcileInterval == 0 || c.ReconcileInterval >= time.Second, "must be 0 (off) or at least 1s")
	l.Check("INGEST_RECONCILE_WINDOW", c.ReconcileWindow >= time.Minute, "must be at least 1m")
	l.Check("INGEST_STALE_AFTER", c.StaleAfter == 0 || c.StaleAfter >= time.Second, "must be 0 (off) or at least 1s")
	l.Check("INGEST_STALE_CHECK_INTERVAL", c.StaleCheckInterval >= 10*time.Millisecond, "must be at least 10ms")
	l.Check("INGEST_BACKGROUND_WORKERS", c.BackgroundWorkers <= c.Workers, "must not exceed INGEST_WORKERS")
	l.Check("INGEST_OURA_SUBSCRIPTION_INTERVAL", c.OuraSubscriptionInterval >= 100*time.Millisecond, "must be at least 100ms")
	l.Check("INGEST_OURA_SUBSCRIPTION_RENEW_BEFORE", c.OuraSubscriptionRenewBefore > 0, "must be positive")
	if c.PublicBaseURL != "" {
		p, err := url.Parse(c.PublicBaseURL)
		l.Check("PUBLIC_BASE_URL", err == nil && (p.Scheme == "http" || p.Scheme == "https") && p.Host != "", "must be an absolute http(s) URL")
	}
	for _, u := range []struct{ name, v string }{{"WHOOP_API_URL", c.WhoopAPIURL}, {"OURA_API_URL", c.OuraAPIURL}} {
		p, err := url.Parse(u.v)
		l.Check(u.name, err == nil && (p.Scheme == "http" || p.Scheme == "https") && p.Host != "", "must be an absolute http(s) URL")
	}
	return l.Err()
}
