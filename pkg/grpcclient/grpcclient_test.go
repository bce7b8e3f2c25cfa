package grpcclient_test

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/biobridge/bridge/pkg/apperr"
	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/pkg/config"
	"github.com/biobridge/bridge/pkg/grpcclient"
	"github.com/biobridge/bridge/pkg/grpcserver"
	"github.com/biobridge/bridge/pkg/logging"
)

type service struct {
	testpb.UnimplementedTestServiceServer
	calls atomic.Int32
}

func (s *service) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	n := s.calls.Add(1)
	switch string(req.GetPayload().GetBody()) {
	case "wait":
		<-ctx.Done()
		return nil, ctx.Err()
	case "refuse":
		return nil, apperr.E(apperr.Unauthenticated, "invalid_token", "invalid service token")
	case "deny":
		return nil, apperr.E(apperr.PermissionDenied, "method_not_allowed", "caller may not call")
	case "flaky":
		if n <= 2 {
			return nil, apperr.E(apperr.Unavailable, "warming_up", "try again")
		}
	}
	return &testpb.SimpleResponse{Hostname: logging.RequestID(ctx)}, nil
}

func start(t *testing.T) (string, *service) {
	t.Helper()
	srv, err := grpcserver.New(grpcserver.Config{Addr: "127.0.0.1:0"}, grpcserver.Options{Service: "test"})
	require.NoError(t, err)
	svc := &service{}
	testpb.RegisterTestServiceServer(srv.Registrar(), svc)
	require.NoError(t, srv.Listen())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	return srv.Addr(), svc
}

func client(t *testing.T, addr string, cfg grpcclient.Config) testpb.TestServiceClient {
	t.Helper()
	conn, err := grpcclient.Dial(addr, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, conn.Close()) })
	return testpb.NewTestServiceClient(conn)
}

func body(s string) *testpb.SimpleRequest {
	return &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte(s)}}
}

func TestDefaultTimeout(t *testing.T) {
	t.Parallel()
	addr, _ := start(t)
	c := client(t, addr, grpcclient.Config{DefaultTimeout: 50 * time.Millisecond})

	_, err := c.UnaryCall(context.Background(), body("wait"))
	assert.Equal(t, codes.DeadlineExceeded, status.Code(err), "a call without deadline gets the default")

	// The caller's own deadline wins over the default.
	ctx, cancel := context.WithCancel(context.Background())
	result := make(chan error, 1)
	go func() {
		ctx, cancelTimeout := context.WithTimeout(ctx, time.Hour)
		defer cancelTimeout()
		_, err := c.UnaryCall(ctx, body("wait"))
		result <- err
	}()
	select {
	case err := <-result:
		t.Fatalf("call with its own deadline ended early: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	cancel()
	assert.Equal(t, codes.Canceled, status.Code(<-result))
}

func TestRetriesOnlyIdempotentServices(t *testing.T) {
	t.Parallel()
	t.Run("idempotent", func(t *testing.T) {
		t.Parallel()
		addr, svc := start(t)
		c := client(t, addr, grpcclient.Config{IdempotentServices: []string{"grpc.testing.TestService"}})
		_, err := c.UnaryCall(context.Background(), body("flaky"))
		require.NoError(t, err)
		assert.EqualValues(t, 3, svc.calls.Load(), "two UNAVAILABLE answers retried")
	})
	t.Run("not listed", func(t *testing.T) {
		t.Parallel()
		addr, svc := start(t)
		c := client(t, addr, grpcclient.Config{IdempotentServices: []string{"biobridge.other.v1.OtherService"}})
		_, err := c.UnaryCall(context.Background(), body("flaky"))
		assert.Equal(t, codes.Unavailable, status.Code(err))
		assert.EqualValues(t, 1, svc.calls.Load())
	})
}

func TestRequestIDForwarding(t *testing.T) {
	t.Parallel()
	addr, _ := start(t)
	c := client(t, addr, grpcclient.Config{})

	resp, err := c.UnaryCall(logging.WithRequestID(context.Background(), "req-from-gateway"), body("ok"))
	require.NoError(t, err)
	assert.Equal(t, "req-from-gateway", resp.GetHostname())

	ctx := metadata.AppendToOutgoingContext(logging.WithRequestID(context.Background(), "req-ctx"), "x-request-id", "req-explicit")
	resp, err = c.UnaryCall(ctx, body("ok"))
	require.NoError(t, err)
	assert.Equal(t, "req-explicit", resp.GetHostname(), "an explicit id is not overridden")
}

func TestDialBadTLSFiles(t *testing.T) {
	t.Parallel()
	_, err := grpcclient.Dial("127.0.0.1:1", grpcclient.Config{TLS: config.TLSFiles{CAFile: "/nonexistent/ca.pem"}})
	require.ErrorContains(t, err, "read tls ca file")
}

// TestOwnCredentialsRefusalIsInternal: with a ServiceToken a callee's
// refusal of this service's token is an internal error (the end caller
// gets 500, not a 401 about their own credentials) naming what to check;
// without it, as in the gateway, the refusal passes through.
func TestOwnCredentialsRefusalIsInternal(t *testing.T) {
	t.Parallel()
	addr, _ := start(t)
	own := client(t, addr, grpcclient.Config{ServiceToken: "some-token"})
	forwarded := client(t, addr, grpcclient.Config{})
	for _, cmd := range []string{"refuse", "deny"} {
		_, err := own.UnaryCall(context.Background(), body(cmd))
		require.Error(t, err)
		assert.Equal(t, apperr.Internal, apperr.CodeOf(err), cmd)
		assert.Equal(t, grpcclient.ReasonInternalAuthFailed, apperr.ReasonOf(err))
		assert.Contains(t, err.Error(), "SERVICE_TOKENS")
		assert.Contains(t, err.Error(), "/grpc.testing.TestService/UnaryCall")
		st, _ := apperr.ToStatus(err)
		assert.Equal(t, codes.Internal, st.Code())

		_, err = forwarded.UnaryCall(context.Background(), body(cmd))
		assert.Contains(t, []codes.Code{codes.Unauthenticated, codes.PermissionDenied}, status.Code(err), cmd)
	}
	_, err := own.UnaryCall(context.Background(), body("ok"))
	require.NoError(t, err)
}

// TestServiceTokenIsSent: a connection with a ServiceToken authenticates
// every call, unary and streaming, without the call site adding anything;
// one without it carries no credentials of its own.
func TestServiceTokenIsSent(t *testing.T) {
	t.Parallel()
	tokens, err := auth.ParseServiceTokens("ingest:ingest-token")
	require.NoError(t, err)
	srv, err := grpcserver.New(grpcserver.Config{Addr: "127.0.0.1:0"}, grpcserver.Options{
		Service: "test",
		Auth:    auth.ServiceHook(tokens, nil),
	})
	require.NoError(t, err)
	svc := &callerService{}
	testpb.RegisterTestServiceServer(srv.Registrar(), svc)
	require.NoError(t, srv.Listen())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})

	own := client(t, srv.Addr(), grpcclient.Config{ServiceToken: "ingest-token"})
	resp, err := own.UnaryCall(context.Background(), body("ok"))
	require.NoError(t, err)
	assert.Equal(t, "ingest", resp.GetUsername())
	stream, err := own.StreamingOutputCall(context.Background(), &testpb.StreamingOutputCallRequest{})
	require.NoError(t, err)
	msg, err := stream.Recv()
	require.NoError(t, err)
	assert.Equal(t, "ingest", string(msg.GetPayload().GetBody()))

	_, err = client(t, srv.Addr(), grpcclient.Config{}).UnaryCall(context.Background(), body("ok"))
	assert.Equal(t, codes.Unauthenticated, status.Code(err))
}

// callerService answers with the authenticated caller's name.
type callerService struct {
	testpb.UnimplementedTestServiceServer
}

func (callerService) UnaryCall(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	return &testpb.SimpleResponse{Username: auth.Caller(ctx)}, nil
}

func (callerService) StreamingOutputCall(_ *testpb.StreamingOutputCallRequest, stream testpb.TestService_StreamingOutputCallServer) error {
	return stream.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: []byte(auth.Caller(stream.Context()))}})
}
