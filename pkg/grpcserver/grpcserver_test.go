package grpcserver_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	reflectionpb "google.golang.org/grpc/reflection/grpc_reflection_v1"
	"google.golang.org/grpc/status"

	"github.com/biobridge/bridge/pkg/apperr"
	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/pkg/config"
	"github.com/biobridge/bridge/pkg/grpcclient"
	"github.com/biobridge/bridge/pkg/grpcserver"
	"github.com/biobridge/bridge/pkg/logging"
)

const goodToken = "tok-good-0123456789"

// testService behaves according to the request payload body.
type testService struct {
	testpb.UnimplementedTestServiceServer
	release chan struct{} // "block" waits for it, ignoring ctx
}

func (s *testService) UnaryCall(ctx context.Context, req *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	switch cmd := string(req.GetPayload().GetBody()); cmd {
	case "panic":
		var m map[string]int
		m["x"]++ //nolint:staticcheck // SA5000: the nil map write is the runtime error under test
	case "panic-phi":
		panic("heart rate 187 for user-raw-42")
	case "notfound":
		return nil, apperr.E(apperr.NotFound, "no_connection", "no connection")
	case "unknown":
		return nil, errors.New("insert readings: password=hunter2 connection refused")
	case "block":
		<-s.release
	case "wait":
		<-ctx.Done()
		return nil, ctx.Err()
	case "trace":
		return &testpb.SimpleResponse{Username: trace.SpanContextFromContext(ctx).TraceID().String()}, nil
	}
	return &testpb.SimpleResponse{
		Username: auth.Caller(ctx),
		Hostname: logging.RequestID(ctx),
		Payload:  &testpb.Payload{Body: make([]byte, req.GetResponseSize())},
	}, nil
}

func (s *testService) StreamingOutputCall(req *testpb.StreamingOutputCallRequest, stream grpc.ServerStreamingServer[testpb.StreamingOutputCallResponse]) error {
	if string(req.GetPayload().GetBody()) == "notfound" {
		return apperr.E(apperr.NotFound, "nothing", "nothing to stream")
	}
	if string(req.GetPayload().GetBody()) == "trace" {
		id := trace.SpanContextFromContext(stream.Context()).TraceID().String()
		return stream.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: []byte(id)}})
	}
	for range 3 {
		body := []byte(auth.Caller(stream.Context()) + "|" + logging.RequestID(stream.Context()))
		if err := stream.Send(&testpb.StreamingOutputCallResponse{Payload: &testpb.Payload{Body: body}}); err != nil {
			return err
		}
	}
	return nil
}

func tokenAuth(ctx context.Context, _ string) (context.Context, error) {
	if auth.BearerToken(ctx) != goodToken {
		return nil, apperr.E(apperr.Unauthenticated, "invalid_token", "invalid service token")
	}
	return auth.WithCaller(ctx, "langgraph"), nil
}

// syncBuffer is a log sink safe for the server's goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

type fixture struct {
	srv    *grpcserver.Server
	svc    *testService
	reg    *prometheus.Registry
	logs   *syncBuffer
	cancel context.CancelFunc
	done   chan error
}

func start(t *testing.T, cfg grpcserver.Config) *fixture {
	t.Helper()
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	f := &fixture{svc: &testService{release: make(chan struct{})}, reg: prometheus.NewRegistry(), logs: &syncBuffer{}, done: make(chan error, 1)}
	srv, err := grpcserver.New(cfg, grpcserver.Options{
		Service:  "test",
		Logger:   logging.New(f.logs, logging.Options{Level: -4}),
		Registry: f.reg,
		Auth:     tokenAuth,
		// A private provider: trace ids without touching otel's globals.
		TracerProvider: sdktrace.NewTracerProvider(),
	})
	require.NoError(t, err)
	testpb.RegisterTestServiceServer(srv.Registrar(), f.svc)
	require.NoError(t, srv.Listen())
	f.srv = srv
	var ctx context.Context
	ctx, f.cancel = context.WithCancel(context.Background())
	go func() { f.done <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		f.cancel()
		select {
		case <-f.svc.release:
		default:
			close(f.svc.release)
		}
		require.NoError(t, <-f.done)
	})
	return f
}

func dial(t *testing.T, addr string, cfg grpcclient.Config) *grpc.ClientConn {
	t.Helper()
	conn, err := grpcclient.Dial(addr, cfg)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, conn.Close()) })
	return conn
}

func authed(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+goodToken)
}

func call(ctx context.Context, conn *grpc.ClientConn, body string, opts ...grpc.CallOption) (*testpb.SimpleResponse, error) {
	return testpb.NewTestServiceClient(conn).UnaryCall(ctx, &testpb.SimpleRequest{Payload: &testpb.Payload{Body: []byte(body)}}, opts...)
}

func TestUnaryChain(t *testing.T) {
	t.Parallel()
	f := start(t, grpcserver.Config{})
	conn := dial(t, f.srv.Addr(), grpcclient.Config{})
	ctx := context.Background()

	t.Run("health and reflection need no auth", func(t *testing.T) {
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		require.NoError(t, err)
		assert.Equal(t, healthpb.HealthCheckResponse_SERVING, resp.GetStatus())
		resp, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{Service: "grpc.testing.TestService"})
		require.NoError(t, err)
		assert.Equal(t, healthpb.HealthCheckResponse_SERVING, resp.GetStatus())

		stream, err := reflectionpb.NewServerReflectionClient(conn).ServerReflectionInfo(ctx)
		require.NoError(t, err)
		require.NoError(t, stream.Send(&reflectionpb.ServerReflectionRequest{MessageRequest: &reflectionpb.ServerReflectionRequest_ListServices{}}))
		r, err := stream.Recv()
		require.NoError(t, err)
		var names []string
		for _, s := range r.GetListServicesResponse().GetService() {
			names = append(names, s.GetName())
		}
		assert.Contains(t, names, "grpc.testing.TestService")
		require.NoError(t, stream.CloseSend())
	})

	t.Run("unauthenticated", func(t *testing.T) {
		_, err := call(ctx, conn, "ok")
		assert.Equal(t, codes.Unauthenticated, status.Code(err))
		assert.Equal(t, "invalid_token", apperr.ReasonFromStatus(status.Convert(err)))
	})

	t.Run("caller and request id reach the handler", func(t *testing.T) {
		var header metadata.MD
		resp, err := call(logging.WithRequestID(authed(ctx), "req-abc"), conn, "ok", grpc.Header(&header))
		require.NoError(t, err)
		assert.Equal(t, "langgraph", resp.GetUsername())
		assert.Equal(t, "req-abc", resp.GetHostname(), "grpcclient forwards the request id")
		assert.Equal(t, []string{"req-abc"}, header.Get("x-request-id"))
	})

	t.Run("request id generated when absent or unsafe", func(t *testing.T) {
		for _, in := range []string{"", "bad id with spaces"} {
			var header metadata.MD
			c := authed(ctx)
			if in != "" {
				c = metadata.AppendToOutgoingContext(c, "x-request-id", in)
			}
			resp, err := call(c, conn, "ok", grpc.Header(&header))
			require.NoError(t, err)
			assert.Regexp(t, `^[0-9a-f]{32}$`, resp.GetHostname())
			assert.Equal(t, []string{resp.GetHostname()}, header.Get("x-request-id"))
		}
	})

	t.Run("app errors are mapped", func(t *testing.T) {
		var trailer metadata.MD
		_, err := call(logging.WithRequestID(authed(ctx), "req-err"), conn, "notfound", grpc.Trailer(&trailer))
		assert.Equal(t, []string{"req-err"}, trailer.Get("x-request-id"), "request id in the trailer on error")
		st := status.Convert(err)
		assert.Equal(t, codes.NotFound, st.Code())
		assert.Equal(t, "no connection", st.Message())
		assert.Equal(t, "no_connection", apperr.ReasonFromStatus(st))
	})

	t.Run("unknown errors are hidden and logged", func(t *testing.T) {
		_, err := call(logging.WithRequestID(authed(ctx), "req-unknown"), conn, "unknown")
		st := status.Convert(err)
		assert.Equal(t, codes.Internal, st.Code())
		assert.Equal(t, "internal error", st.Message())
		require.Eventually(t, func() bool { return strings.Contains(f.logs.String(), "hunter2") }, 5*time.Second, 10*time.Millisecond)
		line := logLine(t, f.logs.String(), "req-unknown", "rpc failed")
		assert.Contains(t, line, "trace_id")
	})

	t.Run("panics become Internal and the server keeps serving", func(t *testing.T) {
		_, err := call(authed(ctx), conn, "panic")
		assert.Equal(t, codes.Internal, status.Code(err))
		assert.Equal(t, "internal error", status.Convert(err).Message())
		_, err = call(logging.WithRequestID(authed(ctx), "req-phi-panic"), conn, "panic-phi")
		assert.Equal(t, codes.Internal, status.Code(err))
		_, err = call(authed(ctx), conn, "ok")
		require.NoError(t, err)

		logs := f.logs.String()
		assert.Contains(t, logs, "assignment to entry in nil map", "runtime panics are logged")
		assert.Contains(t, logs, "goroutine", "with a stack")
		assert.NotContains(t, logs, "user-raw-42", "arbitrary panic values may be PHI")
		assert.NotContains(t, logs, "heart rate 187")
		logLine(t, logs, "req-phi-panic", "panic in rpc handler")
	})

	t.Run("messages over gRPC's 4 MiB default", func(t *testing.T) {
		resp, err := testpb.NewTestServiceClient(conn).UnaryCall(authed(ctx), &testpb.SimpleRequest{
			Payload:      &testpb.Payload{Body: make([]byte, 6<<20)},
			ResponseSize: 6 << 20,
		})
		require.NoError(t, err)
		assert.Len(t, resp.GetPayload().GetBody(), 6<<20)
	})

	t.Run("metrics record mapped codes", func(t *testing.T) {
		families, err := f.reg.Gather()
		require.NoError(t, err)
		handled := map[string]float64{}
		var histogram bool
		for _, fam := range families {
			switch fam.GetName() {
			case "grpc_server_handled_total":
				for _, m := range fam.GetMetric() {
					labels := map[string]string{}
					for _, l := range m.GetLabel() {
						labels[l.GetName()] = l.GetValue()
					}
					if labels["grpc_method"] == "UnaryCall" {
						handled[labels["grpc_code"]] += m.GetCounter().GetValue()
					}
				}
			case "grpc_server_handling_seconds":
				histogram = true
			}
		}
		assert.Positive(t, handled["NotFound"])
		assert.Positive(t, handled["Internal"])
		assert.Positive(t, handled["Unauthenticated"])
		assert.Positive(t, handled["OK"])
		assert.Zero(t, handled["Unknown"], "app errors are mapped before metrics see them")
		assert.True(t, histogram)
	})
}

// logLine returns the log line containing all parts.
func logLine(t *testing.T, logs string, parts ...string) string {
	t.Helper()
	for _, line := range strings.Split(logs, "\n") {
		ok := true
		for _, p := range parts {
			ok = ok && strings.Contains(line, p)
		}
		if ok {
			return line
		}
	}
	t.Fatalf("no log line with %q in:\n%s", parts, logs)
	return ""
}

func TestStreamChain(t *testing.T) {
	t.Parallel()
	f := start(t, grpcserver.Config{})
	conn := dial(t, f.srv.Addr(), grpcclient.Config{DefaultTimeout: time.Nanosecond})
	client := testpb.NewTestServiceClient(conn)
	ctx := context.Background()

	// DefaultTimeout is not applied to streams: a 1ns default would fail this.
	stream, err := client.StreamingOutputCall(logging.WithRequestID(authed(ctx), "req-stream"), &testpb.StreamingOutputCallRequest{})
	require.NoError(t, err)
	var got []string
	for {
		msg, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		require.NoError(t, err)
		got = append(got, string(msg.GetPayload().GetBody()))
	}
	assert.Equal(t, []string{"langgraph|req-stream", "langgraph|req-stream", "langgraph|req-stream"}, got)

	stream, err = client.StreamingOutputCall(ctx, &testpb.StreamingOutputCallRequest{})
	require.NoError(t, err)
	_, err = stream.Recv()
	assert.Equal(t, codes.Unauthenticated, status.Code(err))

	stream, err = client.StreamingOutputCall(authed(ctx), &testpb.StreamingOutputCallRequest{Payload: &testpb.Payload{Body: []byte("notfound")}})
	require.NoError(t, err)
	_, err = stream.Recv()
	assert.Equal(t, codes.NotFound, status.Code(err))
	assert.Equal(t, "nothing", apperr.ReasonFromStatus(status.Convert(err)))
}

func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	f := start(t, grpcserver.Config{GracePeriod: time.Minute})
	conn := dial(t, f.srv.Addr(), grpcclient.Config{})
	health := healthpb.NewHealthClient(conn)

	watchCtx, stopWatch := context.WithCancel(context.Background())
	defer stopWatch()
	watch, err := health.Watch(watchCtx, &healthpb.HealthCheckRequest{})
	require.NoError(t, err)
	first, err := watch.Recv()
	require.NoError(t, err)
	require.Equal(t, healthpb.HealthCheckResponse_SERVING, first.GetStatus())

	inflight := make(chan error, 1)
	go func() {
		_, err := call(authed(context.Background()), conn, "block")
		inflight <- err
	}()
	// Wait until the call is in the handler (counted as started, not handled).
	require.Eventually(t, func() bool { return startedCalls(t, f.reg) >= 1 }, 5*time.Second, 10*time.Millisecond)

	f.cancel()
	next, err := watch.Recv()
	require.NoError(t, err)
	assert.Equal(t, healthpb.HealthCheckResponse_NOT_SERVING, next.GetStatus(), "health flips before the drain")
	stopWatch() // an open Watch stream would hold up the drain like any call

	select {
	case err := <-f.done:
		t.Fatalf("Serve returned (%v) while a call was in flight within the grace period", err)
	default:
	}
	close(f.svc.release)
	require.NoError(t, <-inflight, "the in-flight call completes")
	require.NoError(t, <-f.done)
	f.done <- nil // for the cleanup
}

func TestGracePeriodBoundsShutdown(t *testing.T) {
	t.Parallel()
	f := start(t, grpcserver.Config{GracePeriod: 50 * time.Millisecond})
	conn := dial(t, f.srv.Addr(), grpcclient.Config{})
	inflight := make(chan error, 1)
	go func() {
		_, err := call(authed(context.Background()), conn, "block")
		inflight <- err
	}()
	require.Eventually(t, func() bool { return startedCalls(t, f.reg) >= 1 }, 5*time.Second, 10*time.Millisecond)
	f.cancel()
	require.NoError(t, <-f.done, "Serve returns after the grace period although the handler never does")
	assert.Equal(t, codes.Unavailable, status.Code(<-inflight))
	f.done <- nil
}

func startedCalls(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	families, err := reg.Gather()
	require.NoError(t, err)
	var n float64
	for _, fam := range families {
		if fam.GetName() == "grpc_server_started_total" {
			for _, m := range fam.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "grpc_method" && l.GetValue() == "UnaryCall" {
						n += m.GetCounter().GetValue()
					}
				}
			}
		}
	}
	return n
}

func TestTLS(t *testing.T) {
	t.Parallel()
	p := newPKI(t)
	ctx := context.Background()

	t.Run("tls", func(t *testing.T) {
		f := start(t, grpcserver.Config{TLS: config.TLSFiles{CertFile: p.server.CertFile, KeyFile: p.server.KeyFile}})
		_, err := call(authed(ctx), dial(t, f.srv.Addr(), grpcclient.Config{TLS: p.ca}), "ok")
		require.NoError(t, err)
		_, err = call(authed(ctx), dial(t, f.srv.Addr(), grpcclient.Config{}), "ok")
		assert.Equal(t, codes.Unavailable, status.Code(err), "plaintext client cannot talk to a TLS server")
	})

	t.Run("mutual tls", func(t *testing.T) {
		f := start(t, grpcserver.Config{TLS: p.server})
		_, err := call(authed(ctx), dial(t, f.srv.Addr(), grpcclient.Config{TLS: p.client}), "ok")
		require.NoError(t, err)
		_, err = call(authed(ctx), dial(t, f.srv.Addr(), grpcclient.Config{TLS: p.ca}), "ok")
		require.Error(t, err, "a client without a certificate is refused")
		assert.Equal(t, codes.Unavailable, status.Code(err))
	})

	t.Run("ca without key pair is a config error", func(t *testing.T) {
		_, err := grpcserver.New(grpcserver.Config{TLS: p.ca}, grpcserver.Options{})
		require.Error(t, err)
	})
}

func TestServersShareRegistry(t *testing.T) {
	t.Parallel()
	reg := prometheus.NewRegistry()
	for range 2 {
		_, err := grpcserver.New(grpcserver.Config{}, grpcserver.Options{Registry: reg})
		require.NoError(t, err, "devstack runs several servers on one registry")
	}
}
