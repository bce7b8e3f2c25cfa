package relay

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	"github.com/biobridge/bridge/services/publisher/kafka"
)

// TestProducerSpanContinuesTheWritersTrace checks that the message's
// traceparent names a producer span that is a child of the span recorded
// with the outbox entry, so a trace runs from the webhook to the consumer.
func TestProducerSpanContinuesTheWritersTrace(t *testing.T) {
	t.Parallel()
	exporter := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exporter))
	t.Cleanup(func() { _ = tp.Shutdown(t.Context()) })
	r := New(Config{}, Deps{Metrics: NewMetrics(prometheus.NewRegistry()), TracerProvider: tp})

	const parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	it := &item{entry: &persistencev1.OutboxEntry{
		Id: 7, Topic: kafka.TopicEvents, Key: "u1", Traceparent: parent,
		Payload: &persistencev1.OutboxEntry_Event{Event: &biometricsv1.BiometricEvent{EventId: "ev-7", UserId: "u1"}},
	}}
	require.NoError(t, r.build(t.Context(), it))
	it.span.End()

	spans := exporter.GetSpans()
	require.Len(t, spans, 1)
	span := spans[0]
	require.Equal(t, trace.SpanKindProducer, span.SpanKind)
	require.Equal(t, "4bf92f3577b34da6a3ce929d0e0e4736", span.SpanContext.TraceID().String())
	require.Equal(t, "00f067aa0ba902b7", span.Parent.SpanID().String(), "the producer span's parent is the writer's span")
	require.Equal(t, "00-4bf92f3577b34da6a3ce929d0e0e4736-"+span.SpanContext.SpanID().String()+"-01",
		kafka.HeaderValue(it.msg.Headers, "traceparent"), "the message carries the producer span")
	for _, kv := range span.Attributes {
		require.NotEqual(t, "u1", kv.Value.String(), "no user id in span attributes")
	}
}
