package server

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/metadata"

	ingestv1 "github.com/biobridge/bridge/gen/go/biobridge/ingest/v1"
	"github.com/biobridge/bridge/pkg/apperr"
	"github.com/biobridge/bridge/pkg/auth"
)

// TestAuthenticate checks the auth hook method by method, including that a
// method it does not list is refused even with valid credentials.
func TestAuthenticate(t *testing.T) {
	t.Parallel()
	secret := []byte("user-token-secret-for-ingest-tests-0123")
	tokens, err := auth.ParseServiceTokens("ops:ops-token,gateway:gateway-token")
	require.NoError(t, err)
	acl, err := auth.ParseACL("ops=" + methodListJobs + "|" + methodRetryJobs)
	require.NoError(t, err)
	hook := authenticate(tokens, acl, auth.NewUserVerifier(secret))
	jwt, err := auth.IssueUserToken(secret, "user-1", time.Hour)
	require.NoError(t, err)
	bearer := func(tok string) context.Context {
		if tok == "" {
			return context.Background()
		}
		return metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", "Bearer "+tok))
	}

	tests := []struct {
		name       string
		method     string
		token      string
		wantCode   apperr.Code // 0: allowed
		wantCaller string
		wantUser   string
	}{
		{"whoop webhook needs no token", ingestv1.IngestService_HandleWhoopWebhook_FullMethodName, "", 0, "", ""},
		{"oura webhook needs no token", ingestv1.IngestService_HandleOuraWebhook_FullMethodName, "", 0, "", ""},
		{"oura handshake needs no token", ingestv1.IngestService_VerifyOuraWebhook_FullMethodName, "", 0, "", ""},
		{"push with a user token", ingestv1.IngestService_PushHealthKitSamples_FullMethodName, jwt, 0, "", "user-1"},
		{"push with a service token", ingestv1.IngestService_PushHealthKitSamples_FullMethodName, "ops-token", apperr.Unauthenticated, "", ""},
		{"allowed service method", ingestv1.IngestService_ListJobs_FullMethodName, "ops-token", 0, "ops", ""},
		{"service method without a token", ingestv1.IngestService_ListJobs_FullMethodName, "", apperr.Unauthenticated, "", ""},
		{"service method not in the caller's ACL", ingestv1.IngestService_IngestEvents_FullMethodName, "ops-token", apperr.PermissionDenied, "", ""},
		{"caller not in the ACL", ingestv1.IngestService_ListJobs_FullMethodName, "gateway-token", apperr.PermissionDenied, "", ""},
		{"backfill progress is a service method", ingestv1.IngestService_GetBackfillProgress_FullMethodName, jwt, apperr.Unauthenticated, "", ""},
		{"unlisted method fails closed", "/biobridge.ingest.v1.IngestService/DropEverything", "ops-token", apperr.PermissionDenied, "", ""},
		{"unlisted method without a token", "/biobridge.ingest.v1.IngestService/DropEverything", "", apperr.PermissionDenied, "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx, err := hook(bearer(tt.token), tt.method)
			if tt.wantCode != 0 {
				require.Error(t, err)
				require.Equal(t, tt.wantCode, apperr.CodeOf(err), "%v", err)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.wantCaller, auth.Caller(ctx))
			require.Equal(t, tt.wantUser, auth.User(ctx))
		})
	}
}
