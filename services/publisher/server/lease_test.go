package server_test

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	"github.com/biobridge/bridge/services/publisher/kafka"
	"github.com/biobridge/bridge/services/publisher/testenv"
	"github.com/biobridge/bridge/services/publisher/topiccheck"
)

// checkTopic runs the order and loss checker over env's database and event
// topic, logs its report and returns it.
func checkTopic(t *testing.T, env *testenv.Env) topiccheck.Report {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	rep, err := topiccheck.Run(ctx, topiccheck.Options{
		PostgresURL: env.DatabaseURL, Brokers: []string{env.BrokerAddr()},
		Topic: kafka.TopicEvents, DeadLetterTopic: kafka.TopicDeadLetters,
	})
	require.NoError(t, err)
	var buf bytes.Buffer
	require.NoError(t, rep.Write(&buf))
	t.Log(buf.String())
	return rep
}

// leased reports how many outbox entries are leased right now.
func leased(t *testing.T, env *testenv.Env) int64 {
	t.Helper()
	st, err := persistencev1.NewPersistenceServiceClient(env.Conn).GetOutboxStats(t.Context(), &persistencev1.GetOutboxStatsRequest{})
	require.NoError(t, err)
	return st.GetLeased()
}

// TestStalledBrokerShortLease: publisher A's connections to the broker
// stall (a proxy holds its requests and the broker's answers) in the middle
// of a wave, with a 2s lease, for several times the lease. Publisher B,
// whose path is fine, takes over the users' later events. When A's path
// comes back, whatever A had sent and still holds lands late. A send that
// outlived its lease would land after B's newer events: the checker must
// find every user's versions in order, and nothing lost.
func TestStalledBrokerShortLease(t *testing.T) {
	t.Parallel()
	env := testenv.New(t, testenv.Options{StallProxy: true})
	env.EnsureTopics()
	c := collect(t, env, kafka.TopicEvents)
	users := testenv.Users("stall", 20)
	ctx := t.Context()

	cfgA := env.PublisherConfig()
	cfgA.Holder, cfgA.KafkaClientID = "a", "publisher-a"
	cfgA.LeaseDuration, cfgA.WaitTimeout, cfgA.Workers = 2*time.Second, 500*time.Millisecond, 1
	cfgB := cfgA
	cfgB.Holder, cfgB.KafkaClientID = "b", "publisher-b"

	a := env.StartPublisher(cfgA)
	require.NoError(t, env.Writer.WriteRound(ctx, users, len(users)))
	require.NoError(t, c.WaitDistinct(ctx, len(users)))

	// A's next wave hangs on the wire.
	env.Proxy.Stall(cfgA.KafkaClientID)
	require.NoError(t, env.Writer.WriteRound(ctx, users, len(users)))
	require.Eventually(t, func() bool { return leased(t, env) > 0 }, 10*time.Second, 10*time.Millisecond, "A leased the second round")
	// Three leases' worth of stall before B shows up (a pause, not an
	// assertion): a lease that is not renewed has long run out.
	time.Sleep(3 * cfgA.LeaseDuration)
	env.StartPublisher(cfgB)
	require.NoError(t, env.Writer.WriteRound(ctx, users, len(users)))
	require.NoError(t, c.WaitDistinct(ctx, 3*len(users)), "B publishes what A could not")

	// A's path comes back: what it held is delivered now.
	env.Proxy.Resume(cfgA.KafkaClientID)
	require.NoError(t, env.Writer.WriteRound(ctx, users, len(users)))
	require.NoError(t, c.WaitDistinct(ctx, 4*len(users)))
	require.NoError(t, a.Stop(), "A finishes (and lands) whatever it still had in flight")

	rep := checkTopic(t, env)
	require.Equal(t, 4*len(users), rep.Committed)
	require.Zero(t, rep.Lost, "lost")
	require.Zero(t, rep.Reordered, "reordered")
	require.Zero(t, rep.HarmfulDuplicates, "harmful duplicates")
}
