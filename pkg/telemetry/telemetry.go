// Package telemetry sets up Prometheus metrics and OpenTelemetry tracing the
// same way in every service, and offers W3C trace-context propagation
// helpers for any header store (Kafka record headers, HTTP headers, maps).
package telemetry

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// NewRegistry returns a registry with the Go runtime and process collectors.
// Services register everything on it explicitly (no global registry), which
// keeps tests independent and several services in one devstack process apart.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	return reg
}

// propagator is fixed rather than read from otel's globals so Inject and
// Extract work the same whether or not SetupTracing ran (tests, tools).
var propagator = propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})

// Propagator is the W3C TraceContext + Baggage propagator every service
// uses. grpcserver and grpcclient pass it to otelgrpc explicitly, so
// propagation does not hang on the global one being installed.
func Propagator() propagation.TextMapPropagator { return propagator }

// TracerProviderOr returns tp, or the global tracer provider when tp is nil
// (a component whose owner did not pass one).
func TracerProviderOr(tp trace.TracerProvider) trace.TracerProvider {
	if tp == nil {
		return otel.GetTracerProvider()
	}
	return tp
}

// SetupTracing installs NewTracerProvider's provider as the global one,
// and the W3C TraceContext + Baggage propagator. The returned shutdown
// flushes and stops the provider.
func SetupTracing(ctx context.Context, service string, getenv func(string) string) (shutdown func(context.Context) error, err error) {
	otel.SetTextMapPropagator(propagator)
	tp, err := NewTracerProvider(ctx, service, getenv)
	if err != nil {
		return nil, err
	}
	otel.SetTracerProvider(tp)
	globalTracing.Store(true)
	return tp.Shutdown, nil
}

var globalTracing atomic.Bool

// GlobalTracing reports whether SetupTracing installed the global tracer
// provider. Until it does, otel's global provider makes no spans, and a
// component left to use it (grpcserver with no TracerProvider) may skip
// the work of making them.
func GlobalTracing() bool { return globalTracing.Load() }

// NewTracerProvider builds the tracer provider of one service, reading the
// standard variables through getenv:
//
//   - OTEL_TRACES_EXPORTER: "none" disables export; otherwise OTLP/gRPC.
//   - OTEL_EXPORTER_OTLP_TRACES_ENDPOINT, else OTEL_EXPORTER_OTLP_ENDPOINT:
//     the collector URL (http://host:4317 for plaintext). Unset: no exporter.
//   - OTEL_EXPORTER_OTLP_INSECURE: plaintext for an endpoint given without scheme.
//   - OTEL_SERVICE_NAME overrides service; OTEL_RESOURCE_ATTRIBUTES adds k=v,...
//   - OTEL_TRACES_SAMPLER / OTEL_TRACES_SAMPLER_ARG: the spec's samplers,
//     default parentbased_always_on.
//
// Without an exporter it still samples, so trace ids exist, reach the
// logs and propagate to downstream services. extra options come last (a
// test's in-memory exporter, say). devstack builds one per service, so
// each keeps its own service.name in one process.
func NewTracerProvider(ctx context.Context, service string, getenv func(string) string, extra ...sdktrace.TracerProviderOption) (*sdktrace.TracerProvider, error) {
	env := func(k string) string { return strings.TrimSpace(getenv(k)) }

	if v := env("OTEL_SERVICE_NAME"); v != "" {
		service = v
	}
	attrs := []attribute.KeyValue{attribute.String("service.name", service)}
	for _, kv := range strings.Split(env("OTEL_RESOURCE_ATTRIBUTES"), ",") {
		k, v, ok := strings.Cut(kv, "=")
		if ok && strings.TrimSpace(k) != "" && strings.TrimSpace(k) != "service.name" {
			attrs = append(attrs, attribute.String(strings.TrimSpace(k), strings.TrimSpace(v)))
		}
	}
	res := resource.NewSchemaless(attrs...)

	sampler, err := samplerFromEnv(env("OTEL_TRACES_SAMPLER"), env("OTEL_TRACES_SAMPLER_ARG"))
	if err != nil {
		return nil, err
	}
	opts := []sdktrace.TracerProviderOption{sdktrace.WithResource(res), sdktrace.WithSampler(sampler)}

	endpoint := env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
	if endpoint == "" {
		endpoint = env("OTEL_EXPORTER_OTLP_ENDPOINT")
	}
	exporterKind := strings.ToLower(env("OTEL_TRACES_EXPORTER"))
	if exporterKind != "" && exporterKind != "none" && exporterKind != "otlp" {
		return nil, fmt.Errorf("OTEL_TRACES_EXPORTER: unsupported exporter %q (want otlp or none)", exporterKind)
	}
	if endpoint != "" && exporterKind != "none" {
		var eopts []otlptracegrpc.Option
		if strings.Contains(endpoint, "://") {
			eopts = append(eopts, otlptracegrpc.WithEndpointURL(endpoint))
		} else {
			eopts = append(eopts, otlptracegrpc.WithEndpoint(endpoint))
			if insecure, _ := strconv.ParseBool(env("OTEL_EXPORTER_OTLP_INSECURE")); insecure {
				eopts = append(eopts, otlptracegrpc.WithInsecure())
			}
		}
		// The client connects lazily, so an unreachable collector does not
		// stop the service from starting; spans are dropped meanwhile.
		exp, err := otlptracegrpc.New(ctx, eopts...)
		if err != nil {
			return nil, fmt.Errorf("create otlp trace exporter: %w", err)
		}
		opts = append(opts, sdktrace.WithBatcher(exp))
	}
	return sdktrace.NewTracerProvider(append(opts, extra...)...), nil
}

func samplerFromEnv(name, arg string) (sdktrace.Sampler, error) {
	ratio := func() (float64, error) {
		if arg == "" {
			return 1, nil
		}
		r, err := strconv.ParseFloat(arg, 64)
		if err != nil || r < 0 || r > 1 {
			return 0, fmt.Errorf("OTEL_TRACES_SAMPLER_ARG: must be a ratio between 0 and 1, got %q", arg)
		}
		return r, nil
	}
	switch strings.ToLower(name) {
	case "", "parentbased_always_on":
		return sdktrace.ParentBased(sdktrace.AlwaysSample()), nil
	case "always_on":
		return sdktrace.AlwaysSample(), nil
	case "always_off":
		return sdktrace.NeverSample(), nil
	case "parentbased_always_off":
		return sdktrace.ParentBased(sdktrace.NeverSample()), nil
	case "traceidratio":
		r, err := ratio()
		if err != nil {
			return nil, err
		}
		return sdktrace.TraceIDRatioBased(r), nil
	case "parentbased_traceidratio":
		r, err := ratio()
		if err != nil {
			return nil, err
		}
		return sdktrace.ParentBased(sdktrace.TraceIDRatioBased(r)), nil
	}
	return nil, errors.New("OTEL_TRACES_SAMPLER: unsupported sampler " + strconv.Quote(name))
}

// funcCarrier adapts getter/setter functions to propagation.TextMapCarrier.
type funcCarrier struct {
	get  func(string) string
	set  func(string, string)
	keys func() []string
}

func (c funcCarrier) Get(key string) string {
	if c.get == nil {
		return ""
	}
	return c.get(key)
}

func (c funcCarrier) Set(key, value string) {
	if c.set != nil {
		c.set(key, value)
	}
}

func (c funcCarrier) Keys() []string {
	if c.keys == nil {
		return nil
	}
	return c.keys()
}

// Inject writes the trace context (traceparent, tracestate) and baggage of
// ctx through set, for example into Kafka record headers.
func Inject(ctx context.Context, set func(key, value string)) {
	propagator.Inject(ctx, funcCarrier{set: set})
}

// Extract returns ctx with the remote span context and baggage read through
// get. keys may be nil; it lists the carrier's keys for propagators that
// need them (baggage and tracecontext only use Get).
func Extract(ctx context.Context, get func(key string) string, keys func() []string) context.Context {
	return propagator.Extract(ctx, funcCarrier{get: get, keys: keys})
}

// TraceParent returns the W3C traceparent header value for ctx's span, or ""
// when ctx carries no valid span context.
func TraceParent(ctx context.Context) string {
	var tp string
	propagation.TraceContext{}.Inject(ctx, funcCarrier{set: func(k, v string) {
		if k == "traceparent" {
			tp = v
		}
	}})
	return tp
}
