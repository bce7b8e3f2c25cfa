package server_test

import (
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/services/publisher/kafka"
	"github.com/biobridge/bridge/services/publisher/testenv"
)

func readyz(t *testing.T, adminAddr string) (int, string) {
	t.Helper()
	resp, err := http.Get("http://" + adminAddr + "/readyz")
	require.NoError(t, err)
	defer func() { _ = resp.Body.Close() }()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp.StatusCode, string(body)
}

func topicConfig(t *testing.T, admin sarama.ClusterAdmin, topic, name string) sarama.ConfigEntry {
	t.Helper()
	entries, err := admin.DescribeConfig(sarama.ConfigResource{Type: sarama.TopicResource, Name: topic, ConfigNames: []string{name}})
	require.NoError(t, err)
	for _, e := range entries {
		if e.Name == name {
			return e
		}
	}
	t.Fatalf("topic %s has no config %s", topic, name)
	return sarama.ConfigEntry{}
}

// TestTopicsCreatedWithConfiguredSettings: the publisher creates its
// topics with the configured partitions and min.insync.replicas set on the
// topic itself (not inherited from the broker), and a dead-letter topic
// that never expires letters; readiness passes.
func TestTopicsCreatedWithConfiguredSettings(t *testing.T) {
	t.Parallel()
	env := testenv.New(t, testenv.Options{})
	cfg := env.PublisherConfig()
	cfg.TopicPartitions = 4
	pub := env.StartPublisher(cfg)

	admin, err := sarama.NewClusterAdmin([]string{env.BrokerAddr()}, kafka.SaramaConfig(kafka.Config{Version: cfg.KafkaVersion}, 1<<20))
	require.NoError(t, err)
	t.Cleanup(func() { _ = admin.Close() })
	metas, err := admin.DescribeTopics([]string{kafka.TopicEvents, kafka.TopicConnections, kafka.TopicDeadLetters})
	require.NoError(t, err)
	for _, m := range metas {
		require.Len(t, m.Partitions, 4, m.Name)
		isr := topicConfig(t, admin, m.Name, kafka.ConfigMinInsyncReplicas)
		require.Equal(t, "1", isr.Value, m.Name)
		require.Equal(t, sarama.SourceTopic, isr.Source, "%s: min.insync.replicas set on the topic", m.Name)
	}
	retention := topicConfig(t, admin, kafka.TopicDeadLetters, kafka.ConfigRetentionMs)
	require.Equal(t, "-1", retention.Value)
	require.Equal(t, sarama.SourceTopic, retention.Source)
	require.NotEqual(t, "-1", topicConfig(t, admin, kafka.TopicEvents, kafka.ConfigRetentionMs).Value, "only the dead-letter topic keeps everything")

	code, body := readyz(t, pub.AdminAddr())
	require.Equal(t, http.StatusOK, code, body)

	// The durability series exist at 0 while nothing is wrong, so the
	// alert on them is evaluated from the start.
	resp, err := http.Get("http://" + pub.AdminAddr() + "/metrics")
	require.NoError(t, err)
	metrics, err := io.ReadAll(resp.Body)
	require.NoError(t, resp.Body.Close())
	require.NoError(t, err)
	require.Contains(t, string(metrics), `publisher_kafka_topic_durability_problem{setting="min.insync.replicas",topic="biometrics.events.v1"} 0`)
	require.Contains(t, string(metrics), `publisher_kafka_topic_durability_problem{setting="retention.ms",topic="biometrics.events.v1.dlq"} 0`)
}

// TestUnderReplicatedTopicFailsReadiness: topics that exist with less
// replication and a lower min.insync.replicas than the publisher is
// configured with make readiness fail with a message naming the topic and
// the setting, and show in the metric; the publisher keeps running.
func TestUnderReplicatedTopicFailsReadiness(t *testing.T) {
	t.Parallel()
	env := testenv.New(t, testenv.Options{})
	env.EnsureTopics() // replication 1, min.insync.replicas 1
	cfg := env.PublisherConfig()
	cfg.ReplicationFactor, cfg.MinInsyncReplicas = 3, 2
	pub := env.StartPublisher(cfg)

	code, body := readyz(t, pub.AdminAddr())
	require.Equal(t, http.StatusServiceUnavailable, code)
	require.Contains(t, body, "kafka_topics")
	require.Contains(t, body, "topic biometrics.events.v1: replication_factor is 1, want 3")
	require.Contains(t, body, "topic biometrics.events.v1: min.insync.replicas is 1, want at least 2")
	require.Contains(t, body, "topic biometrics.events.v1.dlq: min.insync.replicas is 1, want at least 2")

	resp, err := http.Get("http://" + pub.AdminAddr() + "/metrics")
	require.NoError(t, err)
	metrics, err := io.ReadAll(resp.Body)
	require.NoError(t, resp.Body.Close())
	require.NoError(t, err)
	require.Contains(t, string(metrics), `publisher_kafka_topic_durability_problem{setting="min.insync.replicas",topic="biometrics.events.v1"} 1`)

	// Events still flow: the check reports, it does not stop publishing.
	c := collect(t, env, kafka.TopicEvents)
	users := testenv.Users("durable", 5)
	require.NoError(t, env.Writer.WriteRound(t.Context(), users, len(users)))
	require.Eventually(t, func() bool { return c.Distinct() == len(users) }, 30*time.Second, 20*time.Millisecond)
}
