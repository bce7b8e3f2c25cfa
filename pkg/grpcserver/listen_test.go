package grpcserver_test

import (
	"context"
	"net"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	testpb "google.golang.org/grpc/interop/grpc_testing"

	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/pkg/config"
	"github.com/biobridge/bridge/pkg/grpcserver"
)

// TestPlaintextBindsLoopback: without TLS a server never listens on a
// public interface unless GRPC_ALLOW_PLAINTEXT says so.
func TestPlaintextBindsLoopback(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		addr     string
		allow    bool
		wantHost string
		wantErr  string
	}{
		{name: "wildcard port becomes loopback", addr: ":0", wantHost: "127.0.0.1"},
		{name: "0.0.0.0 becomes loopback", addr: "0.0.0.0:0", wantHost: "127.0.0.1"},
		{name: "loopback stays", addr: "127.0.0.1:0", wantHost: "127.0.0.1"},
		{name: "a public address is refused", addr: "192.0.2.10:0", wantErr: "GRPC_ALLOW_PLAINTEXT"},
		{name: "allowed explicitly: every interface", addr: ":0", allow: true, wantHost: "::"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			srv, err := grpcserver.New(grpcserver.Config{Addr: tt.addr, TLS: config.TLSFiles{AllowPlaintext: tt.allow}}, grpcserver.Options{})
			require.NoError(t, err)
			err = srv.Listen()
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				return
			}
			require.NoError(t, err)
			t.Cleanup(func() { closeServer(t, srv) })
			host, _, err := net.SplitHostPort(srv.Addr())
			require.NoError(t, err)
			if tt.wantHost == "::" {
				assert.True(t, net.ParseIP(host).IsUnspecified(), "bound %s", srv.Addr())
				return
			}
			assert.Equal(t, tt.wantHost, host)
		})
	}
}

// TestACLCheckedAgainstRegisteredServices: a misspelled method or service
// in SERVICE_ACL fails the start, naming it.
func TestACLCheckedAgainstRegisteredServices(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		acl     string
		wantErr []string
	}{
		{name: "served methods", acl: "a=/grpc.testing.TestService/UnaryCall|/grpc.testing.TestService/FullDuplexCall;b=/grpc.testing.TestService/*"},
		{name: "global wildcard", acl: "a=*"},
		{name: "misspelled method", acl: "a=/grpc.testing.TestService/UnaryCal",
			wantErr: []string{"caller a: /grpc.testing.TestService/UnaryCal: no such method", "this server serves grpc.testing.TestService"}},
		{name: "misspelled service", acl: "a=/grpc.testing.TestServce/UnaryCall;b=/grpc.testing.Nope/*",
			wantErr: []string{"caller a: /grpc.testing.TestServce/UnaryCall: no such service here", "caller b: /grpc.testing.Nope/*: no such service here"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			acl, err := auth.ParseACL(tt.acl)
			require.NoError(t, err)
			srv, err := grpcserver.New(grpcserver.Config{Addr: "127.0.0.1:0"}, grpcserver.Options{ACL: acl})
			require.NoError(t, err)
			testpb.RegisterTestServiceServer(srv.Registrar(), &testService{})
			err = srv.Listen()
			if len(tt.wantErr) == 0 {
				require.NoError(t, err)
				closeServer(t, srv)
				return
			}
			require.Error(t, err)
			for _, w := range tt.wantErr {
				assert.Contains(t, err.Error(), w)
			}
		})
	}
}

func closeServer(t *testing.T, srv *grpcserver.Server) {
	t.Helper()
	ctx, cancel := contextDone()
	defer cancel()
	require.NoError(t, srv.Serve(ctx))
}

// contextDone returns a finished context: Serve with it closes the bound
// listener at once.
func contextDone() (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx, cancel
}

// TestCloseReleasesThePort: a server that listened but will never serve
// gives its port back on Close, and cannot serve after it.
func TestCloseReleasesThePort(t *testing.T) {
	t.Parallel()
	srv, err := grpcserver.New(grpcserver.Config{Addr: "127.0.0.1:0"}, grpcserver.Options{})
	require.NoError(t, err)
	require.NoError(t, srv.Listen())
	addr := srv.Addr()
	require.NoError(t, srv.Close())
	ln, err := net.Listen("tcp", addr)
	require.NoError(t, err, "the port is still bound after Close")
	require.NoError(t, ln.Close())
	require.Error(t, srv.Serve(context.Background()), "a closed server does not serve")
	require.NoError(t, srv.Close(), "closing twice is harmless")
}

// TestCloseAfterServe: Close after Serve returned does not fail.
func TestCloseAfterServe(t *testing.T) {
	t.Parallel()
	srv, err := grpcserver.New(grpcserver.Config{Addr: "127.0.0.1:0"}, grpcserver.Options{})
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.NoError(t, srv.Serve(ctx))
	require.NoError(t, srv.Close())
}
