package server_test

import (
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/stretchr/testify/require"

	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	publisherv1 "github.com/biobridge/bridge/gen/go/biobridge/publisher/v1"
	"github.com/biobridge/bridge/services/publisher/kafka"
	"github.com/biobridge/bridge/services/publisher/testenv"
)

// TestPoisonMessageIsDeadLetteredAndReplayed writes an event too large for
// the broker between two normal events of the same user, among other
// users' events. The poisoned event ends on the dead-letter topic with its
// reason, the user's next event still follows, the status and the list show
// the dead letter; a replay fails while the topic still refuses the size
// and succeeds once an operator raised the topic's limit.
func TestPoisonMessageIsDeadLetteredAndReplayed(t *testing.T) {
	t.Parallel()
	env := testenv.New(t, testenv.Options{BrokerConfigs: map[string]string{"message.max.bytes": "65536"}})
	pub := env.StartPublisher(env.PublisherConfig())
	client, cctx := publisherClient(t, pub.GRPCAddr())
	ctx := t.Context()

	users := testenv.Users("poison", 6)
	victim := users[0]
	require.NoError(t, env.Writer.WriteRound(ctx, users, len(users)))
	// ~3000 readings encode to about 150 KB, over the broker's 64 KB.
	poisonIDs, err := env.Writer.Write(ctx, []*persistencev1.EventInput{env.Writer.Event(victim, 3000)})
	require.NoError(t, err)
	poisonID := poisonIDs[0]
	require.NoError(t, env.Writer.WriteRound(ctx, users, len(users)))

	events := collect(t, env, kafka.TopicEvents)
	dlq := collect(t, env, kafka.TopicDeadLetters)
	require.Eventually(t, func() bool { return events.Distinct() == 12 && dlq.Distinct() == 1 }, 30*time.Second, 50*time.Millisecond)

	dl := dlq.Messages()[0]
	require.Equal(t, poisonID, dl.Headers["ce_id"])
	require.Equal(t, victim, dl.Key)
	require.Equal(t, "message_too_large", dl.Headers["dlq_reason"])
	require.Equal(t, kafka.TopicEvents, dl.Headers["dlq_original_topic"])
	require.Equal(t, "1", dl.Headers["dlq_attempts"])
	require.NotEmpty(t, dl.Headers["dlq_error"])
	_, err = time.Parse(time.RFC3339Nano, dl.Headers["dlq_failed_at"])
	require.NoError(t, err)
	require.Equal(t, poisonID, dl.Event.GetEventId(), "the dead letter carries the original value")
	require.Len(t, dl.Event.GetReadings(), 3000)

	var victimRecords []string
	for _, m := range events.Messages() {
		if m.Key == victim {
			victimRecords = append(victimRecords, m.Event.GetVendorRecordId())
		}
	}
	require.Equal(t, []string{testenv.RecordID(victim, 1), testenv.RecordID(victim, 3)}, victimRecords,
		"the user's events before and after the poisoned one are published, in order")

	require.Eventually(t, func() bool {
		st, err := client.GetStatus(cctx, &publisherv1.GetStatusRequest{})
		return err == nil && st.GetOutboxPending() == 0 && st.GetDeadLetteredTotal() == 1 && st.GetDeadLetters() == 1
	}, 10*time.Second, 50*time.Millisecond)

	list, err := client.ListDeadLetters(cctx, &publisherv1.ListDeadLettersRequest{})
	require.NoError(t, err)
	require.Len(t, list.GetDeadLetters(), 1)
	got := list.GetDeadLetters()[0]
	require.Equal(t, poisonID, got.GetEventId())
	require.Equal(t, "message_too_large", got.GetReason())
	require.Equal(t, kafka.TopicEvents, got.GetOriginalTopic())
	require.EqualValues(t, 1, got.GetAttempts())
	require.Greater(t, got.GetSizeBytes(), int32(65536))
	require.False(t, got.GetReplayed())

	// The topic still refuses the size: the replay fails, the letter stays.
	replay, err := client.ReplayDeadLetters(cctx, &publisherv1.ReplayDeadLettersRequest{EventIds: []string{poisonID}})
	require.NoError(t, err)
	require.EqualValues(t, 0, replay.GetReplayed())
	require.EqualValues(t, 1, replay.GetFailed())
	list, err = client.ListDeadLetters(cctx, &publisherv1.ListDeadLettersRequest{})
	require.NoError(t, err)
	require.Len(t, list.GetDeadLetters(), 1)

	// An operator raises the topic's limit; now the replay goes through.
	raiseTopicLimit(t, env.BrokerAddr(), kafka.TopicEvents, "1048576")
	replay, err = client.ReplayDeadLetters(cctx, &publisherv1.ReplayDeadLettersRequest{})
	require.NoError(t, err)
	require.EqualValues(t, 1, replay.GetReplayed())
	require.EqualValues(t, 0, replay.GetFailed())
	require.Eventually(t, func() bool { return events.Distinct() == 13 }, 10*time.Second, 50*time.Millisecond)
	last := events.Messages()[events.Total()-1]
	require.Equal(t, poisonID, last.EventID)
	require.Empty(t, last.Headers["dlq_reason"], "the replay republishes the original message")

	list, err = client.ListDeadLetters(cctx, &publisherv1.ListDeadLettersRequest{})
	require.NoError(t, err)
	require.Empty(t, list.GetDeadLetters())
	list, err = client.ListDeadLetters(cctx, &publisherv1.ListDeadLettersRequest{IncludeReplayed: true})
	require.NoError(t, err)
	require.Len(t, list.GetDeadLetters(), 1)
	require.True(t, list.GetDeadLetters()[0].GetReplayed())
	st, err := client.GetStatus(cctx, &publisherv1.GetStatusRequest{})
	require.NoError(t, err)
	require.Zero(t, st.GetDeadLetters())

	// Replaying again does nothing: the letter is marked replayed.
	replay, err = client.ReplayDeadLetters(cctx, &publisherv1.ReplayDeadLettersRequest{})
	require.NoError(t, err)
	require.EqualValues(t, 0, replay.GetReplayed())
}

func raiseTopicLimit(t *testing.T, broker, topic, value string) {
	t.Helper()
	cfg := sarama.NewConfig()
	cfg.Version = sarama.V3_6_0_0
	admin, err := sarama.NewClusterAdmin([]string{broker}, cfg)
	require.NoError(t, err)
	defer func() { require.NoError(t, admin.Close()) }()
	require.NoError(t, admin.AlterConfig(sarama.TopicResource, topic, map[string]*string{"max.message.bytes": &value}, false))
}
