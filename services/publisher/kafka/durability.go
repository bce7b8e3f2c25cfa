package kafka

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/IBM/sarama"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"

	"github.com/biobridge/bridge/pkg/admin"
)

// Durability watches the publisher's topics for settings below what is
// configured (CheckTopics) and reports them three ways: a metric, the
// readiness check and an error log line naming topic and setting.
type Durability struct {
	client sarama.Client
	cfg    Config
	logger *slog.Logger
	gauge  *prometheus.GaugeVec

	mu       sync.Mutex
	problems []TopicProblem
	checked  bool
}

// NewDurability returns a watcher of cfg's topics through client.
func NewDurability(client sarama.Client, cfg Config, reg prometheus.Registerer, logger *slog.Logger) *Durability {
	return &Durability{
		client: client, cfg: cfg, logger: logger.With("component", "topic_durability"),
		gauge: promauto.With(reg).NewGaugeVec(prometheus.GaugeOpts{
			Name: "publisher_kafka_topic_durability_problem",
			Help: "1 for a topic setting below what the publisher is configured with (replication_factor, min.insync.replicas, retention.ms of the dead-letter topic, exists).",
		}, []string{"topic", "setting"}),
	}
}

// Check describes the topics once and records the outcome. A failure to
// describe them keeps the previous outcome (the kafka readiness check
// reports an unreachable cluster).
func (d *Durability) Check() error {
	problems, err := CheckTopics(d.client, d.cfg)
	if err != nil {
		d.logger.Warn("check kafka topic durability failed", "err", err)
		return err
	}
	d.gauge.Reset()
	// Every setting checked is exported, at 0 when it is as configured, so
	// dashboards and alerts see the series before the first problem.
	for _, spec := range TopicSpecs(d.cfg) {
		for _, setting := range []string{"exists", "replication_factor", ConfigMinInsyncReplicas} {
			d.gauge.WithLabelValues(spec.Name, setting).Set(0)
		}
		if spec.Name == TopicDeadLetters {
			d.gauge.WithLabelValues(spec.Name, ConfigRetentionMs).Set(0)
		}
	}
	for _, p := range problems {
		d.gauge.WithLabelValues(p.Topic, p.Setting).Set(1)
		d.logger.Error("kafka topic is less durable than configured: acknowledged events can be lost with one broker",
			"topic", p.Topic, "setting", p.Setting, "have", p.Have, "want", p.Want)
	}
	d.mu.Lock()
	d.problems, d.checked = problems, true
	d.mu.Unlock()
	return nil
}

// Run checks every interval until ctx ends.
func (d *Durability) Run(ctx context.Context, interval time.Duration) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		_ = d.Check()
	}
}

// Ready fails while a topic is below the configured durability, naming
// each topic and setting.
func (d *Durability) Ready(context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if !d.checked {
		return errors.New("kafka topic durability not checked yet")
	}
	if len(d.problems) == 0 {
		return nil
	}
	msgs := make([]string, len(d.problems))
	for i, p := range d.problems {
		msgs[i] = p.String()
	}
	return admin.Public(strings.Join(msgs, "; "))
}
