package server_test

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/services/publisher/kafka"
	"github.com/biobridge/bridge/services/publisher/testenv"
)

// TestSIGKILLMidWave runs the real publisher binary over a backlog, kills
// it with SIGKILL while it is publishing (twice), and starts it again.
// Whatever was in flight when it died is published again (duplicates, same
// ce_id, counted): the checker must find nothing lost and no user's
// versions out of order.
func TestSIGKILLMidWave(t *testing.T) {
	t.Parallel()
	env := testenv.New(t, testenv.Options{})
	env.EnsureTopics()
	c := collect(t, env, kafka.TopicEvents)
	users := testenv.Users("kill", 100)
	ctx := t.Context()
	const rounds = 30
	for range rounds {
		require.NoError(t, env.Writer.WriteRound(ctx, users, len(users)))
	}
	total := rounds * len(users)
	environ := env.ProcessEnv(map[string]string{
		"PUBLISH_BATCH_SIZE": "200", "PUBLISH_WORKERS": "2", "PUBLISH_LEASE_DURATION": "5s", "PUBLISH_WAIT_TIMEOUT": "1s",
	})

	for i, at := range []int{total / 4, total / 2} {
		p := env.StartProcess(environ)
		require.Eventually(t, func() bool { return c.Distinct() >= at }, 60*time.Second, time.Millisecond,
			"publisher %d got going", i)
		p.Kill()
		t.Logf("killed publisher %d with %d of %d events on the topic", i, c.Distinct(), total)
		// Writes go on while no publisher runs.
		require.NoError(t, env.Writer.WriteRound(ctx, users, len(users)))
		total += len(users)
	}
	p := env.StartProcess(environ)
	require.NoError(t, c.WaitDistinct(ctx, total))
	require.NoError(t, p.Stop())

	rep := checkTopic(t, env)
	require.Equal(t, total, rep.Committed)
	require.Zero(t, rep.Lost, "lost")
	require.Zero(t, rep.Reordered, "reordered")
	require.Zero(t, rep.HarmfulDuplicates, "harmful duplicates")
	t.Logf("%d duplicates after two SIGKILLs", rep.Duplicates)
}
