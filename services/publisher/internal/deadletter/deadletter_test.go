package deadletter_test

import (
	"log/slog"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/services/publisher/internal/deadletter"
	"github.com/biobridge/bridge/services/publisher/internal/kafka"
	"github.com/biobridge/bridge/services/publisher/kafkadev"
)

func setup(t *testing.T) (*kafka.Conn, *deadletter.Store) {
	t.Helper()
	b, err := kafkadev.StartConfig(t.Context(), kafkadev.Config{Addr: "127.0.0.1:0"})
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Close() })
	conn, err := kafka.Connect(t.Context(), kafka.Config{
		Brokers: []string{b.Addr()}, Version: sarama.V3_6_0_0, ClientID: "test",
		MaxMessageBytes: 1000000, DeadLetterMaxMessageBytes: 2 << 20,
		Partitions: 2, ReplicationFactor: 1, CreateTopics: true,
	}, slog.New(slog.DiscardHandler))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	store := deadletter.New(conn.DeadLetterClient, conn.Producer, conn.DeadLetter, prometheus.NewRegistry(), slog.New(slog.DiscardHandler), time.Hour)
	return conn, store
}

func deadLetter(t *testing.T, conn *kafka.Conn, user, eventID, reason string, info kafka.DeadLetterInfo) {
	t.Helper()
	orig := &sarama.ProducerMessage{
		Topic: kafka.TopicEvents, Key: sarama.StringEncoder(user), Value: sarama.ByteEncoder("value-" + eventID),
		Headers: []sarama.RecordHeader{
			{Key: []byte("ce_id"), Value: []byte(eventID)},
			{Key: []byte("ce_type"), Value: []byte("biobridge.biometrics.event.v1.upsert")},
		},
	}
	info.Reason = reason
	_, _, err := conn.DeadLetter.SendMessage(kafka.DeadLetter(orig, info))
	require.NoError(t, err)
}

func TestListAndReplay(t *testing.T) {
	t.Parallel()
	conn, store := setup(t)
	ctx := t.Context()

	n, err := store.Pending(ctx)
	require.NoError(t, err)
	require.Zero(t, n, "empty topic")

	t0 := time.Now().Add(-time.Minute).UTC()
	deadLetter(t, conn, "u1", "ev-1", "message_too_large", kafka.DeadLetterInfo{Attempts: 1, FailedAt: t0})
	deadLetter(t, conn, "u2", "ev-2", "max_attempts_exceeded", kafka.DeadLetterInfo{Attempts: 5, FailedAt: t0.Add(time.Second)})
	// A publisher that died between dead-lettering and acking writes the
	// same letter twice: it is one dead letter.
	deadLetter(t, conn, "u1", "ev-1", "message_too_large", kafka.DeadLetterInfo{Attempts: 1, FailedAt: t0.Add(2 * time.Second)})
	deadLetter(t, conn, "u3", "ev-3", "message_too_large", kafka.DeadLetterInfo{Attempts: 1, FailedAt: t0.Add(3 * time.Second), OmitValue: true})
	store.Invalidate()

	letters, err := store.List(ctx, 100, false)
	require.NoError(t, err)
	require.Len(t, letters, 3)
	require.Equal(t, []string{"ev-1", "ev-2", "ev-3"}, []string{letters[0].EventID, letters[1].EventID, letters[2].EventID}, "oldest first")
	require.Equal(t, "message_too_large", letters[0].Reason)
	require.Equal(t, kafka.TopicEvents, letters[0].OriginalTopic)
	require.EqualValues(t, 5, letters[1].Attempts)
	require.WithinDuration(t, t0, letters[0].FailedAt, time.Millisecond)
	require.EqualValues(t, len("value-ev-1"), letters[0].SizeBytes)
	require.True(t, letters[2].ValueOmitted)
	n, err = store.Pending(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 3, n)

	limited, err := store.List(ctx, 1, false)
	require.NoError(t, err)
	require.Len(t, limited, 1)

	// Replay one by id: it reaches its original topic with its original
	// key, value and headers, and no dlq_ headers.
	replayed, failed, err := store.Replay(ctx, []string{"ev-2"})
	require.NoError(t, err)
	require.Equal(t, 1, replayed)
	require.Zero(t, failed)
	msgs := consumeTopic(t, conn, kafka.TopicEvents, 1)
	require.Equal(t, "u2", string(msgs[0].Key))
	require.Equal(t, "value-ev-2", string(msgs[0].Value))
	require.Equal(t, "ev-2", kafka.Header(msgs[0].Headers, "ce_id"))
	require.Equal(t, "biobridge.biometrics.event.v1.upsert", kafka.Header(msgs[0].Headers, "ce_type"))
	require.Empty(t, kafka.Header(msgs[0].Headers, "dlq_reason"))

	letters, err = store.List(ctx, 100, false)
	require.NoError(t, err)
	require.Len(t, letters, 2, "the replayed letter is hidden by default")
	all, err := store.List(ctx, 100, true)
	require.NoError(t, err)
	require.Len(t, all, 3)
	require.True(t, all[1].Replayed)
	n, err = store.Pending(ctx)
	require.NoError(t, err)
	require.EqualValues(t, 2, n)

	// Replay the rest: the letter without its value cannot be replayed and
	// stays a dead letter; a replayed one is not replayed twice.
	replayed, failed, err = store.Replay(ctx, nil)
	require.NoError(t, err)
	require.Equal(t, 1, replayed)
	require.Equal(t, 1, failed)
	letters, err = store.List(ctx, 100, false)
	require.NoError(t, err)
	require.Len(t, letters, 1)
	require.Equal(t, "ev-3", letters[0].EventID)
	consumeTopic(t, conn, kafka.TopicEvents, 2)
}

// consumeTopic reads every partition of topic from the start until want
// messages arrived.
func consumeTopic(t *testing.T, conn *kafka.Conn, topic string, want int) []*sarama.ConsumerMessage {
	t.Helper()
	c, err := sarama.NewConsumerFromClient(conn.Client)
	require.NoError(t, err)
	defer func() { require.NoError(t, c.Close()) }()
	parts, err := conn.Client.Partitions(topic)
	require.NoError(t, err)
	var pcs []sarama.PartitionConsumer
	for _, p := range parts {
		pc, err := c.ConsumePartition(topic, p, sarama.OffsetOldest)
		require.NoError(t, err)
		pcs = append(pcs, pc)
	}
	defer func() {
		for _, pc := range pcs {
			require.NoError(t, pc.Close())
		}
	}()
	var got []*sarama.ConsumerMessage
	require.Eventually(t, func() bool {
		for _, pc := range pcs {
		drain:
			for {
				select {
				case m := <-pc.Messages():
					got = append(got, m)
				default:
					break drain
				}
			}
		}
		return len(got) >= want
	}, 10*time.Second, 20*time.Millisecond)
	require.Len(t, got, want)
	return got
}
