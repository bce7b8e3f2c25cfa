package kafkadev_test

import (
	"context"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/services/publisher/kafkadev"
)

func saramaConfig() *sarama.Config {
	c := sarama.NewConfig()
	c.Version = sarama.V3_6_0_0
	c.Producer.Return.Successes = true
	c.Producer.RequiredAcks = sarama.WaitForAll
	c.Metadata.Retry.Backoff = 50 * time.Millisecond
	return c
}

func createTopic(t *testing.T, addr, topic string) {
	t.Helper()
	admin, err := sarama.NewClusterAdmin([]string{addr}, saramaConfig())
	require.NoError(t, err)
	defer func() { require.NoError(t, admin.Close()) }()
	require.NoError(t, admin.CreateTopic(topic, &sarama.TopicDetail{NumPartitions: 1, ReplicationFactor: 1}, false))
}

func produce(t *testing.T, addr, topic, value string) {
	t.Helper()
	p, err := sarama.NewSyncProducer([]string{addr}, saramaConfig())
	require.NoError(t, err)
	defer func() { require.NoError(t, p.Close()) }()
	_, _, err = p.SendMessage(&sarama.ProducerMessage{Topic: topic, Value: sarama.StringEncoder(value)})
	require.NoError(t, err)
}

func consumeAll(t *testing.T, addr, topic string, want int) []string {
	t.Helper()
	c, err := sarama.NewConsumer([]string{addr}, saramaConfig())
	require.NoError(t, err)
	defer func() { require.NoError(t, c.Close()) }()
	pc, err := c.ConsumePartition(topic, 0, sarama.OffsetOldest)
	require.NoError(t, err)
	defer func() { require.NoError(t, pc.Close()) }()
	var got []string
	require.Eventually(t, func() bool {
		for {
			select {
			case m := <-pc.Messages():
				got = append(got, string(m.Value))
			default:
				return len(got) >= want
			}
		}
	}, 10*time.Second, 20*time.Millisecond)
	return got
}

func TestRestartWithDataDirKeepsMessages(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	b, err := kafkadev.Start(t.Context(), "127.0.0.1:0", dir)
	require.NoError(t, err)
	addr := b.Addr()
	createTopic(t, addr, "dev.topic")
	produce(t, addr, "dev.topic", "before restart")
	require.NoError(t, b.Close())

	// Same address and directory: a restart, not a new cluster.
	b2, err := kafkadev.Start(t.Context(), addr, dir)
	require.NoError(t, err)
	t.Cleanup(func() { _ = b2.Close() })
	produce(t, addr, "dev.topic", "after restart")
	require.Equal(t, []string{"before restart", "after restart"}, consumeAll(t, addr, "dev.topic", 2))
}

func TestStopsWithContext(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(t.Context())
	b, err := kafkadev.Start(ctx, "127.0.0.1:0", "")
	require.NoError(t, err)
	cancel()
	require.Eventually(t, func() bool {
		c, err := sarama.NewClient([]string{b.Addr()}, saramaConfig())
		if err == nil {
			_ = c.Close()
		}
		return err != nil
	}, 10*time.Second, 50*time.Millisecond)
}

func TestRejectsWildcardAddress(t *testing.T) {
	t.Parallel()
	for _, addr := range []string{"0.0.0.0:0", "[::]:0", "nonsense"} {
		_, err := kafkadev.Start(t.Context(), addr, "")
		require.Error(t, err, addr)
	}
}
