package server

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/IBM/sarama"

	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/pkg/config"
	"github.com/biobridge/bridge/pkg/service"
)

// Config is the publisher's configuration. Every field names its
// environment variable and what its values mean; each default is written
// once, where LoadConfig reads the variable (docs/configuration.md lists
// them).
type Config struct {
	// TracerProvider makes the service's spans; nil is the global one,
	// which the binary sets up from the OTEL_* variables. Not read from the
	// environment: devstack gives each service its own, so each keeps its
	// service.name in one process.
	TracerProvider trace.TracerProvider
	// GRPCAddr serves PublisherService: PUBLISHER_GRPC_ADDR.
	GRPCAddr string
	// AdminAddr serves /metrics, /healthz, /readyz: PUBLISHER_ADMIN_ADDR.
	AdminAddr string

	// KafkaBrokers are the bootstrap brokers: KAFKA_BROKERS (required,
	// comma-separated host:port list).
	KafkaBrokers []string
	// KafkaVersion is the oldest broker version in the cluster, which
	// selects the protocol versions spoken: KAFKA_VERSION (at
	// least 0.11.0.0 for the idempotent producer).
	KafkaVersion sarama.KafkaVersion
	// KafkaClientID names the client to the brokers: KAFKA_CLIENT_ID.
	KafkaClientID string
	// KafkaTLS encrypts broker connections: KAFKA_TLS. TLS_CA_FILE
	// is the trust root (system roots when empty) and TLS_CERT_FILE with
	// TLS_KEY_FILE, when set, the client certificate.
	KafkaTLS bool
	// TopicPartitions is the partition count of topics created at start:
	// KAFKA_TOPIC_PARTITIONS.
	TopicPartitions int
	// ReplicationFactor of topics created at start, and the least the
	// durability check accepts: KAFKA_REPLICATION_FACTOR (devstack uses 1).
	ReplicationFactor int
	// MinInsyncReplicas is min.insync.replicas of topics created at start,
	// and the least the durability check accepts: KAFKA_MIN_INSYNC_REPLICAS
	// (at most KAFKA_REPLICATION_FACTOR; devstack uses 1).
	MinInsyncReplicas int
	// TopicCheckInterval is how often the topics' durability settings are
	// described again: KAFKA_TOPIC_CHECK_INTERVAL.
	TopicCheckInterval time.Duration
	// CreateTopics creates missing topics at start: KAFKA_CREATE_TOPICS.
	CreateTopics bool
	// MaxMessageBytes is the largest message sent to the event topics;
	// keep it at or below the brokers' message.max.bytes:
	// KAFKA_MAX_MESSAGE_BYTES.
	MaxMessageBytes int
	// DeadLetterMaxMessageBytes is the largest dead letter, and the
	// max.message.bytes of the dead-letter topic when it is created:
	// KAFKA_DLQ_MAX_MESSAGE_BYTES.
	DeadLetterMaxMessageBytes int

	// PersistenceTarget is the persistence service: PERSISTENCE_TARGET.
	PersistenceTarget string
	// ServiceToken is presented to the persistence service: SERVICE_TOKEN
	// (required).
	ServiceToken string
	// ServiceTokens are the callers allowed to call PublisherService:
	// SERVICE_TOKENS (required, "name:token,...").
	ServiceTokens *auth.ServiceTokens
	// ServiceACL is SERVICE_ACL ("caller=pattern|pattern;...", required
	// unless SERVICE_ACL_OPEN=true): the PublisherService methods each
	// caller may call. Nil (open) lets every caller call every method.
	ServiceACL *auth.ACL

	// Holder names this instance in outbox leases: PUBLISH_HOLDER (host name).
	Holder string
	// Workers lease and publish concurrently: PUBLISH_WORKERS.
	Workers int
	// BatchSize is the most entries per lease: PUBLISH_BATCH_SIZE (at most 5000).
	BatchSize int
	// LeaseDuration is how long leased entries stay with this instance:
	// PUBLISH_LEASE_DURATION.
	LeaseDuration time.Duration
	// WaitTimeout is the long-poll wait for new entries: PUBLISH_WAIT_TIMEOUT.
	// 0 turns the relay into a poller sleeping PUBLISH_POLL_INTERVAL between
	// empty leases.
	WaitTimeout  time.Duration
	PollInterval time.Duration
	// MaxAttempts dead-letters an entry after this many failed attempts
	// with errors that are neither transient nor permanent:
	// PUBLISH_MAX_ATTEMPTS. Permanent errors (message too large,
	// invalid record) dead-letter at once; transient ones retry forever.
	MaxAttempts int
	// BackoffInitial and BackoffMax bound the retry backoff:
	// PUBLISH_BACKOFF_INITIAL, PUBLISH_BACKOFF_MAX.
	BackoffInitial time.Duration
	BackoffMax     time.Duration
	// StatsInterval refreshes the backlog gauges and the Kafka connection
	// state: PUBLISH_STATS_INTERVAL.
	StatsInterval time.Duration
	// DeadLetterScanInterval is how long the dead-letter count is cached
	// before the topic is read again: PUBLISH_DLQ_SCAN_INTERVAL.
	DeadLetterScanInterval time.Duration

	// TLS for gRPC (server and persistence client): TLS_CERT_FILE,
	// TLS_KEY_FILE, TLS_CA_FILE (all empty: plaintext, loopback only).
	TLS config.TLSFiles

	// Common holds LOG_FORMAT, LOG_LEVEL and
	// LOG_PSEUDONYM_KEY (required, at least 16 bytes); main builds the
	// logger from it.
	service.Common
}

// LoadConfig reads the configuration through getenv and reports every
// problem at once.
func LoadConfig(getenv func(string) string) (Config, error) {
	l := config.New(getenv)
	c := Config{
		GRPCAddr:                  l.String("PUBLISHER_GRPC_ADDR", ":9104"),
		AdminAddr:                 l.String("PUBLISHER_ADMIN_ADDR", ":9204"),
		KafkaBrokers:              l.List("KAFKA_BROKERS", nil),
		KafkaClientID:             l.String("KAFKA_CLIENT_ID", "biobridge-publisher"),
		KafkaTLS:                  l.Bool("KAFKA_TLS", false),
		TopicPartitions:           l.Int("KAFKA_TOPIC_PARTITIONS", 12, 1, 10000),
		ReplicationFactor:         l.Int("KAFKA_REPLICATION_FACTOR", 3, 1, 32),
		MinInsyncReplicas:         l.Int("KAFKA_MIN_INSYNC_REPLICAS", 2, 1, 32),
		TopicCheckInterval:        l.Duration("KAFKA_TOPIC_CHECK_INTERVAL", time.Minute),
		CreateTopics:              l.Bool("KAFKA_CREATE_TOPICS", true),
		MaxMessageBytes:           l.Int("KAFKA_MAX_MESSAGE_BYTES", 1000000, 1024, 100<<20),
		DeadLetterMaxMessageBytes: l.Int("KAFKA_DLQ_MAX_MESSAGE_BYTES", 8<<20, 1024, 100<<20),
		PersistenceTarget:         l.String("PERSISTENCE_TARGET", "127.0.0.1:9103"),
		ServiceToken:              l.Required("SERVICE_TOKEN"),
		Holder:                    l.String("PUBLISH_HOLDER", ""),
		Workers:                   l.Int("PUBLISH_WORKERS", 2, 1, 64),
		BatchSize:                 l.Int("PUBLISH_BATCH_SIZE", 500, 1, 5000),
		LeaseDuration:             l.Duration("PUBLISH_LEASE_DURATION", 30*time.Second),
		WaitTimeout:               l.Duration("PUBLISH_WAIT_TIMEOUT", 5*time.Second),
		PollInterval:              l.Duration("PUBLISH_POLL_INTERVAL", 100*time.Millisecond),
		MaxAttempts:               l.Int("PUBLISH_MAX_ATTEMPTS", 5, 1, 1000),
		BackoffInitial:            l.Duration("PUBLISH_BACKOFF_INITIAL", 250*time.Millisecond),
		BackoffMax:                l.Duration("PUBLISH_BACKOFF_MAX", 10*time.Second),
		StatsInterval:             l.Duration("PUBLISH_STATS_INTERVAL", 5*time.Second),
		DeadLetterScanInterval:    l.Duration("PUBLISH_DLQ_SCAN_INTERVAL", time.Minute),
		TLS:                       l.TLS(),
		Common:                    service.LoadCommon(l),
	}
	version, err := sarama.ParseKafkaVersion(l.String("KAFKA_VERSION", "3.6.0"))
	l.Check("KAFKA_VERSION", err == nil, "must be a Kafka version such as 3.6.0")
	if err == nil {
		l.Check("KAFKA_VERSION", version.IsAtLeast(sarama.V0_11_0_0), "must be at least 0.11.0 (idempotent producer)")
		c.KafkaVersion = version
	}
	if raw := l.String("SERVICE_TOKENS", ""); raw != "" {
		tokens, err := auth.ParseServiceTokens(raw)
		l.Check("SERVICE_TOKENS", err == nil, fmt.Sprintf("%v", err))
		c.ServiceTokens = tokens
	}
	if acl, err := auth.ParseACL(auth.LoadACL(l)); err == nil {
		c.ServiceACL = acl
	}
	if err := errors.Join(l.Err(), c.Validate()); err != nil {
		return Config{}, err
	}
	return c, nil
}

// Validate checks what is required, the relations between settings and
// their formats beyond their types: the one check of a Config, whether
// LoadConfig read it (and reports its problems with the variables' own) or
// it was built by hand (New checks it).
func (c Config) Validate() error {
	l := config.New(nil)
	l.Check("SERVICE_TOKENS", c.ServiceTokens != nil, "is required (a valid name:token,... list)")
	l.Check("KAFKA_BROKERS", len(c.KafkaBrokers) > 0, "is required (comma-separated host:port list)")
	for _, b := range c.KafkaBrokers {
		if !strings.Contains(b, ":") {
			l.Check("KAFKA_BROKERS", false, fmt.Sprintf("%q is not host:port", b))
		}
	}
	l.Check("KAFKA_MIN_INSYNC_REPLICAS", c.MinInsyncReplicas <= c.ReplicationFactor,
		"must be at most KAFKA_REPLICATION_FACTOR (no write could ever be acknowledged)")
	l.Check("KAFKA_TOPIC_CHECK_INTERVAL", c.TopicCheckInterval > 0, "must be positive")
	l.Check("KAFKA_DLQ_MAX_MESSAGE_BYTES", c.DeadLetterMaxMessageBytes >= c.MaxMessageBytes,
		"must be at least KAFKA_MAX_MESSAGE_BYTES, so a message too large for its topic fits the dead-letter topic")
	l.Check("PUBLISH_LEASE_DURATION", c.LeaseDuration >= 2*time.Second && c.LeaseDuration <= 10*time.Minute, "must be between 2s and 10m")
	l.Check("PUBLISH_WAIT_TIMEOUT", c.WaitTimeout <= time.Minute, "must be at most 1m")
	l.Check("PUBLISH_WAIT_TIMEOUT", c.WaitTimeout < c.LeaseDuration, "must be shorter than PUBLISH_LEASE_DURATION")
	l.Check("PUBLISH_POLL_INTERVAL", c.PollInterval > 0, "must be positive")
	l.Check("PUBLISH_BACKOFF_INITIAL", c.BackoffInitial > 0, "must be positive")
	l.Check("PUBLISH_BACKOFF_MAX", c.BackoffMax >= c.BackoffInitial, "must be at least PUBLISH_BACKOFF_INITIAL")
	l.Check("PUBLISH_STATS_INTERVAL", c.StatsInterval > 0, "must be positive")
	l.Check("PUBLISH_DLQ_SCAN_INTERVAL", c.DeadLetterScanInterval > 0, "must be positive")
	return l.Err()
}
