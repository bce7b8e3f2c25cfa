package relay_test

import (
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/services/publisher/internal/relay"
	"github.com/biobridge/bridge/services/publisher/kafka"
	"github.com/biobridge/bridge/services/publisher/outbox"
	"github.com/biobridge/bridge/services/publisher/testenv"
)

// TestInvalidStoredPayloadIsDeadLettered: an outbox entry whose stored
// payload is not a valid encoding (the relay leases the bytes raw and
// checks them as it builds the message) is an invalid entry: dead-lettered
// at once, not retried, and the user's later events are published after
// it. Other users' events are not held up.
func TestInvalidStoredPayloadIsDeadLettered(t *testing.T) {
	t.Parallel()
	env := testenv.New(t, testenv.Options{})
	k := connectKafka(t, env, 0)
	users := testenv.Users("invalid", 4)
	db, err := pgx.Connect(t.Context(), env.DatabaseURL)
	require.NoError(t, err)
	t.Cleanup(func() { _ = db.Close(t.Context()) })
	// A string field (event_id) that is not UTF-8: proto.Unmarshal refuses it.
	_, err = db.Exec(t.Context(), `INSERT INTO biometrics.outbox (topic, key, payload_type, payload) VALUES ($1, $2, 1, '\x0a01ff')`,
		kafka.TopicEvents, users[0])
	require.NoError(t, err)
	require.NoError(t, env.Writer.WriteRound(t.Context(), users, len(users)))

	events, err := testenv.Collect([]string{env.BrokerAddr()}, kafka.TopicEvents, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = events.Close() })
	dlq, err := testenv.Collect([]string{env.BrokerAddr()}, kafka.TopicDeadLetters, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = dlq.Close() })

	r := newRelay(t, env.Conn, k, relay.Config{WaitTimeout: time.Second, MaxAttempts: 3})
	run(t, r)
	require.Eventually(t, func() bool {
		return events.Distinct() == len(users) && dlq.Total() == 1
	}, 30*time.Second, 50*time.Millisecond)
	m := dlq.Messages()[0]
	require.Equal(t, users[0], m.Key)
	require.Equal(t, "invalid_entry", m.Headers[kafka.HeaderDLQReason])
	require.Equal(t, "1", m.Headers[kafka.HeaderDLQAttempts], "not retried")
	require.Contains(t, m.Headers[kafka.HeaderDLQError], "invalid outbox entry")
	require.NoError(t, testenv.CheckOrder(events.Messages(), env.Writer.Written()))
	require.EqualValues(t, 1, r.Counters().DeadLettered)
	require.Eventually(t, func() bool {
		st, err := outbox.New(env.Conn).Stats(t.Context())
		return err == nil && st.Pending == 0
	}, 30*time.Second, 50*time.Millisecond)
}
