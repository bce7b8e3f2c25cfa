// Package kafka is the publisher's adapter to Kafka, built on IBM/sarama: the
// producer configuration the contract demands (idempotent, acks=all, one
// request in flight), topic creation, the CloudEvents binary-mode message
// layout, the dead-letter message layout and the classification of produce
// errors into transient, permanent and unknown.
package kafka

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/IBM/sarama"

	"github.com/biobridge/bridge/pkg/topics"
)

// Topics of the Kafka contract, named once in pkg/topics.
const (
	TopicEvents      = topics.Events
	TopicConnections = topics.Connections
	TopicDeadLetters = topics.EventsDeadLetters
)

// Config configures the connection to the brokers.
type Config struct {
	// Brokers are the bootstrap addresses.
	Brokers []string
	// Version is the lowest broker version in the cluster; it selects the
	// protocol versions sarama speaks (idempotence needs >= 0.11).
	Version sarama.KafkaVersion
	// ClientID names the client in broker logs and quotas.
	ClientID string
	// TLS, when not nil, encrypts the broker connections.
	TLS *tls.Config
	// MaxMessageBytes is the largest message the producer sends to the
	// event topics. Keep it at or below the brokers' message.max.bytes:
	// sarama also uses it as the size limit of a partition's record batch.
	MaxMessageBytes int
	// DeadLetterMaxMessageBytes is the largest message sent to the
	// dead-letter topic, which is created with that max.message.bytes so
	// a message too large for the event topic still fits.
	DeadLetterMaxMessageBytes int
	// Partitions and ReplicationFactor apply to topics created at start.
	Partitions        int32
	ReplicationFactor int16
	// MinInsyncReplicas is the min.insync.replicas of topics created at
	// start, and the least the durability check accepts on existing ones:
	// with acks=all, a write succeeds only once this many replicas have it.
	MinInsyncReplicas int
	// CreateTopics creates missing topics at start.
	CreateTopics bool
	// SendTimeout bounds one producer call, retries and metadata look-ups
	// included (default 10s): SaramaConfig derives every network timeout
	// and the retry count from it, so SendBound of the result never
	// exceeds it. The relay keeps it well inside its outbox lease.
	SendTimeout time.Duration
}

// DefaultSendTimeout is Config.SendTimeout's default.
const DefaultSendTimeout = 10 * time.Second

// sendRetries is how often sarama retries a produce on its own (a leader
// move, a dropped connection); longer troubles come back as errors and the
// outbox keeps the entries.
const sendRetries = 2

// Conn holds the clients and producers of one publisher instance. Two
// clients exist because sarama's message size limit is per client: the
// dead-letter producer must accept messages the event producer refuses.
type Conn struct {
	Client           sarama.Client
	Producer         sarama.SyncProducer
	DeadLetterClient sarama.Client
	DeadLetter       sarama.SyncProducer
	// DeadLetterReader reads the dead-letter topic holding few records at
	// a time (ReaderConfig).
	DeadLetterReader sarama.Client
}

// ReaderConfig is the configuration of a client that reads topics whose
// records may each be as large as maxMessageBytes, holding as few of them
// in memory as sarama allows: a fetch asks for about one large record per
// partition (growing up to what the largest needs) and at most two
// records wait in the consumer's channel.
func ReaderConfig(cfg Config, maxMessageBytes int) *sarama.Config {
	c := SaramaConfig(cfg, maxMessageBytes)
	c.ChannelBufferSize = 2
	c.Consumer.Fetch.Min = 1
	c.Consumer.Fetch.Default = 1 << 20
	c.Consumer.Fetch.Max = int32(maxMessageBytes + recordBatchOverhead)
	return c
}

// SaramaConfig returns the producer configuration the contract requires,
// with maxMessageBytes as the message (and record batch) size limit.
func SaramaConfig(cfg Config, maxMessageBytes int) *sarama.Config {
	c := sarama.NewConfig()
	c.ClientID = cfg.ClientID
	c.Version = cfg.Version
	if cfg.TLS != nil {
		c.Net.TLS.Enable = true
		c.Net.TLS.Config = cfg.TLS
	}
	// Idempotence needs exactly one request in flight per broker; it is
	// also what keeps a partition's batches in order across retries.
	c.Net.MaxOpenRequests = 1
	// Every wait of a send comes out of SendTimeout: a send must have
	// its outcome while the relay still holds the outbox lease, or
	// another holder could publish the same entries and this send land
	// after them. Per attempt: dial 20%, write 30%, read 50%; between
	// attempts a backoff and a bounded metadata refresh.
	budget := cfg.SendTimeout
	if budget <= 0 {
		budget = DefaultSendTimeout
	}
	backoff := budget / 50
	meta := budget / 10
	attempt := (budget - sendRetries*(backoff+meta)) / (sendRetries + 1)
	c.Net.DialTimeout = attempt / 5
	c.Net.WriteTimeout = attempt * 3 / 10
	c.Net.ReadTimeout = attempt - c.Net.DialTimeout - c.Net.WriteTimeout
	c.Metadata.Retry.Max = 1
	c.Metadata.Retry.Backoff = backoff
	c.Metadata.Timeout = meta
	c.Metadata.RefreshFrequency = time.Minute
	// Topics come from CreateTopics with the configured partitions and
	// replication, never from a broker default triggered by a metadata call.
	c.Metadata.AllowAutoTopicCreation = false
	c.Producer.Idempotent = true
	c.Producer.RequiredAcks = sarama.WaitForAll
	// The broker's wait for the in-sync replicas must end before our read
	// does, so a slow replica gives a clear timeout error, not a cut
	// connection.
	c.Producer.Timeout = c.Net.ReadTimeout / 2
	c.Producer.Retry.Max = sendRetries
	c.Producer.Retry.Backoff = backoff
	c.Producer.Return.Successes = true
	c.Producer.Return.Errors = true
	c.Producer.MaxMessageBytes = maxMessageBytes
	c.Producer.Partitioner = sarama.NewHashPartitioner
	c.Consumer.Return.Errors = true
	// The publisher consumes only to read the dead-letter topic up to its
	// end; a short fetch wait keeps closing the reader from waiting on an
	// idle long-poll.
	c.Consumer.MaxWaitTime = 100 * time.Millisecond
	c.Admin.Timeout = 10 * time.Second
	return c
}

// SendBound is the longest a producer call with configuration c can take
// before it returns: every attempt may dial, write and wait for its
// response, and before each retry sarama backs off and may refresh
// metadata (bounded by Metadata.Timeout).
func SendBound(c *sarama.Config) time.Duration {
	attempts := time.Duration(c.Producer.Retry.Max + 1)
	perAttempt := c.Net.DialTimeout + c.Net.WriteTimeout + c.Net.ReadTimeout
	between := c.Producer.Retry.Backoff + c.Metadata.Timeout
	return attempts*perAttempt + time.Duration(c.Producer.Retry.Max)*between
}

// Connect connects to the brokers, creates missing topics when configured
// to and starts the producers. It fails when no broker answers.
func Connect(ctx context.Context, cfg Config, logger *slog.Logger) (*Conn, error) {
	if len(cfg.Brokers) == 0 {
		return nil, errors.New("connect kafka: no brokers")
	}
	client, err := sarama.NewClient(cfg.Brokers, SaramaConfig(cfg, cfg.MaxMessageBytes))
	if err != nil {
		return nil, fmt.Errorf("connect kafka: %w", err)
	}
	conn := &Conn{Client: client}
	ok := false
	defer func() {
		if !ok {
			_ = conn.Close()
		}
	}()
	if cfg.CreateTopics {
		if err := EnsureTopics(ctx, client, TopicSpecs(cfg), logger); err != nil {
			return nil, err
		}
	}
	warnMessageLimit(client, cfg, logger)
	if conn.Producer, err = sarama.NewSyncProducerFromClient(client); err != nil {
		return nil, fmt.Errorf("start kafka producer: %w", err)
	}
	if conn.DeadLetterClient, err = sarama.NewClient(cfg.Brokers, SaramaConfig(cfg, cfg.DeadLetterMaxMessageBytes)); err != nil {
		return nil, fmt.Errorf("connect kafka dead-letter client: %w", err)
	}
	if conn.DeadLetter, err = sarama.NewSyncProducerFromClient(conn.DeadLetterClient); err != nil {
		return nil, fmt.Errorf("start kafka dead-letter producer: %w", err)
	}
	if conn.DeadLetterReader, err = sarama.NewClient(cfg.Brokers, ReaderConfig(cfg, cfg.DeadLetterMaxMessageBytes)); err != nil {
		return nil, fmt.Errorf("connect kafka dead-letter reader: %w", err)
	}
	ok = true
	return conn, nil
}

// warnMessageLimit warns when the event topic accepts smaller batches than
// the producer builds: the broker would then refuse whole batches of small
// messages, and the relay would have to send each one alone to tell them
// from a message that is really too large.
func warnMessageLimit(client sarama.Client, cfg Config, logger *slog.Logger) {
	admin, err := sarama.NewClusterAdminFromClient(client)
	if err != nil {
		return
	}
	entries, err := admin.DescribeConfig(sarama.ConfigResource{Type: sarama.TopicResource, Name: TopicEvents})
	if err != nil {
		logger.Debug("describe kafka topic config failed", "topic", TopicEvents, "err", err)
		return
	}
	for _, e := range entries {
		if e.Name != "max.message.bytes" {
			continue
		}
		if limit, err := strconv.Atoi(e.Value); err == nil && limit < cfg.MaxMessageBytes {
			logger.Warn("KAFKA_MAX_MESSAGE_BYTES exceeds the topic's max.message.bytes; lower it to the topic's limit",
				"topic", TopicEvents, "max_message_bytes", cfg.MaxMessageBytes, "topic_limit", limit)
		}
	}
}

// Close flushes and closes the producers, then the clients.
func (c *Conn) Close() error {
	var errs []error
	if c.Producer != nil {
		if err := c.Producer.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close kafka producer: %w", err))
		}
	}
	if c.DeadLetter != nil {
		if err := c.DeadLetter.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close kafka dead-letter producer: %w", err))
		}
	}
	// A producer built from a client leaves the client open.
	for _, cl := range []sarama.Client{c.Client, c.DeadLetterClient, c.DeadLetterReader} {
		if cl != nil && !cl.Closed() {
			if err := cl.Close(); err != nil {
				errs = append(errs, fmt.Errorf("close kafka client: %w", err))
			}
		}
	}
	return errors.Join(errs...)
}

// Ping refreshes the metadata of the event topic: it succeeds only when a
// broker answers, which is what "connected" means for the status.
func (c *Conn) Ping() error {
	if err := c.Client.RefreshMetadata(TopicEvents); err != nil {
		return fmt.Errorf("kafka metadata: %w", err)
	}
	return nil
}
