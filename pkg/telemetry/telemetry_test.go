package telemetry_test

import (
	"context"
	"net"
	"net/http"
	"sync"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/trace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"

	"github.com/biobridge/bridge/pkg/telemetry"
)

func TestNewRegistry(t *testing.T) {
	t.Parallel()
	families, err := telemetry.NewRegistry().Gather()
	require.NoError(t, err)
	names := map[string]bool{}
	for _, f := range families {
		names[f.GetName()] = true
	}
	assert.True(t, names["go_goroutines"])
	assert.True(t, names["process_cpu_seconds_total"] || names["process_start_time_seconds"], "process collector (Linux)")
}

func env(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

// collector is an in-process OTLP/gRPC trace collector.
type collector struct {
	coltracepb.UnimplementedTraceServiceServer
	mu       sync.Mutex
	services []string
}

func (c *collector) Export(_ context.Context, req *coltracepb.ExportTraceServiceRequest) (*coltracepb.ExportTraceServiceResponse, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		for _, a := range rs.GetResource().GetAttributes() {
			if a.GetKey() == "service.name" {
				c.services = append(c.services, a.GetValue().GetStringValue())
			}
		}
	}
	return &coltracepb.ExportTraceServiceResponse{}, nil
}

func (c *collector) received() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.services...)
}

func startCollector(t *testing.T) (*collector, string) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	c := &collector{}
	srv := grpc.NewServer()
	coltracepb.RegisterTraceServiceServer(srv, c)
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(srv.Stop)
	return c, ln.Addr().String()
}

// SetupTracing mutates otel's globals, so these subtests run sequentially.
func TestSetupTracing(t *testing.T) {
	col, addr := startCollector(t)
	tests := []struct {
		name         string
		env          map[string]string
		sampled      bool
		wantExported string
		wantErr      string
	}{
		{name: "no endpoint still traces", env: map[string]string{}, sampled: true},
		{name: "exporter none", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": "http://" + addr, "OTEL_TRACES_EXPORTER": "none", "OTEL_SERVICE_NAME": "not-exported"}, sampled: true},
		{name: "otlp traces endpoint", env: map[string]string{"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://" + addr}, sampled: true, wantExported: "test-svc"},
		{name: "endpoint without scheme", env: map[string]string{"OTEL_EXPORTER_OTLP_ENDPOINT": addr, "OTEL_EXPORTER_OTLP_INSECURE": "true", "OTEL_SERVICE_NAME": "renamed"}, sampled: true, wantExported: "renamed"},
		{name: "sampler off", env: map[string]string{"OTEL_TRACES_SAMPLER": "always_off"}, sampled: false},
		{name: "ratio zero", env: map[string]string{"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0"}, sampled: false},
		{name: "bad sampler", env: map[string]string{"OTEL_TRACES_SAMPLER": "sometimes"}, wantErr: "OTEL_TRACES_SAMPLER"},
		{name: "bad ratio", env: map[string]string{"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "2"}, wantErr: "OTEL_TRACES_SAMPLER_ARG"},
		{name: "bad exporter", env: map[string]string{"OTEL_TRACES_EXPORTER": "zipkin"}, wantErr: "OTEL_TRACES_EXPORTER"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			shutdown, err := telemetry.SetupTracing(ctx, "test-svc", env(tt.env))
			if tt.wantErr != "" {
				require.ErrorContains(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.True(t, telemetry.GlobalTracing(), "servers left to the global provider make spans")
			ctx, span := otel.Tracer("test").Start(ctx, "op")
			sc := span.SpanContext()
			assert.True(t, sc.IsValid(), "trace ids exist without an exporter")
			assert.Equal(t, tt.sampled, sc.IsSampled())
			span.End()

			// The global propagator carries the trace to the next hop.
			h := http.Header{}
			otel.GetTextMapPropagator().Inject(ctx, propagationHeader(h))
			assert.NotEmpty(t, h.Get("traceparent"))
			before := len(col.received())
			require.NoError(t, shutdown(context.Background()), "shutdown flushes")
			got := col.received()[before:]
			if tt.wantExported == "" {
				assert.Empty(t, got)
			} else {
				assert.Equal(t, []string{tt.wantExported}, got)
			}
		})
	}
	assert.NotContains(t, col.received(), "not-exported")
}

type propagationHeader http.Header

func (h propagationHeader) Get(k string) string { return http.Header(h).Get(k) }
func (h propagationHeader) Set(k, v string)     { http.Header(h).Set(k, v) }
func (h propagationHeader) Keys() []string {
	var out []string
	for k := range h {
		out = append(out, k)
	}
	return out
}

func TestInjectExtractRoundTrip(t *testing.T) {
	t.Parallel()
	traceID, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	spanID, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	ctx := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: traceID, SpanID: spanID, TraceFlags: trace.FlagsSampled,
	}))
	member, err := baggage.NewMember("tenant", "acme")
	require.NoError(t, err)
	bag, err := baggage.New(member)
	require.NoError(t, err)
	ctx = baggage.ContextWithBaggage(ctx, bag)

	// A Kafka-style header list.
	type header struct{ k, v string }
	var headers []header
	telemetry.Inject(ctx, func(k, v string) { headers = append(headers, header{k, v}) })
	get := func(k string) string {
		for _, h := range headers {
			if h.k == k {
				return h.v
			}
		}
		return ""
	}
	assert.Equal(t, "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", get("traceparent"))
	assert.Equal(t, get("traceparent"), telemetry.TraceParent(ctx))

	out := telemetry.Extract(context.Background(), get, nil)
	sc := trace.SpanContextFromContext(out)
	assert.True(t, sc.IsRemote())
	assert.Equal(t, traceID, sc.TraceID())
	assert.Equal(t, spanID, sc.SpanID())
	assert.Equal(t, "acme", baggage.FromContext(out).Member("tenant").Value())

	assert.Empty(t, telemetry.TraceParent(context.Background()))
	assert.False(t, trace.SpanContextFromContext(telemetry.Extract(context.Background(), func(string) string { return "" }, nil)).IsValid())
}
