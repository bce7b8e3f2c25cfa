package server_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/pkg/testpg"
	"github.com/biobridge/bridge/services/persistence/server"
)

// TestServiceACL checks that with SERVICE_ACL set a valid token only opens
// the methods listed for its caller, on both APIs and on streams.
func TestServiceACL(t *testing.T) {
	t.Parallel()
	e := start(t, func(c *server.Config) {
		c.ServiceACL = "ingest=" + persistencev1.PersistenceService_WriteEvents_FullMethodName +
			"|" + persistencev1.PersistenceService_DeleteRecords_FullMethodName +
			";agent=/biobridge.biometrics.v1.BiometricsService/*"
	})
	user := newUser()
	// A stored value, so WatchLatest answers with a snapshot at once.
	e.write(event(user, "a", reading("heart_rate_bpm", 60, time.Date(2026, 11, 1, 7, 0, 0, 0, time.UTC))))
	bg, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	calls := map[string]func(ctx context.Context) error{
		"WriteEvents": func(ctx context.Context) error {
			_, err := e.persistence.WriteEvents(ctx, &persistencev1.WriteEventsRequest{})
			return err
		},
		"DeleteRecords": func(ctx context.Context) error {
			_, err := e.persistence.DeleteRecords(ctx, &persistencev1.DeleteRecordsRequest{})
			return err
		},
		"LeaseOutbox": func(ctx context.Context) error {
			_, err := e.persistence.LeaseOutbox(ctx, &persistencev1.LeaseOutboxRequest{})
			return err
		},
		"AckOutbox": func(ctx context.Context) error {
			_, err := e.persistence.AckOutbox(ctx, &persistencev1.AckOutboxRequest{})
			return err
		},
		"GetLatest": func(ctx context.Context) error {
			_, err := e.biometrics.GetLatest(ctx, &biometricsv1.GetLatestRequest{UserId: user})
			return err
		},
		"WatchLatest": func(ctx context.Context) error {
			ctx, cancel := context.WithCancel(ctx)
			defer cancel()
			stream, err := e.biometrics.WatchLatest(ctx, &biometricsv1.WatchLatestRequest{UserId: user})
			if err != nil {
				return err
			}
			// The first message is the current snapshot; a refused stream
			// fails here instead.
			_, err = stream.Recv()
			return err
		},
	}
	tests := []struct {
		token   string
		call    string
		allowed bool
	}{
		{agentToken, "GetLatest", true},
		{agentToken, "WatchLatest", true},
		{agentToken, "WriteEvents", false},
		{agentToken, "DeleteRecords", false},
		{agentToken, "LeaseOutbox", false},
		{agentToken, "AckOutbox", false},
		{ingestToken, "WriteEvents", true},
		{ingestToken, "DeleteRecords", true},
		{ingestToken, "LeaseOutbox", false},
		{ingestToken, "GetLatest", false},
	}
	for _, tt := range tests {
		err := calls[tt.call](withToken(bg, tt.token))
		if tt.allowed {
			require.NoError(t, err, tt.call)
			continue
		}
		st := status.Convert(err)
		require.Equal(t, codes.PermissionDenied, st.Code(), tt.call)
		require.Contains(t, st.Message(), "/"+tt.call, tt.call)
		require.NotContains(t, st.Message(), tt.token)
		require.Contains(t, reasonOf(st), auth.ReasonMethodNotAllowed, tt.call)
	}
	// An invalid token is still Unauthenticated, not PermissionDenied.
	require.Equal(t, codes.Unauthenticated, status.Code(calls["GetLatest"](withToken(bg, "not-a-token"))))
}

func reasonOf(st *status.Status) string {
	for _, d := range st.Details() {
		if r, ok := d.(interface{ GetReason() string }); ok {
			return r.GetReason()
		}
	}
	return ""
}

// TestMisspelledACLMethodRefusesToStart: a SERVICE_ACL naming a method the
// server does not serve fails the start, naming it, instead of denying
// the caller silently at run time.
func TestMisspelledACLMethodRefusesToStart(t *testing.T) {
	t.Parallel()
	redisURL, prefix := testpg.NewRedis(t)
	cfg := server.Config{
		GRPCAddr: "127.0.0.1:0", AdminAddr: "127.0.0.1:0", PostgresURL: newDatabase(t), RedisURL: redisURL, RedisKeyPrefix: prefix,
		ServiceTokens: "ingest:" + ingestToken,
		ServiceACL:    "ingest=/biobridge.persistence.v1.PersistenceService/WriteEvent",
	}
	srv, err := server.New(context.Background(), cfg, testLogger(t))
	require.Error(t, err)
	require.Nil(t, srv)
	require.Contains(t, err.Error(), "SERVICE_ACL: caller ingest: /biobridge.persistence.v1.PersistenceService/WriteEvent: no such method")
}

func TestLoadConfigRequiresServiceACL(t *testing.T) {
	t.Parallel()
	env := map[string]string{"POSTGRES_URL": "postgres://x@127.0.0.1/db", "REDIS_URL": "redis://127.0.0.1:6379/0",
		"SERVICE_TOKENS": "ingest:abc", "LOG_PSEUDONYM_KEY": "0123456789abcdef"}
	_, err := server.LoadConfig(func(k string) string { return env[k] })
	require.Error(t, err)
	require.Contains(t, err.Error(), "SERVICE_ACL: is required")
	env["SERVICE_ACL_OPEN"] = "true"
	_, err = server.LoadConfig(func(k string) string { return env[k] })
	require.NoError(t, err, "development says so explicitly")
}
