package server_test

import (
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/services/publisher/server"
)

func env(vars map[string]string) func(string) string {
	return func(k string) string { return vars[k] }
}

func validEnv() map[string]string {
	return map[string]string{
		"KAFKA_BROKERS":     "k1:9092, k2:9092",
		"SERVICE_TOKEN":     "secret",
		"SERVICE_TOKENS":    "ops:abc,gateway:def",
		"SERVICE_ACL":       "ops=/biobridge.publisher.v1.PublisherService/*",
		"LOG_PSEUDONYM_KEY": "0123456789abcdef",
	}
}

func TestLoadConfigDefaults(t *testing.T) {
	t.Parallel()
	cfg, err := server.LoadConfig(env(validEnv()))
	require.NoError(t, err)
	require.Equal(t, []string{"k1:9092", "k2:9092"}, cfg.KafkaBrokers)
	require.Equal(t, ":9104", cfg.GRPCAddr)
	require.Equal(t, ":9204", cfg.AdminAddr)
	require.Equal(t, "127.0.0.1:9103", cfg.PersistenceTarget)
	require.Equal(t, sarama.V3_6_0_0, cfg.KafkaVersion)
	require.Equal(t, 12, cfg.TopicPartitions)
	require.Equal(t, 3, cfg.ReplicationFactor)
	require.True(t, cfg.CreateTopics)
	require.Equal(t, 5, cfg.MaxAttempts)
	require.Equal(t, 500, cfg.BatchSize)
	require.Equal(t, 30*time.Second, cfg.LeaseDuration)
	require.Equal(t, 5*time.Second, cfg.WaitTimeout)
	require.Equal(t, 1000000, cfg.MaxMessageBytes)
	require.Equal(t, 8<<20, cfg.DeadLetterMaxMessageBytes)
	require.Equal(t, []string{"ops", "gateway"}, cfg.ServiceTokens.Names())
	require.True(t, cfg.ServiceACL.Allowed("ops", "/biobridge.publisher.v1.PublisherService/ReplayDeadLetters"))
	require.False(t, cfg.ServiceACL.Allowed("gateway", "/biobridge.publisher.v1.PublisherService/GetStatus"))

	// Without SERVICE_ACL the start is refused, unless development says
	// explicitly that every caller may call every method.
	vars := validEnv()
	delete(vars, "SERVICE_ACL")
	_, err = server.LoadConfig(env(vars))
	require.ErrorContains(t, err, "SERVICE_ACL: is required")
	vars["SERVICE_ACL_OPEN"] = "true"
	cfg, err = server.LoadConfig(env(vars))
	require.NoError(t, err)
	require.False(t, cfg.ServiceACL.Enforced())
}

func TestLoadConfigReportsEveryProblem(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		set  map[string]string
		want []string
	}{
		{
			name: "nothing set",
			set:  map[string]string{"KAFKA_BROKERS": "", "SERVICE_TOKEN": "", "SERVICE_TOKENS": "", "LOG_PSEUDONYM_KEY": ""},
			want: []string{"KAFKA_BROKERS", "SERVICE_TOKEN:", "SERVICE_TOKENS", "LOG_PSEUDONYM_KEY"},
		},
		{
			name: "bad values",
			set: map[string]string{
				"KAFKA_BROKERS":          "no-port",
				"KAFKA_VERSION":          "0.10.2.0",
				"PUBLISH_MAX_ATTEMPTS":   "0",
				"PUBLISH_BATCH_SIZE":     "6000",
				"PUBLISH_LEASE_DURATION": "1s",
				"KAFKA_TOPIC_PARTITIONS": "x",
				"SERVICE_TOKENS":         "nocolon",
				"SERVICE_ACL":            "operator=GetStatus",
				"LOG_PSEUDONYM_KEY":      "short",
			},
			want: []string{"KAFKA_BROKERS", "KAFKA_VERSION", "PUBLISH_MAX_ATTEMPTS", "PUBLISH_BATCH_SIZE",
				"PUBLISH_LEASE_DURATION", "KAFKA_TOPIC_PARTITIONS", "SERVICE_TOKENS", "SERVICE_ACL", "LOG_PSEUDONYM_KEY"},
		},
		{
			name: "inconsistent limits",
			set: map[string]string{
				"KAFKA_MAX_MESSAGE_BYTES":     "2000000",
				"KAFKA_DLQ_MAX_MESSAGE_BYTES": "1000000",
				"PUBLISH_WAIT_TIMEOUT":        "40s",
				"PUBLISH_BACKOFF_INITIAL":     "5s",
				"PUBLISH_BACKOFF_MAX":         "1s",
			},
			want: []string{"KAFKA_DLQ_MAX_MESSAGE_BYTES", "PUBLISH_WAIT_TIMEOUT", "PUBLISH_BACKOFF_MAX"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			vars := validEnv()
			for k, v := range tt.set {
				vars[k] = v
			}
			_, err := server.LoadConfig(env(vars))
			require.Error(t, err)
			for _, name := range tt.want {
				require.Contains(t, err.Error(), name)
			}
			require.NotContains(t, err.Error(), "secret", "values of secrets are never echoed")
		})
	}
}
