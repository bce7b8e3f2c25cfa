package e2e

import (
	"bytes"
	"net/http"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/semconv/v1.26.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/biobridge/bridge/services/devstack/stack"
)

// TestPushTraceCrossesFourServices: devstack gives each service its own
// tracer provider, so one HealthKit push is one trace with spans from the
// gateway, ingest, persistence and the publisher, each under its own
// service.name, as with the separate binaries. The trace starts at the
// gateway: a caller's traceparent is not continued.
func TestPushTraceCrossesFourServices(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	s := startStackOptions(t, nil, stack.Options{SpanExporter: exp})
	token, err := s.UserToken("trace-user-1", time.Hour)
	require.NoError(t, err)
	at := time.Now().UTC().Add(-time.Minute).Format(time.RFC3339)
	body := mustJSON(t, map[string]any{"samples": []hkSample{{UUID: "trace-1", Type: "HKQuantityTypeIdentifierHeartRate",
		Value: 61, Unit: "count/min", StartDate: at, EndDate: at, Source: watch}}})
	req, err := http.NewRequest(http.MethodPost, s.GatewayURL()+"/v1/healthkit/samples", bytes.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/json")
	const callerTrace = "4bf92f3577b34da6a3ce929d0e0e4736"
	req.Header.Set("Traceparent", "00-"+callerTrace+"-00f067aa0ba902b7-01")
	req.Header.Set("Tracestate", "caller=1")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, http.StatusOK, resp.StatusCode)

	// The push's trace is the one of the gateway's call to ingest; the
	// publisher's span joins it once the outbox entry is relayed.
	var pushTrace trace.TraceID
	var services map[string]bool
	require.Eventually(t, func() bool {
		spans := exp.GetSpans()
		for _, sp := range spans {
			if sp.Name == "biobridge.ingest.v1.IngestService/PushHealthKitSamples" && serviceName(sp) == "gateway" {
				pushTrace = sp.SpanContext.TraceID()
			}
		}
		if !pushTrace.IsValid() {
			return false
		}
		services = map[string]bool{}
		for _, sp := range spans {
			if sp.SpanContext.TraceID() == pushTrace {
				services[serviceName(sp)] = true
			}
		}
		return services["publisher"]
	}, 30*time.Second, 50*time.Millisecond, "no publisher span joined the push's trace")
	assert.Equal(t, map[string]bool{"gateway": true, "ingest": true, "persistence": true, "publisher": true}, services)
	assert.NotEqual(t, callerTrace, pushTrace.String(), "the gateway continued the caller's trace")
	for _, sp := range exp.GetSpans() {
		if sp.SpanContext.TraceID() == pushTrace && serviceName(sp) == "ingest" {
			assert.Empty(t, sp.SpanContext.TraceState().String(), "the caller's tracestate reached ingest")
		}
	}
}

func serviceName(sp tracetest.SpanStub) string {
	v, _ := sp.Resource.Set().Value(semconv.ServiceNameKey)
	return v.AsString()
}
