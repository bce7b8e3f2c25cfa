package tokenbrokertest

import (
	"bytes"
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/biobridge/bridge/emulator"
	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	tokensv1 "github.com/biobridge/bridge/gen/go/biobridge/tokens/v1"
)

// TestTokensUnreadableAtRest reads the raw columns and the raw Redis value:
// neither contains a token, and the stored key id names the key.
func TestTokensUnreadableAtRest(t *testing.T) {
	e := newEnv(t, emulator.Config{})
	in := e.start(e.config())
	connect(t, in, "user-1", "whoop", "alice")
	tok, err := in.client.GetAccessToken(svcCtx(), &tokensv1.GetAccessTokenRequest{UserId: "user-1", Vendor: "whoop"})
	require.NoError(t, err)
	access := []byte(tok.GetAccessToken())
	require.NotEmpty(t, access)

	var keyID, row string
	var accessEnc, refreshEnc []byte
	require.NoError(t, e.pg(t).QueryRow(context.Background(), `
		SELECT key_id, access_token_enc, refresh_token_enc, c::text FROM tokens.connections c WHERE user_id = 'user-1'`).
		Scan(&keyID, &accessEnc, &refreshEnc, &row))
	require.Equal(t, "k1", keyID)
	require.NotEmpty(t, accessEnc)
	require.NotEmpty(t, refreshEnc)
	require.False(t, bytes.Contains(accessEnc, access), "access token column holds ciphertext")
	require.False(t, bytes.Contains(refreshEnc, access))
	require.NotContains(t, row, tok.GetAccessToken(), "no column holds the token")

	cached, err := e.redis(t).Get(context.Background(), e.prefix+"bb:{u:user-1}:token:whoop").Bytes()
	require.NoError(t, err, "the token is cached")
	require.False(t, bytes.Contains(cached, access), "the cache holds ciphertext only")

	// The refresh token is not readable either: refresh once and compare
	// what the emulator would accept with what is stored.
	e.expire(t, "user-1", "whoop")
	tok2, err := in.client.GetAccessToken(svcCtx(), &tokensv1.GetAccessTokenRequest{UserId: "user-1", Vendor: "whoop"})
	require.NoError(t, err)
	require.NoError(t, e.pg(t).QueryRow(context.Background(), `SELECT c::text FROM tokens.connections c WHERE user_id = 'user-1'`).Scan(&row))
	require.NotContains(t, row, tok2.GetAccessToken())
}

// TestKeyRotation: adding a new first key re-encrypts every connection at
// start and keeps them working; once rotated, the old key can go; without
// the key that sealed them, tokens cannot be read.
func TestKeyRotation(t *testing.T) {
	e := newEnv(t, emulator.Config{})
	k1, k2 := e.keys, "k2:"+newKey(t)
	old := e.start(e.config())
	for _, u := range []string{"user-1", "user-2", "user-3"} {
		connect(t, old, u, "whoop", "emu-"+u)
	}
	old.stop()

	keyIDs := func() map[string]int {
		rows, err := e.pg(t).Query(context.Background(), `SELECT key_id, count(*) FROM tokens.connections GROUP BY key_id`)
		require.NoError(t, err)
		defer rows.Close()
		out := map[string]int{}
		for rows.Next() {
			var id string
			var n int
			require.NoError(t, rows.Scan(&id, &n))
			out[id] = n
		}
		return out
	}
	require.Equal(t, map[string]int{"k1": 3}, keyIDs())

	cfg := e.config()
	cfg.TokenEncryptionKeys = k2 + "," + k1
	rotated := e.start(cfg)
	require.Eventually(t, func() bool { return keyIDs()["k2"] == 3 }, 10*time.Second, 20*time.Millisecond, "re-encryption pass at start")
	require.EqualValues(t, 3, metricValue(t, rotated.srv.Registry(), "biobridge_tokenbroker_reencrypted_total", nil))
	// Cached entries sealed with k1 still open; refreshes read the re-encrypted refresh token.
	_, err := rotated.client.GetAccessToken(svcCtx(), &tokensv1.GetAccessTokenRequest{UserId: "user-1", Vendor: "whoop"})
	require.NoError(t, err)
	e.expire(t, "user-2", "whoop")
	_, err = rotated.client.GetAccessToken(svcCtx(), &tokensv1.GetAccessTokenRequest{UserId: "user-2", Vendor: "whoop"})
	require.NoError(t, err)
	rotated.stop()

	cfg.TokenEncryptionKeys = k2
	onlyNew := e.start(cfg)
	for _, u := range []string{"user-1", "user-2", "user-3"} {
		e.expire(t, u, "whoop")
		tok, err := onlyNew.client.GetAccessToken(svcCtx(), &tokensv1.GetAccessTokenRequest{UserId: u, Vendor: "whoop"})
		require.NoError(t, err, u)
		require.True(t, e.vendorAccepts(t, "whoop", tok.GetAccessToken()))
	}
	require.Zero(t, counters(e, "whoop").RefreshTokenReuseViolations)
	onlyNew.stop()

	cfg.TokenEncryptionKeys = k1
	wrongKey := e.start(cfg)
	e.expireCacheOnly(t, "user-3", "whoop")
	_, err = wrongKey.client.GetAccessToken(svcCtx(), &tokensv1.GetAccessTokenRequest{UserId: "user-3", Vendor: "whoop"})
	requireCode(t, err, codes.Internal, "")
	require.Equal(t, map[string]int{"k2": 3}, keyIDs(), "a broker without the key changes nothing")
}

// fakePersistence records AppendConnectionEvents calls.
type fakePersistence struct {
	persistencev1.UnimplementedPersistenceServiceServer
	mu     sync.Mutex
	events map[string]*biometricsv1.ConnectionEvent
	calls  int
	fail   bool
	auth   []string
}

func (f *fakePersistence) AppendConnectionEvents(ctx context.Context, req *persistencev1.AppendConnectionEventsRequest) (*persistencev1.AppendConnectionEventsResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	md, _ := metadata.FromIncomingContext(ctx)
	f.auth = append(f.auth, md.Get("authorization")...)
	if f.fail {
		return nil, status.Error(codes.Unavailable, "down")
	}
	resp := &persistencev1.AppendConnectionEventsResponse{}
	for _, ev := range req.GetEvents() {
		f.events[ev.GetEventId()] = ev
		resp.EventIds = append(resp.EventIds, ev.GetEventId())
	}
	return resp, nil
}

func (f *fakePersistence) snapshot() (map[string]*biometricsv1.ConnectionEvent, int, []string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	out := map[string]*biometricsv1.ConnectionEvent{}
	for k, v := range f.events {
		out[k] = v
	}
	return out, f.calls, append([]string(nil), f.auth...)
}

// TestConnectionEventsReachPersistence: events written with the change are
// relayed to PersistenceService (with the service token), marked forwarded,
// and survive an outage of persistence.
func TestConnectionEventsReachPersistence(t *testing.T) {
	e := newEnv(t, emulator.Config{})
	fake := &fakePersistence{events: map[string]*biometricsv1.ConnectionEvent{}, fail: true}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	gs := grpc.NewServer()
	persistencev1.RegisterPersistenceServiceServer(gs, fake)
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)

	cfg := e.config()
	cfg.PersistenceTarget = ln.Addr().String()
	cfg.ServiceToken = "tokenbroker-secret"
	cfg.RelayInterval = 50 * time.Millisecond
	in := e.start(cfg)
	connect(t, in, "user-1", "whoop", "alice")
	_, err = in.client.RevokeConnection(userCtx(t, "user-1"), &tokensv1.RevokeConnectionRequest{Vendor: "whoop"})
	require.NoError(t, err)

	// Persistence is down: the events wait in the outbox.
	require.Eventually(t, func() bool {
		_, calls, _ := fake.snapshot()
		return calls >= 2
	}, 10*time.Second, 10*time.Millisecond)
	require.Eventually(t, func() bool {
		return metricValue(t, in.srv.Registry(), "biobridge_tokenbroker_connection_events_pending", nil) == 2
	}, 10*time.Second, 10*time.Millisecond)

	fake.mu.Lock()
	fake.fail = false
	fake.mu.Unlock()
	require.Eventually(t, func() bool {
		events, _, _ := fake.snapshot()
		return len(events) == 2
	}, 10*time.Second, 10*time.Millisecond)
	require.Eventually(t, func() bool {
		return metricValue(t, in.srv.Registry(), "biobridge_tokenbroker_connection_events_pending", nil) == 0
	}, 10*time.Second, 10*time.Millisecond)

	events, _, authz := fake.snapshot()
	types := map[biometricsv1.ConnectionEventType]int{}
	for id, ev := range events {
		require.Equal(t, id, ev.GetEventId())
		require.Equal(t, "user-1", ev.GetUserId())
		require.Equal(t, "whoop", ev.GetVendor())
		require.NotNil(t, ev.GetOccurredAt())
		types[ev.GetType()]++
	}
	require.Equal(t, map[biometricsv1.ConnectionEventType]int{
		biometricsv1.ConnectionEventType_CONNECTION_EVENT_TYPE_CONNECTED: 1,
		biometricsv1.ConnectionEventType_CONNECTION_EVENT_TYPE_REVOKED:   1,
	}, types)
	for _, a := range authz {
		require.Equal(t, "Bearer tokenbroker-secret", a)
	}
	var unforwarded int
	require.NoError(t, e.pg(t).QueryRow(context.Background(), `SELECT count(*) FROM tokens.connection_events WHERE forwarded_at IS NULL`).Scan(&unforwarded))
	require.Zero(t, unforwarded)
}

// TestEventsQueueWithoutPersistence: with no PERSISTENCE_TARGET events stay
// queued and the backlog gauge shows them.
func TestEventsQueueWithoutPersistence(t *testing.T) {
	e := newEnv(t, emulator.Config{})
	cfg := e.config()
	cfg.RelayInterval = 50 * time.Millisecond
	in := e.start(cfg)
	connect(t, in, "user-1", "whoop", "alice")
	connect(t, in, "user-2", "oura", "bob")
	require.Eventually(t, func() bool {
		return metricValue(t, in.srv.Registry(), "biobridge_tokenbroker_connection_events_pending", nil) == 2
	}, 10*time.Second, 10*time.Millisecond)
}
