package testenv

import (
	"context"
	"log/slog"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/pkg/grpcclient"
	"github.com/biobridge/bridge/pkg/service"
	"github.com/biobridge/bridge/pkg/testpg"
	"github.com/biobridge/bridge/services/publisher/kafka"
	"github.com/biobridge/bridge/services/publisher/kafkadev"
	"github.com/biobridge/bridge/services/publisher/server"
)

// Token is the service token the tests use everywhere.
const Token = "test-token"

// Env is a test environment: the persistence service (a child process) on
// its own database and an embedded Kafka broker persisting to a directory, so it can be stopped
// and started again like a real broker.
type Env struct {
	t           testing.TB
	Persistence *Persistence
	// Conn is a connection to the persistence service that presents Token.
	Conn   *grpc.ClientConn
	Writer *Writer
	// Proxy sits between every Kafka client and the broker when
	// Options.StallProxy is set.
	Proxy *StallProxy
	// DatabaseURL is the persistence service's database.
	DatabaseURL string

	brokerCfg kafkadev.Config
	mu        sync.Mutex
	broker    *kafkadev.Broker
}

// Options tune New.
type Options struct {
	// BrokerConfigs are broker-level configs, e.g. "message.max.bytes".
	BrokerConfigs map[string]string
	// StallProxy puts a StallProxy in front of the broker.
	StallProxy bool
	// InMemoryBroker keeps the broker's data in memory only (no data
	// directory): for tests that write gigabytes and never restart it.
	InMemoryBroker bool
}

// New starts an environment cleaned up with t.
func New(t testing.TB, opts Options) *Env {
	t.Helper()
	logger := Logger(t)
	// The persistence service migrates its schema when it starts.
	dbURL := testpg.New(t, "publisher_persistence_empty", nil)
	p := StartPersistence(t, dbURL)
	conn, err := grpc.NewClient(p.Addr, grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(grpcclient.ServiceCredentials(Token)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	e := &Env{
		t:           t,
		Persistence: p,
		Conn:        conn,
		Writer:      NewWriter(conn),
		DatabaseURL: dbURL,
		brokerCfg: kafkadev.Config{
			Addr:          "127.0.0.1:0",
			BrokerConfigs: opts.BrokerConfigs,
			Logger:        logger.With("service", "kfake"),
		},
	}
	if !opts.InMemoryBroker {
		e.brokerCfg.DataDir = t.TempDir()
	}
	if opts.StallProxy {
		e.Proxy = NewStallProxy(t)
		e.brokerCfg.Advertise = e.Proxy.Addr()
	}
	e.StartBroker()
	t.Cleanup(e.StopBroker)
	return e
}

// BrokerAddr is the broker's address (the proxy's, with one); it stays the
// same across restarts.
func (e *Env) BrokerAddr() string {
	if e.Proxy != nil {
		return e.Proxy.Addr()
	}
	return e.brokerCfg.Addr
}

// StartBroker starts the broker (again), on the same address and data
// directory as before.
func (e *Env) StartBroker() {
	e.t.Helper()
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.broker != nil {
		return
	}
	var err error
	// The old listener's port can take a moment to be free again.
	for attempt := 0; attempt < 50; attempt++ {
		if e.broker, err = kafkadev.StartConfig(context.WithoutCancel(e.t.Context()), e.brokerCfg); err == nil {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err != nil {
		e.t.Fatalf("start broker: %v", err)
	}
	e.brokerCfg.Addr = e.broker.Addr()
	if e.Proxy != nil {
		e.Proxy.SetUpstream(e.broker.Addr())
	}
}

// StopBroker stops the broker; its clients see connections refused.
func (e *Env) StopBroker() {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.broker != nil {
		_ = e.broker.Close()
		e.broker = nil
	}
}

// Broker returns the running broker, or nil.
func (e *Env) Broker() *kafkadev.Broker {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.broker
}

// PublisherConfig is a publisher configuration for this environment:
// ports picked by the system, one partition-replica, short retry delays.
func (e *Env) PublisherConfig() server.Config {
	tokens, err := auth.ParseServiceTokens("tests:" + Token)
	if err != nil {
		e.t.Fatal(err)
	}
	return PublisherConfig(e.BrokerAddr(), e.Persistence.Addr, tokens)
}

// PublisherConfig returns a publisher configuration for tests and the
// benchmark.
func PublisherConfig(broker, persistenceAddr string, tokens *auth.ServiceTokens) server.Config {
	return server.Config{
		GRPCAddr:                  "127.0.0.1:0",
		AdminAddr:                 "127.0.0.1:0",
		KafkaBrokers:              []string{broker},
		KafkaVersion:              kafkaVersion,
		KafkaClientID:             "publisher-test",
		TopicPartitions:           6,
		ReplicationFactor:         1,
		MinInsyncReplicas:         1,
		TopicCheckInterval:        time.Second,
		CreateTopics:              true,
		MaxMessageBytes:           1000000,
		DeadLetterMaxMessageBytes: 8 << 20,
		PersistenceTarget:         persistenceAddr,
		ServiceToken:              Token,
		ServiceTokens:             tokens,
		Holder:                    "test",
		Workers:                   2,
		BatchSize:                 500,
		LeaseDuration:             10 * time.Second,
		WaitTimeout:               2 * time.Second,
		PollInterval:              100 * time.Millisecond,
		MaxAttempts:               5,
		BackoffInitial:            100 * time.Millisecond,
		BackoffMax:                2 * time.Second,
		StatsInterval:             500 * time.Millisecond,
		DeadLetterScanInterval:    time.Minute,
		Common:                    service.Common{LogFormat: "text"},
	}
}

// EnsureTopics creates the publisher's topics as the publisher would, so
// a consumer can attach before the first publisher starts.
func (e *Env) EnsureTopics() {
	e.t.Helper()
	cfg := e.PublisherConfig()
	kcfg := kafka.Config{
		Version:                   cfg.KafkaVersion,
		DeadLetterMaxMessageBytes: cfg.DeadLetterMaxMessageBytes,
		Partitions:                int32(cfg.TopicPartitions),
		ReplicationFactor:         int16(cfg.ReplicationFactor),
		MinInsyncReplicas:         cfg.MinInsyncReplicas,
	}
	client, err := sarama.NewClient(cfg.KafkaBrokers, kafka.SaramaConfig(kcfg, cfg.MaxMessageBytes))
	if err != nil {
		e.t.Fatal(err)
	}
	defer func() { _ = client.Close() }()
	if err := kafka.EnsureTopics(e.t.Context(), client, kafka.TopicSpecs(kcfg), Logger(e.t)); err != nil {
		e.t.Fatal(err)
	}
}

// Publisher is a running publisher.
type Publisher struct {
	*server.Server
	cancel context.CancelFunc
	done   chan error
}

// StartPublisher starts a publisher with cfg; Stop (or the test's end)
// stops it.
func (e *Env) StartPublisher(cfg server.Config) *Publisher {
	e.t.Helper()
	p, err := StartPublisher(e.t.Context(), cfg, Logger(e.t).With("service", "publisher"))
	if err != nil {
		e.t.Fatal(err)
	}
	e.t.Cleanup(func() {
		if err := p.Stop(); err != nil {
			e.t.Errorf("stop publisher: %v", err)
		}
	})
	return p
}

// StartPublisher starts a publisher with cfg.
func StartPublisher(ctx context.Context, cfg server.Config, logger *slog.Logger) (*Publisher, error) {
	srv, err := server.New(ctx, cfg, logger)
	if err != nil {
		return nil, err
	}
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	p := &Publisher{Server: srv, cancel: cancel, done: make(chan error, 1)}
	go func() { p.done <- srv.Serve(sctx) }()
	return p, nil
}

// Stop stops the publisher and waits for it; a second Stop returns nil.
func (p *Publisher) Stop() error {
	p.cancel()
	err, ok := <-p.done
	if !ok {
		return nil
	}
	close(p.done)
	return err
}

// Logger returns a logger for t: warnings and errors to the test log, or
// everything to stderr with TEST_LOG=debug.
func Logger(t testing.TB) *slog.Logger {
	level := slog.LevelWarn
	if os.Getenv("TEST_LOG") == "debug" {
		level = slog.LevelDebug
	}
	w := &testWriter{t: t}
	// Background goroutines may log after the test ended, when t.Log
	// panics; this cleanup (registered early, so it runs late) mutes them.
	t.Cleanup(func() {
		w.mu.Lock()
		w.done = true
		w.mu.Unlock()
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

type testWriter struct {
	t    testing.TB
	mu   sync.Mutex
	done bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(string(p))
	}
	return len(p), nil
}
