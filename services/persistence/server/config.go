package server

import (
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/jackc/pgx/v5"
	"github.com/redis/go-redis/v9"

	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/pkg/config"
	"github.com/biobridge/bridge/pkg/service"
)

// Config is the persistence service's configuration. Zero fields get the
// defaults below in New, so tests can build a Config by hand with only
// the addresses, URLs and tokens.
type Config struct {
	// TracerProvider makes the service's spans; nil is the global one,
	// which the binary sets up from the OTEL_* variables. Not read from the
	// environment: devstack gives each service its own, so each keeps its
	// service.name in one process.
	TracerProvider trace.TracerProvider
	// GRPCAddr is PERSISTENCE_GRPC_ADDR (default ":9103"; ":0" picks a port).
	GRPCAddr string
	// AdminAddr is PERSISTENCE_ADMIN_ADDR (default ":9203"): /metrics,
	// /healthz, /readyz.
	AdminAddr string
	// PostgresURL is POSTGRES_URL (required). Pool sizes may be tuned with
	// pool_max_conns in the URL (default 20).
	PostgresURL string
	// RedisURL is REDIS_URL (required by LoadConfig). In a hand-built
	// Config, empty disables the latest cache: GetLatest reads PostgreSQL
	// and WatchLatest is unavailable.
	RedisURL string
	// RedisKeyPrefix is REDIS_KEY_PREFIX (default ""), put in front of
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

	// GroupCommitWindow is GROUP_COMMIT_WINDOW (default 2ms): how long a
	// write waits for others to share its transaction.
	GroupCommitWindow time.Duration
	// GroupCommitMaxEvents is GROUP_COMMIT_MAX_EVENTS (default 1000): a
	// shared transaction closes at this many events.
	GroupCommitMaxEvents int
	// GroupCommitConcurrency is GROUP_COMMIT_CONCURRENCY (default 4):
	// write transactions in flight at once.
	GroupCommitConcurrency int
	// MaxConcurrentRPCs is PERSISTENCE_MAX_CONCURRENT_RPCS (default 256):
	// concurrent WriteEvents, DeleteRecords, GetLatest and QueryReadings
	// calls; past it callers wait up to 1s, then get RESOURCE_EXHAUSTED.
	MaxConcurrentRPCs int

	// AuditBuffer is AUDIT_BUFFER (default 10000): audit entries that may
	// wait for the batch writer before new ones are dropped (and counted).
	AuditBuffer int
	// AuditFlushInterval is AUDIT_FLUSH_INTERVAL (default 200ms).
	AuditFlushInterval time.Duration

	// LatestCacheTTL is LATEST_CACHE_TTL (default 24h): a cached snapshot
	// is rebuilt from PostgreSQL at least this often.
	LatestCacheTTL time.Duration
	// WatchResyncInterval is WATCH_RESYNC_INTERVAL (default 30s): how often
	// an open WatchLatest stream re-reads the values.
	WatchResyncInterval time.Duration
	// WatchMaxStreams is WATCH_MAX_STREAMS (default 1000, 1..100000): open
	// WatchLatest streams per replica. Each holds a Redis subscription
	// connection, so the cap protects Redis's client limit; past it a new
	// watch gets RESOURCE_EXHAUSTED with Retry-After.
	WatchMaxStreams int
	// OutboxPollInterval is OUTBOX_POLL_INTERVAL (default 1s): the longest
	// a long-polling LeaseOutbox sleeps without a notification (commits
	// wake it at once; this covers expired leases and retry delays).
	OutboxPollInterval time.Duration

	// PartitionMonthsAhead is PARTITION_MONTHS_AHEAD (default 3): monthly
	// partitions created in advance.
	PartitionMonthsAhead int
	// MaintenanceInterval is PARTITION_MAINTENANCE_INTERVAL (default 1h).
	MaintenanceInterval time.Duration
	// RetentionReadings is RETENTION_READINGS (default 0: keep forever):
	// monthly readings partitions whose whole month is older than this are
	// dropped by the maintenance loop. Latest values are never dropped.
	RetentionReadings time.Duration
	// RetentionEvents is RETENTION_EVENTS (default 0: keep forever): the
	// same for the record history (events).
	RetentionEvents time.Duration
	// RetentionAudit is RETENTION_AUDIT (default 52596h, six years of 365.25 days): the
	// same for the audit log.
	RetentionAudit time.Duration
	// GracePeriod is SHUTDOWN_GRACE_PERIOD (default 10s): how long
	// in-flight calls may finish at shutdown.
	GracePeriod time.Duration

	// Common holds LOG_FORMAT, LOG_LEVEL and LOG_PSEUDONYM_KEY (main builds
	// the logger from it; New does not read it).
	Common service.Common
}

// Defaults.
const (
	DefaultGRPCAddr               = ":9103"
	DefaultAdminAddr              = ":9203"
	DefaultGroupCommitWindow      = 2 * time.Millisecond
	DefaultGroupCommitMaxEvents   = 1000
	DefaultGroupCommitConcurrency = 4
	DefaultMaxConcurrentRPCs      = 256
	DefaultAuditBuffer            = 10_000
	DefaultAuditFlushInterval     = 200 * time.Millisecond
	DefaultLatestCacheTTL         = 24 * time.Hour
	DefaultWatchResyncInterval    = 30 * time.Second
	DefaultWatchMaxStreams        = 1000
	DefaultOutboxPollInterval     = time.Second
	DefaultPartitionMonthsAhead   = 3
	DefaultMaintenanceInterval    = time.Hour
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
		GRPCAddr:               l.String("PERSISTENCE_GRPC_ADDR", DefaultGRPCAddr),
		AdminAddr:              l.String("PERSISTENCE_ADMIN_ADDR", DefaultAdminAddr),
		PostgresURL:            l.Required("POSTGRES_URL"),
		RedisURL:               l.Required("REDIS_URL"),
		RedisKeyPrefix:         l.String("REDIS_KEY_PREFIX", ""),
		ServiceTokens:          l.Required("SERVICE_TOKENS"),
		ServiceACL:             auth.LoadACL(l),
		TLS:                    l.TLS(),
		GroupCommitWindow:      l.Duration("GROUP_COMMIT_WINDOW", DefaultGroupCommitWindow),
		GroupCommitMaxEvents:   l.Int("GROUP_COMMIT_MAX_EVENTS", DefaultGroupCommitMaxEvents, 1, 100_000),
		GroupCommitConcurrency: l.Int("GROUP_COMMIT_CONCURRENCY", DefaultGroupCommitConcurrency, 1, 64),
		MaxConcurrentRPCs:      l.Int("PERSISTENCE_MAX_CONCURRENT_RPCS", DefaultMaxConcurrentRPCs, 1, 100_000),
		AuditBuffer:            l.Int("AUDIT_BUFFER", DefaultAuditBuffer, 100, 10_000_000),
		AuditFlushInterval:     l.Duration("AUDIT_FLUSH_INTERVAL", DefaultAuditFlushInterval),
		LatestCacheTTL:         l.Duration("LATEST_CACHE_TTL", DefaultLatestCacheTTL),
		WatchResyncInterval:    l.Duration("WATCH_RESYNC_INTERVAL", DefaultWatchResyncInterval),
		WatchMaxStreams:        l.Int("WATCH_MAX_STREAMS", DefaultWatchMaxStreams, 1, 100_000),
		OutboxPollInterval:     l.Duration("OUTBOX_POLL_INTERVAL", DefaultOutboxPollInterval),
		PartitionMonthsAhead:   l.Int("PARTITION_MONTHS_AHEAD", DefaultPartitionMonthsAhead, 1, 36),
		MaintenanceInterval:    l.Duration("PARTITION_MAINTENANCE_INTERVAL", DefaultMaintenanceInterval),
		RetentionReadings:      l.Duration("RETENTION_READINGS", 0),
		RetentionEvents:        l.Duration("RETENTION_EVENTS", 0),
		RetentionAudit:         l.Duration("RETENTION_AUDIT", DefaultRetentionAudit),
		GracePeriod:            l.Duration("SHUTDOWN_GRACE_PERIOD", DefaultGracePeriod),
	}
	c.Common = service.LoadCommon(l)
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
	}
	l.Check("GROUP_COMMIT_WINDOW", c.GroupCommitWindow <= time.Second, "must be at most 1s")
	l.Check("AUDIT_FLUSH_INTERVAL", c.AuditFlushInterval >= time.Millisecond && c.AuditFlushInterval <= time.Minute, "must be between 1ms and 1m")
	l.Check("LATEST_CACHE_TTL", c.LatestCacheTTL >= time.Minute, "must be at least 1m")
	l.Check("WATCH_RESYNC_INTERVAL", c.WatchResyncInterval >= 100*time.Millisecond, "must be at least 100ms")
	l.Check("OUTBOX_POLL_INTERVAL", c.OutboxPollInterval >= 10*time.Millisecond && c.OutboxPollInterval <= time.Minute, "must be between 10ms and 1m")
	l.Check("PARTITION_MAINTENANCE_INTERVAL", c.MaintenanceInterval >= time.Minute, "must be at least 1m")
	l.Check("RETENTION_READINGS", c.RetentionReadings == 0 || c.RetentionReadings >= MinRetention, "must be 0 (keep forever) or at least 744h (31 days)")
	l.Check("RETENTION_EVENTS", c.RetentionEvents == 0 || c.RetentionEvents >= MinRetention, "must be 0 (keep forever) or at least 744h (31 days)")
	l.Check("RETENTION_AUDIT", c.RetentionAudit >= MinRetention, "must be at least 744h (31 days); the default is six years")
	return c, l.Err()
}

func (c *Config) setDefaults() {
	def := func(v *time.Duration, d time.Duration) {
		if *v <= 0 {
			*v = d
		}
	}
	defInt := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	if c.GRPCAddr == "" {
		c.GRPCAddr = DefaultGRPCAddr
	}
	if c.AdminAddr == "" {
		c.AdminAddr = DefaultAdminAddr
	}
	def(&c.GroupCommitWindow, DefaultGroupCommitWindow)
	defInt(&c.GroupCommitMaxEvents, DefaultGroupCommitMaxEvents)
	defInt(&c.GroupCommitConcurrency, DefaultGroupCommitConcurrency)
	defInt(&c.MaxConcurrentRPCs, DefaultMaxConcurrentRPCs)
	defInt(&c.AuditBuffer, DefaultAuditBuffer)
	def(&c.AuditFlushInterval, DefaultAuditFlushInterval)
	def(&c.LatestCacheTTL, DefaultLatestCacheTTL)
	def(&c.WatchResyncInterval, DefaultWatchResyncInterval)
	defInt(&c.WatchMaxStreams, DefaultWatchMaxStreams)
	def(&c.OutboxPollInterval, DefaultOutboxPollInterval)
	defInt(&c.PartitionMonthsAhead, DefaultPartitionMonthsAhead)
	def(&c.MaintenanceInterval, DefaultMaintenanceInterval)
	// Retention of readings and events stays 0 (forever) unless set; an
	// audit retention of 0 means the default, never "forever by accident".
	def(&c.RetentionAudit, DefaultRetentionAudit)
	def(&c.GracePeriod, DefaultGracePeriod)
}
