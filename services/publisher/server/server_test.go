package server_test

import (
	"context"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	publisherv1 "github.com/biobridge/bridge/gen/go/biobridge/publisher/v1"
	"github.com/biobridge/bridge/services/publisher/kafka"
	"github.com/biobridge/bridge/services/publisher/testenv"
)

// publisherClient returns a PublisherService client and a context carrying
// the service token.
func publisherClient(t *testing.T, addr string) (publisherv1.PublisherServiceClient, context.Context) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	ctx := metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+testenv.Token)
	return publisherv1.NewPublisherServiceClient(conn), ctx
}

func collect(t *testing.T, env *testenv.Env, topic string) *testenv.Collector {
	t.Helper()
	c, err := testenv.Collect([]string{env.BrokerAddr()}, topic, nil)
	require.NoError(t, err)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func metricsText(t *testing.T, adminAddr string) string {
	t.Helper()
	resp, err := http.Get("http://" + adminAddr + "/metrics")
	require.NoError(t, err)
	defer func() { _ = resp.Body.Close() }()
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return string(b)
}

// TestEveryEventArrivesOnceInUserOrder writes 10,000 events through the
// persistence service while the publisher runs and consumes the topic: each
// event arrives exactly once, with its CloudEvents headers, and every
// user's events arrive in commit order.
func TestEveryEventArrivesOnceInUserOrder(t *testing.T) {
	t.Parallel()
	env := testenv.New(t, testenv.Options{})
	pub := env.StartPublisher(env.PublisherConfig())
	ctx := t.Context()

	users := testenv.Users("steady", 200)
	const rounds = 50 // 200 users x 50 = 10,000 events
	for range rounds {
		require.NoError(t, env.Writer.WriteRound(ctx, users, 100))
	}
	const total = 200 * rounds

	client, cctx := publisherClient(t, pub.GRPCAddr())
	require.Eventually(t, func() bool {
		st, err := client.GetStatus(cctx, &publisherv1.GetStatusRequest{})
		return err == nil && st.GetOutboxPending() == 0 && st.GetPublishedTotal() == total
	}, 90*time.Second, 100*time.Millisecond, "the outbox drains")

	c := collect(t, env, kafka.TopicEvents)
	require.Eventually(t, func() bool { return c.Distinct() == total }, 30*time.Second, 50*time.Millisecond)
	require.Equal(t, total, c.Total(), "exactly once: no duplicates in normal operation")
	msgs := c.Messages()
	require.NoError(t, testenv.CheckOrder(msgs, env.Writer.Written()))

	m := msgs[0]
	require.Equal(t, "1.0", m.Headers["ce_specversion"])
	require.Equal(t, m.Event.GetEventId(), m.Headers["ce_id"])
	require.Equal(t, "/biobridge/internal", m.Headers["ce_source"])
	require.Equal(t, "biobridge.biometrics.event.v1.upsert", m.Headers["ce_type"])
	require.Equal(t, "application/protobuf", m.Headers["content-type"])
	_, err := time.Parse(time.RFC3339Nano, m.Headers["ce_time"])
	require.NoError(t, err)

	st, err := client.GetStatus(cctx, &publisherv1.GetStatusRequest{})
	require.NoError(t, err)
	require.Zero(t, st.GetFailedTotal())
	require.Zero(t, st.GetDeadLetteredTotal())
	require.Zero(t, st.GetDeadLetters())
	require.True(t, st.GetKafkaConnected())
	require.Nil(t, st.GetOldestPendingAge())

	text := metricsText(t, pub.AdminAddr())
	require.Contains(t, text, `publisher_published_total{topic="biometrics.events.v1"} 10000`)
	require.Contains(t, text, "publisher_commit_to_publish_seconds_count 10000")
	require.Contains(t, text, "publisher_kafka_connected 1")
}

// TestPublisherServiceAuthAndValidation checks that PublisherService needs
// a service token and rejects bad requests with InvalidArgument.
func TestPublisherServiceAuthAndValidation(t *testing.T) {
	t.Parallel()
	env := testenv.New(t, testenv.Options{})
	pub := env.StartPublisher(env.PublisherConfig())
	client, cctx := publisherClient(t, pub.GRPCAddr())
	for name, ctx := range map[string]context.Context{
		"no token":    t.Context(),
		"wrong token": metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer nope"),
	} {
		_, err := client.GetStatus(ctx, &publisherv1.GetStatusRequest{})
		require.Equal(t, codes.Unauthenticated, status.Code(err), name)
		_, err = client.ReplayDeadLetters(ctx, &publisherv1.ReplayDeadLettersRequest{})
		require.Equal(t, codes.Unauthenticated, status.Code(err), name)
	}
	_, err := client.ListDeadLetters(cctx, &publisherv1.ListDeadLettersRequest{PageSize: -1})
	require.Equal(t, codes.InvalidArgument, status.Code(err))
	_, err = client.ReplayDeadLetters(cctx, &publisherv1.ReplayDeadLettersRequest{EventIds: []string{""}})
	require.Equal(t, codes.InvalidArgument, status.Code(err))
	list, err := client.ListDeadLetters(cctx, &publisherv1.ListDeadLettersRequest{})
	require.NoError(t, err)
	require.Empty(t, list.GetDeadLetters())

	resp, err := http.Get("http://" + pub.AdminAddr() + "/readyz")
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, http.StatusOK, resp.StatusCode, "kafka and persistence reachable")
}
