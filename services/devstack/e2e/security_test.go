package e2e

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	tokensv1 "github.com/biobridge/bridge/gen/go/biobridge/tokens/v1"
	"github.com/biobridge/bridge/services/devstack/stack"
)

// TestAccountLinkingCSRF is the attack of RFC 9700 §4.7 through the real
// stack: user A (the attacker) starts linking WHOOP and sends the authorize
// link to user B; B's browser approves at the vendor with B's WHOOP
// account. The vendor's redirect lands in B's app, signed in as B. B's
// WHOOP account must not be linked to A, the refusal must say why, and the
// legitimate flow must still work.
func TestAccountLinkingCSRF(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	ctx := context.Background()

	app, err := s.AuthorizeInBrowser(ctx, "user-a", "user-b-whoop", "whoop")
	require.NoError(t, err, "the callback forwards to the app's return URL")
	require.NotEmpty(t, app.Get("code"))

	// B's app completes with B's JWT: refused, nothing linked.
	err = s.CompleteInApp(ctx, "user-b", "whoop", app)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "403")
	assert.Contains(t, err.Error(), "started_by_another_user")
	assert.Contains(t, err.Error(), "started from another account: nothing was linked")
	// Even A holding the code now gets nothing: the state is spent.
	err = s.CompleteInApp(ctx, "user-a", "whoop", app)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "invalid_state")
	for _, user := range []string{"user-a", "user-b"} {
		assert.Empty(t, connections(t, s, user), "%s has no connection", user)
	}
	assert.Zero(t, s.Emulator.Counters().Whoop.TokensIssued, "the authorization code was never exchanged")

	// The legitimate flow: B links B's own account from B's app.
	require.NoError(t, s.Connect(ctx, "user-b", "whoop"))
	got := connections(t, s, "user-b")
	require.Len(t, got, 1)
	assert.Equal(t, "CONNECTION_STATUS_ACTIVE", got[0])
	assert.Empty(t, connections(t, s, "user-a"))
}

func connections(t *testing.T, s *stack.Stack, user string) []string {
	t.Helper()
	tok, err := s.UserToken(user, time.Hour)
	require.NoError(t, err)
	r := do(t, http.MethodGet, s.GatewayURL()+"/v1/connections", tok, nil)
	require.Equal(t, http.StatusOK, r.Code, "%s", r.Body)
	var body struct {
		Connections []struct {
			Status string `json:"status"`
		} `json:"connections"`
	}
	r.JSON(t, &body)
	out := make([]string, len(body.Connections))
	for i, c := range body.Connections {
		out[i] = c.Status
	}
	return out
}

// TestDevstackRunsLeastPrivilege: the token agents and REST callers
// present cannot drain the outbox, delete records or fetch vendor tokens
// in development either.
func TestDevstackRunsLeastPrivilege(t *testing.T) {
	t.Parallel()
	s := startStack(t)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+s.AgentToken())
	dial := func(addr string) *grpc.ClientConn {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		require.NoError(t, err)
		t.Cleanup(func() { _ = conn.Close() })
		return conn
	}
	persist := persistencev1.NewPersistenceServiceClient(dial(s.Env("PERSISTENCE_GRPC_ADDR")))
	broker := tokensv1.NewTokenBrokerServiceClient(dial(s.Env("TOKENBROKER_GRPC_ADDR")))
	calls := map[string]func() error{
		"LeaseOutbox": func() error {
			_, err := persist.LeaseOutbox(ctx, &persistencev1.LeaseOutboxRequest{Holder: "agent"})
			return err
		},
		"AckOutbox": func() error {
			_, err := persist.AckOutbox(ctx, &persistencev1.AckOutboxRequest{})
			return err
		},
		"DeleteRecords": func() error {
			_, err := persist.DeleteRecords(ctx, &persistencev1.DeleteRecordsRequest{})
			return err
		},
		"GetAccessToken": func() error {
			_, err := broker.GetAccessToken(ctx, &tokensv1.GetAccessTokenRequest{UserId: "u", Vendor: "whoop"})
			return err
		},
	}
	for name, call := range calls {
		err := call()
		assert.Equal(t, codes.PermissionDenied, status.Code(err), "%s: %v", name, err)
		assert.True(t, strings.Contains(status.Convert(err).Message(), "may not call"), "%s: %v", name, err)
	}
}
