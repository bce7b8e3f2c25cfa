package server_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	publisherv1 "github.com/biobridge/bridge/gen/go/biobridge/publisher/v1"
	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/services/publisher/testenv"
)

// TestServiceACL checks that with SERVICE_ACL set a valid token reaches only
// the methods listed for its caller.
func TestServiceACL(t *testing.T) {
	t.Parallel()
	env := testenv.New(t, testenv.Options{})
	cfg := env.PublisherConfig()
	const monitorToken, strangerToken = "monitor-token-123", "stranger-token-456"
	var err error
	cfg.ServiceTokens, err = auth.ParseServiceTokens("tests:" + testenv.Token + ",monitor:" + monitorToken + ",stranger:" + strangerToken)
	require.NoError(t, err)
	cfg.ServiceACL, err = auth.ParseACL("tests=/biobridge.publisher.v1.PublisherService/*;monitor=" +
		publisherv1.PublisherService_GetStatus_FullMethodName)
	require.NoError(t, err)
	pub := env.StartPublisher(cfg)
	client, testsCtx := publisherClient(t, pub.GRPCAddr())
	as := func(token string) context.Context {
		return metadata.AppendToOutgoingContext(t.Context(), "authorization", "Bearer "+token)
	}

	tests := []struct {
		name    string
		ctx     context.Context
		method  string
		allowed bool
	}{
		{"wildcard caller, status", testsCtx, "GetStatus", true},
		{"wildcard caller, list", testsCtx, "ListDeadLetters", true},
		{"wildcard caller, replay", testsCtx, "ReplayDeadLetters", true},
		{"monitor, status", as(monitorToken), "GetStatus", true},
		{"monitor, list", as(monitorToken), "ListDeadLetters", false},
		{"monitor, replay", as(monitorToken), "ReplayDeadLetters", false},
		{"unlisted caller", as(strangerToken), "GetStatus", false},
	}
	for _, tt := range tests {
		var err error
		switch tt.method {
		case "GetStatus":
			_, err = client.GetStatus(tt.ctx, &publisherv1.GetStatusRequest{})
		case "ListDeadLetters":
			_, err = client.ListDeadLetters(tt.ctx, &publisherv1.ListDeadLettersRequest{})
		case "ReplayDeadLetters":
			_, err = client.ReplayDeadLetters(tt.ctx, &publisherv1.ReplayDeadLettersRequest{})
		}
		if tt.allowed {
			require.NoError(t, err, tt.name)
			continue
		}
		st := status.Convert(err)
		require.Equal(t, codes.PermissionDenied, st.Code(), tt.name)
		require.Contains(t, st.Message(), "/"+tt.method, tt.name)
		require.NotContains(t, st.Message(), "token-", tt.name)
	}
}
