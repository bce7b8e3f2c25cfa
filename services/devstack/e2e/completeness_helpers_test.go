package e2e

import (
	"context"
	"encoding/json"
	"net/http"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/IBM/sarama"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"

	"github.com/biobridge/bridge/emulator"
	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	ingestv1 "github.com/biobridge/bridge/gen/go/biobridge/ingest/v1"
	"github.com/biobridge/bridge/pkg/topics"
	"github.com/biobridge/bridge/services/devstack/stack"
)

// world is a private stack configured for one data-completeness test, with
// direct access to the database it runs on (to compare what persistence
// stored with what the emulator holds) and an ingest client.
type world struct {
	t      *testing.T
	s      *stack.Stack
	db     *pgxpool.Pool
	ingest ingestv1.IngestServiceClient
}

// startWorld runs a stack with env on top of the test's own database, Redis
// prefix and ports, and the emulator configured by emu.
func startWorld(t *testing.T, env map[string]string, emu emulator.Config) *world {
	t.Helper()
	s := startStackWith(t, env, emu)
	dbURL := s.Env("POSTGRES_URL")
	db, err := pgxpool.New(context.Background(), dbURL)
	require.NoError(t, err)
	t.Cleanup(db.Close)
	conn, err := grpc.NewClient(s.Env("INGEST_GRPC_ADDR"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	return &world{t: t, s: s, db: db, ingest: ingestv1.NewIngestServiceClient(conn)}
}

func (w *world) svc() context.Context {
	return metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+w.s.OperatorToken())
}

// connect runs the connect flow through the gateway as the app and the
// user's browser do; the emulator approves emuUser.
func (w *world) connect(user, vendor, emuUser string) {
	w.t.Helper()
	app, err := w.s.AuthorizeInBrowser(context.Background(), user, emuUser, vendor)
	require.NoError(w.t, err)
	require.NoError(w.t, w.s.CompleteInApp(context.Background(), user, vendor, app))
}

// connection is what ListConnections shows of one connection.
type connection struct {
	Vendor     string `json:"vendor"`
	Status     string `json:"status"`
	Stale      bool   `json:"stale"`
	LastDataAt string `json:"last_data_at"`
}

func (w *world) connections(user string) map[string]connection {
	t := w.t
	t.Helper()
	tok, err := w.s.UserToken(user, time.Hour)
	require.NoError(t, err)
	r := do(t, http.MethodGet, w.s.GatewayURL()+"/v1/connections", tok, nil)
	require.Equal(t, http.StatusOK, r.Code, "%s", r.Body)
	var body struct {
		Connections []connection `json:"connections"`
	}
	r.JSON(t, &body)
	out := map[string]connection{}
	for _, c := range body.Connections {
		out[c.Vendor] = c
	}
	return out
}

func (w *world) backfills(user string) []*ingestv1.Backfill {
	w.t.Helper()
	resp, err := w.ingest.GetBackfillProgress(w.svc(), &ingestv1.GetBackfillProgressRequest{UserId: user})
	require.NoError(w.t, err)
	return resp.GetBackfills()
}

func (w *world) backfillsCompleted(user string) int {
	n := 0
	for _, b := range w.backfills(user) {
		if b.GetState() == ingestv1.BackfillState_BACKFILL_STATE_COMPLETED {
			n++
		}
	}
	return n
}

// stored lists user's records persistence holds, and their highest version
// (Oura heart-rate samples aside: the emulator lists documents only).
func (w *world) stored(user string) ([]string, int) {
	t := w.t
	t.Helper()
	rows, err := w.db.Query(context.Background(), `SELECT source, vendor_record_id, version FROM biometrics.records
		WHERE user_id = $1 AND NOT deleted AND kind <> 'heartrate' ORDER BY 1, 2`, user)
	require.NoError(t, err)
	defer rows.Close()
	var out []string
	top := 0
	for rows.Next() {
		var src, version int
		var id string
		require.NoError(t, rows.Scan(&src, &id, &version))
		out = append(out, map[int]string{1: "whoop", 2: "oura"}[src]+"/"+id)
		top = max(top, version)
	}
	require.NoError(t, rows.Err())
	sort.Strings(out)
	return out, top
}

// connectionEvents consumes biometrics.connections.v1 from the stack's
// Kafka from the beginning, every partition, until the test ends.
type connectionEvents struct {
	mu     sync.Mutex
	events []*biometricsv1.ConnectionEvent
}

func (w *world) consumeConnectionEvents() *connectionEvents {
	t := w.t
	t.Helper()
	const topic = topics.Connections
	cfg := sarama.NewConfig()
	cfg.Version = sarama.V3_6_0_0
	cfg.Consumer.Return.Errors = false
	client, err := sarama.NewClient([]string{w.s.Env("KAFKA_BROKERS")}, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { _ = client.Close() })
	// The publisher creates the topic when it starts; wait for it.
	var parts []int32
	require.Eventually(t, func() bool {
		_ = client.RefreshMetadata(topic)
		parts, err = client.Partitions(topic)
		return err == nil && len(parts) > 0
	}, 20*time.Second, 100*time.Millisecond, "topic %s never appeared", topic)
	consumer, err := sarama.NewConsumerFromClient(client)
	require.NoError(t, err)
	t.Cleanup(func() { _ = consumer.Close() })
	ce := &connectionEvents{}
	for _, p := range parts {
		pc, err := consumer.ConsumePartition(topic, p, sarama.OffsetOldest)
		require.NoError(t, err)
		go func() {
			for msg := range pc.Messages() {
				var ev biometricsv1.ConnectionEvent
				if err := proto.Unmarshal(msg.Value, &ev); err != nil {
					continue
				}
				ce.mu.Lock()
				ce.events = append(ce.events, &ev)
				ce.mu.Unlock()
			}
		}()
	}
	return ce
}

// types lists the event types seen for (user, vendor), in arrival order.
func (c *connectionEvents) types(user, vendor string) []biometricsv1.ConnectionEventType {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []biometricsv1.ConnectionEventType
	for _, e := range c.events {
		if e.GetUserId() == user && e.GetVendor() == vendor {
			out = append(out, e.GetType())
		}
	}
	return out
}

func count(types []biometricsv1.ConnectionEventType, want biometricsv1.ConnectionEventType) int {
	n := 0
	for _, t := range types {
		if t == want {
			n++
		}
	}
	return n
}

// ouraSubscriptions lists the app's Oura subscriptions at the emulator.
func (w *world) ouraSubscriptions() []ouraSubscription {
	t := w.t
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, w.s.Env("OURA_API_URL")+"/v2/webhook/subscription", nil)
	require.NoError(t, err)
	req.Header.Set("x-client-id", w.s.Env("OURA_CLIENT_ID"))
	req.Header.Set("x-client-secret", w.s.Env("OURA_CLIENT_SECRET"))
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer res.Body.Close()
	require.Equal(t, http.StatusOK, res.StatusCode)
	var subs []ouraSubscription
	require.NoError(t, json.NewDecoder(res.Body).Decode(&subs))
	return subs
}

func (w *world) deleteOuraSubscription(id string) {
	t := w.t
	t.Helper()
	req, err := http.NewRequest(http.MethodDelete, w.s.Env("OURA_API_URL")+"/v2/webhook/subscription/"+id, nil)
	require.NoError(t, err)
	req.Header.Set("x-client-id", w.s.Env("OURA_CLIENT_ID"))
	req.Header.Set("x-client-secret", w.s.Env("OURA_CLIENT_SECRET"))
	res, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	require.NoError(t, res.Body.Close())
	require.Equal(t, http.StatusNoContent, res.StatusCode)
}

type ouraSubscription struct {
	ID             string    `json:"id"`
	CallbackURL    string    `json:"callback_url"`
	EventType      string    `json:"event_type"`
	DataType       string    `json:"data_type"`
	ExpirationTime time.Time `json:"expiration_time"`
}
