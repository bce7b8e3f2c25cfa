package server

import (
	"errors"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"
	"github.com/redis/rueidis"

	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/pkg/config"
	"github.com/biobridge/bridge/pkg/service"
	"github.com/biobridge/bridge/services/persistence/internal/audit"
)

// Config is the persistence service's configuration. Each field names its
// environment variable and what its values mean; each default is written
// once, as the Default* constant LoadConfig reads the variable over
// (docs/configuration.md lists them), and New gives a hand-built Config's zero
// fields the same defaults (setDefaults), so tests can build a Config by hand
// with only the addresses, URLs and tokens.
type Config struct {
	// TracerProvider makes the service's spans; nil is the global one,
	// which the binary sets up from the OTEL_* variables. Not read from the
	// environment: devstack gives each service its own, so each keeps its
	// service.name in one process.
	TracerProvider trace.TracerProvider
	// GRPCAddr is PERSISTENCE_GRPC_ADDR (":0" picks a port).
	GRPCAddr string
	// AdminAddr is PERSISTENCE_ADMIN_ADDR: /metrics,
	// /healthz, /readyz.
	AdminAddr string
	// PostgresURL is POSTGRES_URL (required). Pool sizes may be tuned with
	// pool_max_conns in the URL (default 20).
	PostgresURL string
	// RedisURL is REDIS_URL (required by LoadConfig). In a hand-built
	// Config, empty disables the latest cache: GetLatest reads PostgreSQL
	// and WatchLatest is unavailable.
	RedisURL string
	// RedisKeyPrefix is REDIS_KEY_PREFIX, put in front of
	// every Redis key and channel.
	RedisKeyPrefix string
	// ServiceTokens is SERVICE_TOKENS ("name:token,..."; required): the
	// callers allowed to use both APIs; the name is the audited caller.
	ServiceTokens string
	// ServiceACL is SERVICE_ACL ("caller=pattern|pattern;...", required
	// by LoadConfig unless SERVICE_ACL_OPEN=true): which methods of both
	// APIs each caller may call, see auth.ParseACL. Empty in a hand-built
	// Config lets every caller call every method.
	ServiceACL string
	// TLS is TLS_CERT_FILE, TLS_KEY_FILE, TLS_CA_FILE (all empty: plaintext).
	TLS config.TLSFiles

	// GroupCommitWindow is GROUP_COMMIT_WINDOW: how long a
	// write waits for others to share its transaction.
	GroupCommitWindow time.Duration
	// GroupCommitMaxEvents is GROUP_COMMIT_MAX_EVENTS: a
	// shared transaction closes at this many events.
	GroupCommitMaxEvents int
	// GroupCommitConcurrency is GROUP_COMMIT_CONCURRENCY:
	// write transactions in flight at once.
	GroupCommitConcurrency int
	// MaxConcurrentRPCs is PERSISTENCE_MAX_CONCURRENT_RPCS:
	// concurrent WriteEvents, DeleteRecords, GetLatest and QueryReadings
	// calls; past it callers wait up to 1s, then get RESOURCE_EXHAUSTED.
	MaxConcurrentRPCs int

	// AuditBuffer is AUDIT_BUFFER: audit entries that may
	// wait for the batch writer before new ones are dropped (and counted).
	AuditBuffer int
	// AuditFlushInterval is AUDIT_FLUSH_INTERVAL.
	AuditFlushInterval time.Duration

	// LatestCacheTTL is LATEST_CACHE_TTL: a cached snapshot
	// is rebuilt from PostgreSQL at least this often.
	LatestCacheTTL time.Duration
	// LatestNearCacheOff is LATEST_NEAR_CACHE_ENABLED=false (the
	// near-cache is on by default): GetLatest then reads Redis on every
	// call. With it on, each replica keeps the latest hashes it read and
	// drops them on Redis's invalidation pushes (CLIENT TRACKING); see
	// latestcache.Near for its guarantees. The zero value is on, as
	// LoadConfig's default, so a hand-built Config runs what production
	// runs.
	LatestNearCacheOff bool
	// LatestNearCacheMiB is LATEST_NEAR_CACHE_MIB (1..4096): the memory the
	// near-cache's entries may take (least recently used entries go first).
	LatestNearCacheMiB int
	// LatestNearCacheTTL is LATEST_NEAR_CACHE_TTL (1s..24h): the longest a
	// near-cache entry is kept.
	LatestNearCacheTTL time.Duration
	// LatestNearCacheMaxStaleness is LATEST_NEAR_CACHE_MAX_STALENESS (0,
	// the default, or 10ms..10s). 0 is strict: every GetLatest waits for a
	// barrier (a PING on the tracking connection, shared by the calls in
	// flight) sent after it started, so it sees every write acknowledged by
	// any replica before it started, as a read of Redis would. Above 0, a
	// write acknowledged by another replica is seen by every GetLatest here
	// that starts this long after the acknowledgment (usually at once: the
	// invalidation takes a network hop), and reads skip the barrier; writes
	// and erasures through this replica are still seen at once.
	LatestNearCacheMaxStaleness time.Duration
	// WatchResyncInterval is WATCH_RESYNC_INTERVAL: how often
	// an open WatchLatest stream re-reads the values.
	WatchResyncInterval time.Duration
	// WatchMaxStreams is WATCH_MAX_STREAMS (1..100000): open
	// WatchLatest streams per replica. Each holds a Redis subscription
	// connection, so the cap protects Redis's client limit; past it a new
	// watch gets RESOURCE_EXHAUSTED with Retry-After.
	WatchMaxStreams int
	// OutboxPollInterval is OUTBOX_POLL_INTERVAL: the longest
	// a long-polling LeaseOutbox sleeps without a notification (commits
	// wake it at once; this covers expired leases and retry delays).
	OutboxPollInterval time.Duration

	// PartitionMonthsAhead is PARTITION_MONTHS_AHEAD: monthly
	// partitions created in advance.
	PartitionMonthsAhead int
	// MaintenanceInterval is PARTITION_MAINTENANCE_INTERVAL.
	MaintenanceInterval time.Duration
	// RetentionReadings is RETENTION_READINGS (0: keep forever):
	// monthly readings partitions whose whole month is older than this are
	// dropped by the maintenance loop. Latest values are never dropped.
	RetentionReadings time.Duration
	// RetentionEvents is RETENTION_EVENTS (0: keep forever): the
	// same for the record history (events).
	RetentionEvents time.Duration
	// RetentionAudit is RETENTION_AUDIT: the
	// same for the audit log.
	RetentionAudit time.Duration
	// GracePeriod is SHUTDOWN_GRACE_PERIOD: how long
	// in-flight calls may finish at shutdown.
	GracePeriod time.Duration

	// Common holds LOG_FORMAT, LOG_LEVEL and LOG_PSEUDONYM_KEY (main builds
	// the logger from it; New does not read it).
	service.Common
}

// Defaults LoadConfig reads over.
const (
	DefaultGRPCAddr               = ":9103"
	DefaultAdminAddr              = ":9203"
	DefaultGroupCommitWindow      = 2 * time.Millisecond
	DefaultGroupCommitMaxEvents   = 1000
	DefaultGroupCommitConcurrency = 4
	DefaultMaxConcurrentRPCs      = 256
	DefaultAuditBuffer            = audit.DefaultBuffer
	DefaultAuditFlushInterval     = audit.DefaultFlushInterval
	DefaultLatestCacheTTL         = 24 * time.Hour
	DefaultLatestNearCacheMiB     = 32
	DefaultLatestNearCacheTTL     = time.Minute
	// DefaultLatestNearCacheMaxStaleness is strict (see
	// Config.LatestNearCacheMaxStaleness).
	DefaultLatestNearCacheMaxStaleness = 0
	DefaultWatchResyncInterval         = 30 * time.Second
	DefaultWatchMaxStreams             = 1000
	DefaultOutboxPollInterval          = time.Second
	DefaultPartitionMonthsAhead        = 3
	DefaultMaintenanceInterval         = time.Hour
	// DefaultRetentionAudit is six years (of 365.25 days), how long HIPAA
	// expects compliance documentation to be kept.
	DefaultRetentionAudit = 6 * 8766 * time.Hour
	// MinRetention is the shortest retention accepted: partitions are
	// monthly, and a policy shorter than a month would drop last month's
	// partition as soon as maintenance creates it.
	MinRetention       = 31 * 24 * time.Hour
	DefaultGracePeriod = 10 * time.Second
)

// LoadConfig reads the configuration through getenv and reports every
// invalid variable at once.
func LoadConfig(getenv func(string) string) (Config, error) {
	l := config.New(getenv)
	c := Config{
		GRPCAddr:                    l.String("PERSISTENCE_GRPC_ADDR", DefaultGRPCAddr),
		AdminAddr:                   l.String("PERSISTENCE_ADMIN_ADDR", DefaultAdminAddr),
		PostgresURL:                 l.String("POSTGRES_URL", ""),
		RedisURL:                    l.Required("REDIS_URL"),
		RedisKeyPrefix:              l.String("REDIS_KEY_PREFIX", ""),
		ServiceTokens:               l.Required("SERVICE_TOKENS"),
		ServiceACL:                  auth.LoadACL(l),
		TLS:                         l.TLS(),
		GroupCommitWindow:           l.Duration("GROUP_COMMIT_WINDOW", DefaultGroupCommitWindow),
		GroupCommitMaxEvents:        l.Int("GROUP_COMMIT_MAX_EVENTS", DefaultGroupCommitMaxEvents, 1, 100_000),
		GroupCommitConcurrency:      l.Int("GROUP_COMMIT_CONCURRENCY", DefaultGroupCommitConcurrency, 1, 64),
		MaxConcurrentRPCs:           l.Int("PERSISTENCE_MAX_CONCURRENT_RPCS", DefaultMaxConcurrentRPCs, 1, 100_000),
		AuditBuffer:                 l.Int("AUDIT_BUFFER", DefaultAuditBuffer, 100, 10_000_000),
		AuditFlushInterval:          l.Duration("AUDIT_FLUSH_INTERVAL", DefaultAuditFlushInterval),
		LatestCacheTTL:              l.Duration("LATEST_CACHE_TTL", DefaultLatestCacheTTL),
		LatestNearCacheOff:          !l.Bool("LATEST_NEAR_CACHE_ENABLED", true),
		LatestNearCacheMiB:          l.Int("LATEST_NEAR_CACHE_MIB", DefaultLatestNearCacheMiB, 1, 4096),
		LatestNearCacheTTL:          l.Duration("LATEST_NEAR_CACHE_TTL", DefaultLatestNearCacheTTL),
		LatestNearCacheMaxStaleness: l.Duration("LATEST_NEAR_CACHE_MAX_STALENESS", DefaultLatestNearCacheMaxStaleness),
		WatchResyncInterval:         l.Duration("WATCH_RESYNC_INTERVAL", DefaultWatchResyncInterval),
		WatchMaxStreams:             l.Int("WATCH_MAX_STREAMS", DefaultWatchMaxStreams, 1, 100_000),
		OutboxPollInterval:          l.Duration("OUTBOX_POLL_INTERVAL", DefaultOutboxPollInterval),
		PartitionMonthsAhead:        l.Int("PARTITION_MONTHS_AHEAD", DefaultPartitionMonthsAhead, 1, 36),
		MaintenanceInterval:         l.Duration("PARTITION_MAINTENANCE_INTERVAL", DefaultMaintenanceInterval),
		RetentionReadings:           l.Duration("RETENTION_READINGS", 0),
		RetentionEvents:             l.Duration("RETENTION_EVENTS", 0),
		RetentionAudit:              l.Duration("RETENTION_AUDIT", DefaultRetentionAudit),
		GracePeriod:                 l.Duration("SHUTDOWN_GRACE_PERIOD", DefaultGracePeriod),
	}
	c.Common = service.LoadCommon(l)
	return c, errors.Join(l.Err(), c.Validate())
}

// Validate checks what is required and the settings' formats and bounds
// beyond their types: the one check of a Config, whether LoadConfig read
// it (and reports its problems with the variables' own) or it was built by
// hand (New checks it). REDIS_URL is required by LoadConfig only: a Config
// built by hand may leave the latest cache out.
func (c Config) Validate() error {
	l := config.New(nil)
	l.Check("POSTGRES_URL", c.PostgresURL != "", "is required")
	if c.ServiceTokens != "" {
		if _, err := auth.ParseServiceTokens(c.ServiceTokens); err != nil {
			l.Check("SERVICE_TOKENS", false, err.Error())
		}
	}
	if c.PostgresURL != "" {
		_, err := pgx.ParseConfig(c.PostgresURL)
		l.Check("POSTGRES_URL", err == nil, "must be a postgres:// URL or connection string")
	}
	if c.RedisURL != "" {
		_, err := redis.ParseURL(c.RedisURL)
		l.Check("REDIS_URL", err == nil, "must be a redis:// or rediss:// URL")
		if err == nil && !c.LatestNearCacheOff {
			_, err := rueidis.ParseURL(c.RedisURL)
			l.Check("REDIS_URL", err == nil, "must be a URL the near-cache's client reads too (or set LATEST_NEAR_CACHE_ENABLED=false)")
		}
	}
	l.Check("GROUP_COMMIT_WINDOW", c.GroupCommitWindow <= time.Second, "must be at most 1s")
	l.Check("AUDIT_FLUSH_INTERVAL", c.AuditFlushInterval >= time.Millisecond && c.AuditFlushInterval <= time.Minute, "must be between 1ms and 1m")
	l.Check("LATEST_CACHE_TTL", c.LatestCacheTTL >= time.Minute, "must be at least 1m")
	l.Check("LATEST_NEAR_CACHE_TTL", c.LatestNearCacheTTL >= time.Second && c.LatestNearCacheTTL <= 24*time.Hour, "must be between 1s and 24h")
	l.Check("LATEST_NEAR_CACHE_MAX_STALENESS", c.LatestNearCacheMaxStaleness == 0 || (c.LatestNearCacheMaxStaleness >= 10*time.Millisecond && c.LatestNearCacheMaxStaleness <= 10*time.Second), "must be 0 (strict) or between 10ms and 10s")
	l.Check("WATCH_RESYNC_INTERVAL", c.WatchResyncInterval >= 100*time.Millisecond, "must be at least 100ms")
	l.Check("OUTBOX_POLL_INTERVAL", c.OutboxPollInterval >= 10*time.Millisecond && c.OutboxPollInterval <= time.Minute, "must be between 10ms and 1m")
	l.Check("PARTITION_MAINTENANCE_INTERVAL", c.MaintenanceInterval >= time.Minute, "must be at least 1m")
	l.Check("RETENTION_READINGS", c.RetentionReadings == 0 || c.RetentionReadings >= MinRetention, "must be 0 (keep forever) or at least 744h (31 days)")
	l.Check("RETENTION_EVENTS", c.RetentionEvents == 0 || c.RetentionEvents >= MinRetention, "must be 0 (keep forever) or at least 744h (31 days)")
	l.Check("RETENTION_AUDIT", c.RetentionAudit >= MinRetention, "must be at least 744h (31 days); the default is six years")
	return l.Err()
}

// setDefaults fills a hand-built Config's zero fields with LoadConfig's
// defaults, so each default is written once, where LoadConfig reads its
// variable. Retention of readings and events stays 0 (forever) unless set;
// an audit retention of 0 means the default, never "forever by accident".
func (c *Config) setDefaults() {
	config.FillZero(c, defaults())
}

// defaults is the Config LoadConfig reads from an empty environment (the
// errors about required variables are expected), less the shared logging
// settings, which New does not read.
func defaults() Config {
	d, _ := LoadConfig(func(string) string { return "" })
	d.Common = service.Common{}
	return d
}
