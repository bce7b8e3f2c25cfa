package grpcserver_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"

	"github.com/biobridge/bridge/pkg/grpcserver"
	"github.com/biobridge/bridge/pkg/telemetry"
)

const callerTrace = "4bf92f3577b34da6a3ce929d0e0e4736"

// startTraced serves the test service with tp as its tracer provider and
// returns the server and a plain client (no otelgrpc of its own: the
// caller's trace context is sent by hand).
func startTraced(t *testing.T, tp trace.TracerProvider) (*grpcserver.Server, testpb.TestServiceClient) {
	t.Helper()
	srv, err := grpcserver.New(grpcserver.Config{Addr: "127.0.0.1:0"}, grpcserver.Options{Service: "test", Auth: tokenAuth, TracerProvider: tp})
	require.NoError(t, err)
	testpb.RegisterTestServiceServer(srv.Registrar(), &testService{release: make(chan struct{})})
	require.NoError(t, srv.Listen())
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		require.NoError(t, <-done)
	})
	conn, err := grpc.NewClient(srv.Addr(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, conn.Close()) })
	return srv, testpb.NewTestServiceClient(conn)
}

// fromCaller is a context whose calls carry a W3C trace context, as a
// traced caller's would.
func fromCaller() context.Context {
	return metadata.AppendToOutgoingContext(authed(context.Background()),
		"traceparent", "00-"+callerTrace+"-00f067aa0ba902b7-01")
}

func traceSeen(t *testing.T, client testpb.TestServiceClient) (unary, stream string) {
	t.Helper()
	resp, err := client.UnaryCall(fromCaller(), &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte("trace")}})
	require.NoError(t, err)
	st, err := client.StreamingOutputCall(fromCaller(), &testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte("trace")}})
	require.NoError(t, err)
	msg, err := st.Recv()
	require.NoError(t, err)
	return resp.GetUsername(), string(msg.GetPayload().GetBody())
}

// TestTracingWithAProvider: given a tracer provider, the server makes a
// span per call, in the caller's trace.
func TestTracingWithAProvider(t *testing.T) {
	t.Parallel()
	rec := tracetest.NewSpanRecorder()
	srv, client := startTraced(t, sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec)))
	assert.True(t, srv.Tracing())

	unary, stream := traceSeen(t, client)
	assert.Equal(t, callerTrace, unary)
	assert.Equal(t, callerTrace, stream)
	names := map[string]string{}
	for _, s := range rec.Ended() {
		names[s.Name()] = s.SpanContext().TraceID().String()
	}
	assert.Equal(t, callerTrace, names["grpc.testing.TestService/UnaryCall"], "server span of the unary call, in the caller's trace")
	assert.Equal(t, callerTrace, names["grpc.testing.TestService/StreamingOutputCall"], "server span of the stream")
}

// TestNoSpanWorkWithoutTracing: with no provider (and none installed by
// telemetry.SetupTracing) or otel's no-op one, the server skips the
// otelgrpc stats handler, yet handlers still see the caller's trace
// context, which they log and pass on (outbox entries, calls onward).
func TestNoSpanWorkWithoutTracing(t *testing.T) {
	t.Parallel()
	require.False(t, telemetry.GlobalTracing(), "no test of this package installs the global provider")
	for name, tp := range map[string]trace.TracerProvider{"none": nil, "noop": noop.NewTracerProvider()} {
		t.Run(name, func(t *testing.T) {
			srv, client := startTraced(t, tp)
			assert.False(t, srv.Tracing())
			unary, stream := traceSeen(t, client)
			assert.Equal(t, callerTrace, unary)
			assert.Equal(t, callerTrace, stream)
		})
	}
}
