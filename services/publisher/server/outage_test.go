package server_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/protobuf/proto"

	publisherv1 "github.com/biobridge/bridge/gen/go/biobridge/publisher/v1"
	"github.com/biobridge/bridge/services/publisher/kafka"
	"github.com/biobridge/bridge/services/publisher/testenv"
)

// steadyWriter writes one event per user every interval until stopped.
type steadyWriter struct {
	rounds atomic.Int64
	errs   atomic.Int64
	done   chan struct{}
	once   sync.Once
	wg     sync.WaitGroup
}

// startSteadyWriter starts the writer. Stop ends it between rounds: a round
// is never abandoned halfway, because the writer numbers each user's events
// before it sends them (Writer.Written counts them), so a round cancelled in
// flight would be counted as written and never arrive.
func startSteadyWriter(t *testing.T, env *testenv.Env, users []string, interval time.Duration) *steadyWriter {
	t.Helper()
	w := &steadyWriter{done: make(chan struct{})}
	ctx := t.Context()
	w.wg.Go(func() {
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-w.done:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			if err := env.Writer.WriteRound(ctx, users, len(users)); err != nil {
				if ctx.Err() != nil {
					return
				}
				w.errs.Add(1)
				t.Logf("write failed: %v", err)
				continue
			}
			w.rounds.Add(1)
		}
	})
	t.Cleanup(w.Stop)
	return w
}

// Stop waits for the round in flight, if any, and ends the writer.
func (w *steadyWriter) Stop() {
	w.once.Do(func() { close(w.done) })
	w.wg.Wait()
}

func totalWritten(env *testenv.Env) int {
	n := 0
	for _, v := range env.Writer.Written() {
		n += v
	}
	return n
}

// TestBrokerOutage takes the broker away for 20 seconds in the middle of a
// steady stream. Meanwhile writes keep succeeding (the outbox holds the
// backlog) and the status shows Kafka down with a growing backlog; once the
// broker is back the publisher resumes by itself, every event arrives, per
// user in order, and the few duplicates are copies of the same event under
// the same ce_id.
func TestBrokerOutage(t *testing.T) {
	t.Parallel()
	env := testenv.New(t, testenv.Options{})
	cfg := env.PublisherConfig()
	pub := env.StartPublisher(cfg)
	client, cctx := publisherClient(t, pub.GRPCAddr())
	status := func() *publisherv1.GetStatusResponse {
		st, err := client.GetStatus(cctx, &publisherv1.GetStatusRequest{})
		if err != nil {
			return &publisherv1.GetStatusResponse{}
		}
		return st
	}

	users := testenv.Users("outage", 20)
	w := startSteadyWriter(t, env, users, 50*time.Millisecond)
	require.Eventually(t, func() bool { return status().GetPublishedTotal() >= 200 }, 30*time.Second, 50*time.Millisecond)

	env.StopBroker()
	down := time.Now()
	roundsAtStop := w.rounds.Load()
	require.Eventually(t, func() bool {
		st := status()
		return !st.GetKafkaConnected() && st.GetOutboxPending() > 100 && st.GetOldestPendingAge().AsDuration() > time.Second
	}, 15*time.Second, 100*time.Millisecond, "status shows the outage and the backlog")
	publishedDuringOutage := status().GetPublishedTotal()
	// Keep the broker away for 20 seconds in all (a pause, not an assertion).
	time.Sleep(20*time.Second - time.Since(down))
	require.Zero(t, w.errs.Load(), "writes keep succeeding while Kafka is down")
	require.Greater(t, w.rounds.Load()-roundsAtStop, int64(100), "the stream went on")
	require.Equal(t, publishedDuringOutage, status().GetPublishedTotal(), "nothing is published while the broker is away")

	env.StartBroker()
	require.Eventually(t, func() bool {
		st := status()
		return st.GetKafkaConnected() && st.GetPublishedTotal() > publishedDuringOutage
	}, 30*time.Second, 100*time.Millisecond, "publishing resumes on its own")
	w.Stop()
	total := totalWritten(env)
	require.Eventually(t, func() bool { return status().GetOutboxPending() == 0 }, 60*time.Second, 100*time.Millisecond)

	c := collect(t, env, kafka.TopicEvents)
	wait, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if err := c.WaitDistinct(wait, total); err != nil {
		t.Fatalf("events lost: %v; order check: %v; %s", err, testenv.CheckOrder(c.Messages(), env.Writer.Written()), c.Progress(kafka.TopicEvents))
	}
	msgs := c.Messages()
	require.NoError(t, testenv.CheckOrder(msgs, env.Writer.Written()))
	dups := c.Total() - total
	t.Logf("%d events, %d duplicates", total, dups)
	require.LessOrEqual(t, dups, cfg.BatchSize*cfg.Workers, "duplicates are bounded by what was in flight")
	first := map[string]testenv.Received{}
	for _, m := range msgs {
		if f, ok := first[m.EventID]; ok {
			require.True(t, proto.Equal(f.Event, m.Event), "a duplicate is the same event under the same ce_id")
			continue
		}
		first[m.EventID] = m
	}
}

// TestRestartMidBatch stops the publisher while it is publishing a backlog
// and starts a new one: every event still arrives, in order per user.
func TestRestartMidBatch(t *testing.T) {
	t.Parallel()
	env := testenv.New(t, testenv.Options{})
	users := testenv.Users("restart", 100)
	for range 50 {
		require.NoError(t, env.Writer.WriteRound(t.Context(), users, 100))
	}
	total := totalWritten(env)
	env.EnsureTopics()
	c := collect(t, env, kafka.TopicEvents)

	cfg := env.PublisherConfig()
	cfg.BatchSize = 1000
	first := env.StartPublisher(cfg)
	require.Eventually(t, func() bool { return c.Distinct() > 0 }, 30*time.Second, time.Millisecond)
	require.NoError(t, first.Stop())
	stoppedAt := c.Distinct()
	require.Less(t, stoppedAt, total, "stopped before the backlog was published")

	second := env.StartPublisher(cfg)
	require.Eventually(t, func() bool { return c.Distinct() == total }, 60*time.Second, 50*time.Millisecond)
	require.NoError(t, testenv.CheckOrder(c.Messages(), env.Writer.Written()))
	client, cctx := publisherClient(t, second.GRPCAddr())
	require.Eventually(t, func() bool {
		st, err := client.GetStatus(cctx, &publisherv1.GetStatusRequest{})
		return err == nil && st.GetOutboxPending() == 0
	}, 30*time.Second, 50*time.Millisecond)
	t.Logf("first publisher stopped at %d of %d events; %d duplicates", stoppedAt, total, c.Duplicates())
}
