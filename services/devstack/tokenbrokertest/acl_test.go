package tokenbrokertest

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/biobridge/bridge/emulator"
	tokensv1 "github.com/biobridge/bridge/gen/go/biobridge/tokens/v1"
	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/services/tokenbroker/server"
)

// TestServiceACL checks that with SERVICE_ACL set a valid service token
// reaches only the service-token methods listed for its caller, while the
// user-JWT and state methods keep working.
func TestServiceACL(t *testing.T) {
	e := newEnv(t, emulator.Config{})
	cfg := e.config()
	cfg.Oura = server.VendorConfig{}
	const gatewayToken = "gateway-test-token"
	cfg.ServiceTokens = "ingest:" + serviceToken + ",gateway:" + gatewayToken
	cfg.ServiceACL = "ingest=" + tokensv1.TokenBrokerService_GetAccessToken_FullMethodName +
		"|" + tokensv1.TokenBrokerService_ResolveVendorUser_FullMethodName
	in := e.start(cfg)
	connect(t, in, "user-1", "whoop", "alice") // StartAuthorization (JWT) and CompleteAuthorization (state)
	gwCtx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer "+gatewayToken)

	tests := []struct {
		name string
		call func() error
		code codes.Code
	}{
		{"listed caller, GetAccessToken", func() error {
			_, err := in.client.GetAccessToken(svcCtx(), &tokensv1.GetAccessTokenRequest{UserId: "user-1", Vendor: "whoop"})
			return err
		}, codes.OK},
		{"listed caller, ResolveVendorUser", func() error {
			_, err := in.client.ResolveVendorUser(svcCtx(), &tokensv1.ResolveVendorUserRequest{Vendor: "whoop", VendorUserId: "alice"})
			return err
		}, codes.Unknown}, // allowed: whatever the lookup answers, not a refusal
		{"listed caller, method not listed", func() error {
			_, err := in.client.ListActiveConnections(svcCtx(), &tokensv1.ListActiveConnectionsRequest{})
			return err
		}, codes.PermissionDenied},
		{"unlisted caller, GetAccessToken", func() error {
			_, err := in.client.GetAccessToken(gwCtx, &tokensv1.GetAccessTokenRequest{UserId: "user-1", Vendor: "whoop"})
			return err
		}, codes.PermissionDenied},
		{"user JWT methods are not subject to the ACL", func() error {
			_, err := in.client.ListConnections(userCtx(t, "user-1"), &tokensv1.ListConnectionsRequest{})
			return err
		}, codes.OK},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call()
			switch tc.code {
			case codes.OK:
				require.NoError(t, err)
			case codes.PermissionDenied:
				requireCode(t, err, codes.PermissionDenied, auth.ReasonMethodNotAllowed)
				require.NotContains(t, err.Error(), "test-token")
			default:
				code := status.Code(err)
				require.NotEqual(t, codes.PermissionDenied, code, "%v", err)
				require.NotEqual(t, codes.Unauthenticated, code, "%v", err)
			}
		})
	}
}
