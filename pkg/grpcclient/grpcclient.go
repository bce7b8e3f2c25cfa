// Package grpcclient dials the project's internal gRPC services the same way
// everywhere: tracing, request-id forwarding, a default deadline for unary
// calls, large message limits for batch RPCs, TLS or mutual TLS when
// configured, and transparent retries of idempotent services on UNAVAILABLE.
package grpcclient

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/biobridge/bridge/pkg/apperr"
	"github.com/biobridge/bridge/pkg/config"
	"github.com/biobridge/bridge/pkg/logging"
	"github.com/biobridge/bridge/pkg/telemetry"
)

// RequestIDHeader matches grpcserver.RequestIDHeader.
const RequestIDHeader = "x-request-id"

// Defaults applied by Dial to zero Config fields.
const (
	DefaultMaxMsgBytes    = 64 << 20
	DefaultDefaultTimeout = 10 * time.Second
)

// Config configures a client connection.
type Config struct {
	// TLS: CAFile verifies the server (system roots when empty but cert+key
	// are set); CertFile+KeyFile are presented as the client certificate
	// (mutual TLS). All empty: plaintext, for loopback only.
	TLS config.TLSFiles
	// ServerName overrides the name verified in the server certificate.
	ServerName string
	// MaxMsgBytes caps messages both ways (default 64 MiB).
	MaxMsgBytes int
	// DefaultTimeout is applied to unary calls whose context has no
	// deadline (default 10s). Streams are long-lived and get none.
	DefaultTimeout time.Duration
	// IdempotentServices are full service names ("biobridge.tokens.v1.TokenBrokerService")
	// whose methods gRPC retries on UNAVAILABLE with exponential backoff.
	// Only list services where repeating a call is harmless.
	IdempotentServices []string
	// TracerProvider defaults to the global one (telemetry.SetupTracing).
	TracerProvider trace.TracerProvider
	// ServiceToken is this service's own SERVICE_TOKEN. When set, every call
	// carries it as "authorization: Bearer <token>" (per-RPC credentials,
	// so no call site builds the header), and an UNAUTHENTICATED or
	// PERMISSION_DENIED answer is a deployment error (the callee does not
	// accept the token, or its SERVICE_ACL does not allow the method),
	// never the end caller's fault: it becomes an Internal error naming the
	// callee and the variables to check, so an app gets a 500, not a 401
	// that it reads as "log the user in again". Empty (the gateway, which
	// forwards its callers' credentials): calls carry what their context
	// carries and refusals pass through.
	ServiceToken string
}

// ReasonInternalAuthFailed is the reason of the Internal error a call with
// a ServiceToken turns an authentication or permission refusal into.
const ReasonInternalAuthFailed = "internal_auth_failed"

// Dial creates a client connection to target (for example "127.0.0.1:9101"
// or "dns:///persistence:9103"). Like grpc.NewClient it connects lazily.
func Dial(target string, cfg Config) (*grpc.ClientConn, error) {
	if cfg.MaxMsgBytes <= 0 {
		cfg.MaxMsgBytes = DefaultMaxMsgBytes
	}
	if cfg.DefaultTimeout <= 0 {
		cfg.DefaultTimeout = DefaultDefaultTimeout
	}
	creds, err := transportCredentials(cfg)
	if err != nil {
		return nil, err
	}
	// The propagator is explicit: without telemetry.SetupTracing (devstack,
	// tests) the global one propagates nothing.
	otelOpts := []otelgrpc.Option{otelgrpc.WithPropagators(telemetry.Propagator())}
	if cfg.TracerProvider != nil {
		otelOpts = append(otelOpts, otelgrpc.WithTracerProvider(cfg.TracerProvider))
	}
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithStatsHandler(otelgrpc.NewClientHandler(otelOpts...)),
		grpc.WithDefaultCallOptions(
			grpc.MaxCallRecvMsgSize(cfg.MaxMsgBytes),
			grpc.MaxCallSendMsgSize(cfg.MaxMsgBytes),
		),
		// Pings detect dead peers on idle connections (a restarted pod)
		// before a real call waits on them.
		grpc.WithKeepaliveParams(keepalive.ClientParameters{
			Time:                30 * time.Second,
			Timeout:             10 * time.Second,
			PermitWithoutStream: true,
		}),
		grpc.WithChainUnaryInterceptor(unaryInterceptor(cfg.DefaultTimeout)),
		grpc.WithChainStreamInterceptor(streamInterceptor),
	}
	if cfg.ServiceToken != "" {
		opts = append(opts, grpc.WithPerRPCCredentials(ServiceCredentials(cfg.ServiceToken)),
			grpc.WithChainUnaryInterceptor(ownCredentialsUnary(target)),
			grpc.WithChainStreamInterceptor(ownCredentialsStream(target)))
	}
	sc, err := serviceConfig(cfg.IdempotentServices)
	if err != nil {
		return nil, err
	}
	opts = append(opts, grpc.WithDefaultServiceConfig(sc))
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, fmt.Errorf("create grpc client for %s: %w", target, err)
	}
	return conn, nil
}

// ServiceCredentials returns per-RPC credentials that send token as
// "authorization: Bearer <token>" with every call, for connections dialed
// without Dial (tests, benchmarks). They do not demand transport security:
// plaintext is allowed on loopback, and grpcserver refuses to serve it
// anywhere else unless told to.
func ServiceCredentials(token string) credentials.PerRPCCredentials {
	return bearer{header: "Bearer " + token}
}

type bearer struct{ header string }

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": b.header}, nil
}

func (bearer) RequireTransportSecurity() bool { return false }

// ClientTLSConfig builds the client TLS configuration from files.
func ClientTLSConfig(files config.TLSFiles, serverName string) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: serverName}
	if files.CAFile != "" {
		pem, err := os.ReadFile(files.CAFile)
		if err != nil {
			return nil, fmt.Errorf("read tls ca file: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls ca file %s: no PEM certificates", files.CAFile)
		}
		tc.RootCAs = pool
	}
	if files.CertFile != "" || files.KeyFile != "" {
		cert, err := tls.LoadX509KeyPair(files.CertFile, files.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("load tls client key pair: %w", err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

func transportCredentials(cfg Config) (credentials.TransportCredentials, error) {
	if !cfg.TLS.Enabled() {
		return insecure.NewCredentials(), nil
	}
	tc, err := ClientTLSConfig(cfg.TLS, cfg.ServerName)
	if err != nil {
		return nil, err
	}
	return credentials.NewTLS(tc), nil
}

// serviceConfig builds the default service config: round-robin over every
// address the target resolves to (with a `dns:///` target behind a headless
// Kubernetes Service, calls spread over all pods instead of sticking to one),
// and retries of UNAVAILABLE (the server was unreachable or shedding before
// doing any work) for the given services. gRPC bounds retries further with
// its retry throttling.
func serviceConfig(services []string) (string, error) {
	type name struct {
		Service string `json:"service"`
	}
	names := make([]name, len(services))
	for i, s := range services {
		names[i] = name{Service: s}
	}
	sc := map[string]any{
		"loadBalancingConfig": []any{map[string]any{"round_robin": map[string]any{}}},
	}
	if len(services) > 0 {
		sc["methodConfig"] = []any{map[string]any{
			"name": names,
			"retryPolicy": map[string]any{
				"maxAttempts":          4,
				"initialBackoff":       "0.1s",
				"maxBackoff":           "2s",
				"backoffMultiplier":    2.0,
				"retryableStatusCodes": []string{"UNAVAILABLE"},
			},
		}}
	}
	b, err := json.Marshal(sc)
	if err != nil {
		return "", fmt.Errorf("encode grpc service config: %w", err)
	}
	return string(b), nil
}

// withRequestID forwards the request id of the current request, unless the
// caller already set one explicitly.
func withRequestID(ctx context.Context) context.Context {
	id := logging.RequestID(ctx)
	if id == "" {
		return ctx
	}
	if md, ok := metadata.FromOutgoingContext(ctx); ok && len(md.Get(RequestIDHeader)) > 0 {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, RequestIDHeader, id)
}

func unaryInterceptor(defaultTimeout time.Duration) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if _, ok := ctx.Deadline(); !ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, defaultTimeout)
			defer cancel()
		}
		return invoker(withRequestID(ctx), method, req, reply, cc, opts...)
	}
}

func streamInterceptor(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	return streamer(withRequestID(ctx), desc, cc, method, opts...)
}

// internalAuthError turns a refusal of this service's own credentials into
// an Internal error; any other error passes unchanged.
func internalAuthError(target, method string, err error) error {
	st, ok := status.FromError(err)
	if !ok || (st.Code() != codes.Unauthenticated && st.Code() != codes.PermissionDenied) {
		return err
	}
	cause := fmt.Errorf("%s refused this service's call %s (%s: %s): check that this service's SERVICE_TOKEN is among the callee's SERVICE_TOKENS and that the callee's SERVICE_ACL allows the method",
		target, method, st.Code(), st.Message())
	return apperr.Wrap(cause, apperr.Internal, ReasonInternalAuthFailed, "internal error")
}

func ownCredentialsUnary(target string) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		return internalAuthError(target, method, invoker(ctx, method, req, reply, cc, opts...))
	}
}

func ownCredentialsStream(target string) grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		cs, err := streamer(ctx, desc, cc, method, opts...)
		if err != nil {
			return nil, internalAuthError(target, method, err)
		}
		return &ownCredentialsClientStream{ClientStream: cs, target: target, method: method}, nil
	}
}

// ownCredentialsClientStream maps the refusal a stream reports on its
// first receive (servers authenticate streams when the handler starts).
type ownCredentialsClientStream struct {
	grpc.ClientStream
	target, method string
}

func (s *ownCredentialsClientStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if err == nil || errors.Is(err, io.EOF) {
		return err
	}
	return internalAuthError(s.target, s.method, err)
}
