// Package grpcserver builds the gRPC server every service runs, with the
// same interceptor chain everywhere: tracing, request ids, metrics, error
// mapping, panic recovery, authentication and an access log. It also always
// registers grpc.health.v1 and server reflection (so grpcurl works) and
// implements the shutdown order: health NOT_SERVING, then GracefulStop
// bounded by a grace period, then Stop.
//
// Interceptor order, outermost first (the same for unary and streams):
//
//	otelgrpc stats handler  (spans, trace ids in the context; only when
//	                         tracing is on, see tracingOn: otherwise an
//	                         interceptor puts the caller's W3C trace
//	                         context in the context, as the handler with
//	                         a no-op provider does, for less work)
//	request id              (x-request-id in, in the context, and back in
//	                         the header, or the trailer on error)
//	prometheus metrics      (sees the mapped gRPC code, not "Unknown")
//	error mapping + access log (apperr.ToStatus; unknown errors logged)
//	panic recovery          (a panic becomes an Internal error)
//	auth hook               (skipped for health and reflection)
//	Options.ExtraUnary / ExtraStream
//	handler
package grpcserver

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"time"

	grpcprom "github.com/grpc-ecosystem/go-grpc-middleware/providers/prometheus"
	"github.com/grpc-ecosystem/go-grpc-middleware/v2/interceptors/recovery"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/contrib/instrumentation/google.golang.org/grpc/otelgrpc"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/reflection"

	"github.com/biobridge/bridge/pkg/apperr"
	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/pkg/config"
	"github.com/biobridge/bridge/pkg/logging"
	"github.com/biobridge/bridge/pkg/telemetry"
)

// RequestIDHeader is the metadata key carrying the request id both ways.
const RequestIDHeader = "x-request-id"

// Defaults applied by New to zero Config fields.
const (
	DefaultMaxMsgBytes = 64 << 20
	DefaultGracePeriod = 10 * time.Second
)

// Config is the server's deployment configuration.
type Config struct {
	// Addr is the listen address, for example ":9101" (":0" in tests).
	Addr string
	// TLS: cert+key enable TLS; with CAFile as well, client certificates
	// are required and verified (mutual TLS). All empty: plaintext, and
	// then the server binds to loopback only (a wildcard host becomes
	// 127.0.0.1, another host is refused) unless TLS.AllowPlaintext is set.
	TLS config.TLSFiles
	// MaxRecvMsgBytes and MaxSendMsgBytes default to 64 MiB: batch RPCs
	// carry more than gRPC's 4 MiB default.
	MaxRecvMsgBytes, MaxSendMsgBytes int
	// GracePeriod bounds GracefulStop before in-flight RPCs are cut (default 10s).
	GracePeriod time.Duration
}

// Options are the server's code-level dependencies.
type Options struct {
	// Service names the server in its log lines (attribute "grpc_service").
	Service string
	// Logger defaults to a discarding logger.
	Logger *slog.Logger
	// Registry receives the RPC metrics; nil means no metrics.
	Registry *prometheus.Registry
	// Auth authenticates a call and returns the context carrying the
	// identity (auth.WithCaller / auth.WithUser); nil means no auth. It is
	// not called for health checks and reflection.
	Auth func(ctx context.Context, fullMethod string) (context.Context, error)
	// TracerProvider defaults to the global one (telemetry.SetupTracing).
	TracerProvider trace.TracerProvider
	// ACL, when set, is checked against the registered services before the
	// server binds: a pattern naming a service or method it does not serve
	// fails the start (a misspelling would otherwise deny silently).
	ACL *auth.ACL
	// ExtraUnary and ExtraStream run after auth, innermost.
	ExtraUnary  []grpc.UnaryServerInterceptor
	ExtraStream []grpc.StreamServerInterceptor
}

// Server is a configured gRPC server.
type Server struct {
	cfg    Config
	opts   Options
	logger *slog.Logger
	srv    *grpc.Server
	health *health.Server

	mu     sync.Mutex // guards ln and closed: Addr may be called while Serve starts
	ln     net.Listener
	closed bool

	metrics *grpcprom.ServerMetrics
	// tracing: the otelgrpc stats handler is installed (tracingOn).
	tracing bool
}

// Tracing reports whether the server makes spans (the otelgrpc stats
// handler is installed); without, it still passes the callers' trace
// context on.
func (s *Server) Tracing() bool { return s.tracing }

// tracingOn reports whether tp (nil: the global provider) makes spans: a
// provider given explicitly that is not otel's no-op one, or, for nil,
// the global provider installed by telemetry.SetupTracing. Every service
// binary calls SetupTracing; a server built without it (a test, a bench)
// has no span to make, and skips the stats handler's work.
func tracingOn(tp trace.TracerProvider) bool {
	if tp == nil {
		return telemetry.GlobalTracing()
	}
	_, isNoop := tp.(noop.TracerProvider)
	return !isNoop
}

// streamWorkers is the number of goroutines kept to run calls: enough for
// the calls a busy server has in flight at once (a call that finds them
// all busy gets a goroutine of its own, as without workers). An idle
// worker costs its stack.
func streamWorkers() uint32 {
	return uint32(max(64, 8*runtime.GOMAXPROCS(0)))
}

// traceContextUnary and traceContextStream do, when the stats handler is
// not installed, what it does with a provider that makes no spans: put
// the caller's trace context (traceparent, tracestate, baggage) in the
// context, so log lines carry its trace id, calls onward and records
// written (outbox entries) carry its trace on.
func traceContextUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	return handler(extractTraceContext(ctx), req)
}

func traceContextStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	ctx := extractTraceContext(ss.Context())
	if ctx == ss.Context() {
		return handler(srv, ss)
	}
	return handler(srv, &ctxStream{ServerStream: ss, ctx: ctx})
}

func extractTraceContext(ctx context.Context) context.Context {
	return telemetry.Extract(ctx, func(key string) string {
		if v := metadata.ValueFromIncomingContext(ctx, key); len(v) > 0 {
			return v[0]
		}
		return ""
	}, nil)
}

// New builds the server. Register services on Registrar before Serve.
func New(cfg Config, opts Options) (*Server, error) {
	if cfg.MaxRecvMsgBytes <= 0 {
		cfg.MaxRecvMsgBytes = DefaultMaxMsgBytes
	}
	if cfg.MaxSendMsgBytes <= 0 {
		cfg.MaxSendMsgBytes = DefaultMaxMsgBytes
	}
	if cfg.GracePeriod <= 0 {
		cfg.GracePeriod = DefaultGracePeriod
	}
	logger := opts.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	logger = logger.With("component", "grpc")
	if opts.Service != "" {
		logger = logger.With("grpc_service", opts.Service)
	}
	s := &Server{cfg: cfg, opts: opts, logger: logger}

	serverOpts := []grpc.ServerOption{
		grpc.MaxRecvMsgSize(cfg.MaxRecvMsgBytes),
		grpc.MaxSendMsgSize(cfg.MaxSendMsgBytes),
		// Clients ping idle connections (see grpcclient); allow it so the
		// server does not answer with GOAWAY "too_many_pings".
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{
			MinTime:             10 * time.Second,
			PermitWithoutStream: true,
		}),
		// Connections are recycled now and then so that clients re-resolve
		// and spread over new replicas after a scale-out; streams get a
		// grace minute and reconnect (WatchLatest starts with a snapshot).
		grpc.KeepaliveParams(keepalive.ServerParameters{
			MaxConnectionAge:      10 * time.Minute,
			MaxConnectionAgeGrace: time.Minute,
		}),
		// Calls run on reused goroutines (a new one only when all are busy),
		// whose stacks have already grown to what a handler needs.
		grpc.NumStreamWorkers(streamWorkers()),
	}
	if cfg.TLS.CertFile != "" || cfg.TLS.KeyFile != "" {
		tc, err := ServerTLSConfig(cfg.TLS)
		if err != nil {
			return nil, err
		}
		serverOpts = append(serverOpts, grpc.Creds(credentials.NewTLS(tc)))
	} else if cfg.TLS.CAFile != "" {
		return nil, errors.New("grpc server tls: TLS_CA_FILE set without TLS_CERT_FILE and TLS_KEY_FILE")
	}

	var unary []grpc.UnaryServerInterceptor
	var stream []grpc.StreamServerInterceptor
	s.tracing = tracingOn(opts.TracerProvider)
	if s.tracing {
		// The propagator is explicit: the global one may not be installed.
		otelOpts := []otelgrpc.Option{otelgrpc.WithPropagators(telemetry.Propagator())}
		if opts.TracerProvider != nil {
			otelOpts = append(otelOpts, otelgrpc.WithTracerProvider(opts.TracerProvider))
		}
		serverOpts = append(serverOpts, grpc.StatsHandler(otelgrpc.NewServerHandler(otelOpts...)))
	} else {
		unary = append(unary, traceContextUnary)
		stream = append(stream, traceContextStream)
	}
	unary = append(unary, s.requestIDUnary)
	stream = append(stream, s.requestIDStream)
	if opts.Registry != nil {
		m, err := serverMetrics(opts.Registry)
		if err != nil {
			return nil, err
		}
		unary = append(unary, m.UnaryServerInterceptor())
		stream = append(stream, m.StreamServerInterceptor())
		s.metrics = m
	}
	rec := recovery.WithRecoveryHandlerContext(s.recovered)
	unary = append(unary, s.mapErrorsUnary, recovery.UnaryServerInterceptor(rec), s.authUnary)
	stream = append(stream, s.mapErrorsStream, recovery.StreamServerInterceptor(rec), s.authStream)
	unary = append(unary, opts.ExtraUnary...)
	stream = append(stream, opts.ExtraStream...)
	serverOpts = append(serverOpts, grpc.ChainUnaryInterceptor(unary...), grpc.ChainStreamInterceptor(stream...))

	s.srv = grpc.NewServer(serverOpts...)
	s.health = health.NewServer()
	// Health answers NOT_SERVING until Serve starts.
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(s.srv, s.health)
	reflection.Register(s.srv)
	return s, nil
}

// serverMetrics registers the RPC metrics on reg, reusing the ones already
// there so several servers (devstack) can share one registry.
func serverMetrics(reg *prometheus.Registry) (*grpcprom.ServerMetrics, error) {
	m := grpcprom.NewServerMetrics(grpcprom.WithServerHandlingTimeHistogram(
		grpcprom.WithHistogramBuckets([]float64{0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}),
	))
	if err := reg.Register(m); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(*grpcprom.ServerMetrics); ok {
				return existing, nil
			}
		}
		return nil, fmt.Errorf("register grpc server metrics: %w", err)
	}
	return m, nil
}

// ServerTLSConfig builds the server TLS configuration from files: TLS with
// cert+key, mutual TLS when CAFile is set as well.
func ServerTLSConfig(files config.TLSFiles) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(files.CertFile, files.KeyFile)
	if err != nil {
		return nil, fmt.Errorf("load tls key pair: %w", err)
	}
	tc := &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
	}
	if files.CAFile != "" {
		pool, err := loadCertPool(files.CAFile)
		if err != nil {
			return nil, err
		}
		tc.ClientCAs = pool
		tc.ClientAuth = tls.RequireAndVerifyClientCert
	}
	return tc, nil
}

func loadCertPool(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read tls ca file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("tls ca file %s: no PEM certificates", path)
	}
	return pool, nil
}

// Registrar returns the grpc.Server to register services on.
func (s *Server) Registrar() *grpc.Server { return s.srv }

// Health returns the health server, for per-service statuses.
func (s *Server) Health() *health.Server { return s.health }

// Listen binds the address so Addr is known before Serve.
func (s *Server) Listen() error {
	_, err := s.listener()
	return err
}

func (s *Server) listener() (net.Listener, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, errors.New("grpc server closed")
	}
	if s.ln != nil {
		return s.ln, nil
	}
	if err := s.opts.ACL.CheckServed(s.srv.GetServiceInfo()); err != nil {
		return nil, err
	}
	addr, err := s.listenAddr()
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen grpc on %s: %w", addr, err)
	}
	s.ln = ln
	return ln, nil
}

// listenAddr keeps a plaintext server on loopback: service tokens must not
// cross a network in clear. A wildcard host (":9101", "0.0.0.0:9101")
// becomes 127.0.0.1; a non-loopback host is refused. TLS, or
// GRPC_ALLOW_PLAINTEXT=true (logged as a warning), lifts the restriction.
func (s *Server) listenAddr() (string, error) {
	addr := s.cfg.Addr
	if s.cfg.TLS.CertFile != "" || s.cfg.TLS.AllowPlaintext {
		if s.cfg.TLS.CertFile == "" {
			s.logger.Warn("grpc serving plaintext on every interface (GRPC_ALLOW_PLAINTEXT=true): service tokens cross the network unencrypted unless something else encrypts it", "addr", addr)
		}
		return addr, nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("grpc listen address %q: %w", addr, err)
	}
	switch {
	case host == "" || host == "0.0.0.0" || host == "::":
		s.logger.Info("grpc without TLS: listening on loopback only (set TLS_CERT_FILE/TLS_KEY_FILE, or GRPC_ALLOW_PLAINTEXT=true)", "requested", addr)
		return net.JoinHostPort("127.0.0.1", port), nil
	case host == "localhost":
		return addr, nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return addr, nil
	}
	return "", fmt.Errorf("grpc listen address %s is not loopback and TLS is not configured: set TLS_CERT_FILE and TLS_KEY_FILE, or GRPC_ALLOW_PLAINTEXT=true to serve plaintext anyway", addr)
}

// Close releases the port of a server that is not going to Serve: a
// constructor that fails after Listen (its admin port taken, say) must not
// leave the gRPC port bound for as long as the process lives. The server
// cannot Serve afterwards. A serving server stops when Serve's context
// ends; Close after that is harmless.
func (s *Server) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	s.srv.Stop()
	if s.ln == nil {
		return nil
	}
	if err := s.ln.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		return fmt.Errorf("close grpc listener: %w", err)
	}
	return nil
}

// Addr returns the bound address once Listen succeeded, else the configured one.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln != nil {
		return s.ln.Addr().String()
	}
	return s.cfg.Addr
}

// Serve serves until ctx is done, then sets health NOT_SERVING, stops
// gracefully within the grace period, stops hard after it and returns nil.
func (s *Server) Serve(ctx context.Context) error {
	ln, err := s.listener()
	if err != nil {
		return err
	}
	if s.metrics != nil {
		// Pre-create every method's series (at zero) now that services are
		// registered, so dashboards and rate() see them before the first call.
		s.metrics.InitializeMetrics(s.srv)
	}
	s.health.SetServingStatus("", healthpb.HealthCheckResponse_SERVING)
	for name := range s.srv.GetServiceInfo() {
		s.health.SetServingStatus(name, healthpb.HealthCheckResponse_SERVING)
	}
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(ln) }()
	s.logger.Info("grpc server listening", "addr", s.Addr(), "tls", s.cfg.TLS.CertFile != "", "mtls", s.cfg.TLS.CAFile != "")

	select {
	case err := <-errc:
		s.health.Shutdown()
		if err != nil {
			return fmt.Errorf("serve grpc: %w", err)
		}
		return nil
	case <-ctx.Done():
	}
	// NOT_SERVING first so load balancers stop routing new calls here.
	s.health.Shutdown()
	stopped := make(chan struct{})
	go func() {
		s.srv.GracefulStop()
		close(stopped)
	}()
	timer := time.NewTimer(s.cfg.GracePeriod)
	defer timer.Stop()
	select {
	case <-stopped:
	case <-timer.C:
		s.logger.Warn("grpc graceful stop timed out, closing remaining calls", "grace_period", s.cfg.GracePeriod)
		// Stop closes every connection, which cancels every call's context.
		// A handler that ignores its context never returns, and grpc-go's
		// GracefulStop holds the server's lock while it waits for handlers,
		// which can block Stop too. So the hard stop gets one more grace
		// period and then Serve returns regardless: shutdown is bounded by
		// twice GracePeriod, whatever the handlers do.
		hard := make(chan struct{})
		go func() {
			s.srv.Stop()
			close(hard)
		}()
		timer.Reset(s.cfg.GracePeriod)
		select {
		case <-stopped:
		case <-hard:
		case <-timer.C:
			s.logger.Error("grpc handlers ignore cancellation, returning without them", "grace_period", s.cfg.GracePeriod)
		}
	}
	// The listener closed at the start of the stop, so Serve has returned
	// or is about to.
	select {
	case err := <-errc:
		if err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			return fmt.Errorf("serve grpc: %w", err)
		}
	case <-time.After(s.cfg.GracePeriod):
	}
	return nil
}

// --- request id ---

// validRequestID accepts client ids that are safe to log and echo.
func validRequestID(id string) bool {
	if id == "" || len(id) > 128 {
		return false
	}
	for _, r := range id {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_.:", r)) {
			return false
		}
	}
	return true
}

// NewRequestID returns a random 128-bit hex id. The bits come from
// math/rand/v2's generator (ChaCha8, seeded by the system, a state per
// thread): an id must not repeat or be guessed from the ones before it,
// not be a secret, and this is cheaper than crypto/rand on every call.
func NewRequestID() string {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], rand.Uint64())
	binary.LittleEndian.PutUint64(b[8:], rand.Uint64())
	return hex.EncodeToString(b[:])
}

// requestIDFrom looks the caller's id up without copying the metadata.
func requestIDFrom(ctx context.Context) string {
	if v := metadata.ValueFromIncomingContext(ctx, RequestIDHeader); len(v) > 0 && validRequestID(v[0]) {
		return v[0]
	}
	return NewRequestID()
}

// requestIDUnary echoes the id in the response header on success but in the
// trailer on error: a failed call whose server sent headers counts as
// committed and gRPC would not retry it, even for UNAVAILABLE.
func (s *Server) requestIDUnary(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	id := requestIDFrom(ctx)
	resp, err := handler(logging.WithRequestID(ctx, id), req)
	md := metadata.Pairs(RequestIDHeader, id)
	if err != nil {
		_ = grpc.SetTrailer(ctx, md)
	} else {
		_ = grpc.SetHeader(ctx, md)
	}
	return resp, err
}

func (s *Server) requestIDStream(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	id := requestIDFrom(ss.Context())
	_ = ss.SetHeader(metadata.Pairs(RequestIDHeader, id))
	return handler(srv, &ctxStream{ServerStream: ss, ctx: logging.WithRequestID(ss.Context(), id)})
}

type ctxStream struct {
	grpc.ServerStream
	ctx context.Context
}

func (c *ctxStream) Context() context.Context { return c.ctx }

// --- error mapping and access log ---

func (s *Server) finish(ctx context.Context, method string, start time.Time, err error) error {
	if err == nil {
		// The common case builds no status and, unless the access log is
		// on, no log attributes.
		s.accessLog(ctx, method, codes.OK, start)
		return nil
	}
	st, unknown := apperr.ToStatus(err)
	if unknown {
		// The cause stays here; the client only sees the status message.
		s.logger.ErrorContext(ctx, "rpc failed", "method", method, "code", st.Code().String(), "err", err)
	}
	s.accessLog(ctx, method, st.Code(), start)
	return st.Err()
}

// accessLog writes the debug line of a finished call.
func (s *Server) accessLog(ctx context.Context, method string, code codes.Code, start time.Time) {
	if !s.logger.Enabled(ctx, slog.LevelDebug) {
		return
	}
	s.logger.DebugContext(ctx, "rpc", "method", method, "code", code.String(),
		"duration_ms", float64(time.Since(start).Microseconds())/1000)
}

func (s *Server) mapErrorsUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start := time.Now()
	resp, err := handler(ctx, req)
	if err = s.finish(ctx, info.FullMethod, start, err); err != nil {
		return nil, err
	}
	return resp, nil
}

func (s *Server) mapErrorsStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	start := time.Now()
	return s.finish(ss.Context(), info.FullMethod, start, handler(srv, ss))
}

// --- panic recovery ---

// recovered logs a panic with its stack. The panic value is logged only for
// runtime errors (nil dereference, index out of range): an arbitrary value
// passed to panic could hold request data, i.e. PHI.
func (s *Server) recovered(ctx context.Context, p any) error {
	attrs := []any{"panic_type", fmt.Sprintf("%T", p), "stack", string(debug.Stack())}
	if re, ok := p.(runtime.Error); ok {
		attrs = append(attrs, "panic", re.Error())
	}
	s.logger.ErrorContext(ctx, "panic in rpc handler", attrs...)
	return apperr.Wrap(errPanic, apperr.Internal, "panic", "internal error")
}

var errPanic = errors.New("handler panicked")

// --- auth ---

// skipAuth lists the infrastructure services that are never authenticated:
// orchestrators probe health and operators use reflection without tokens.
func skipAuth(fullMethod string) bool {
	return strings.HasPrefix(fullMethod, "/grpc.health.v1.Health/") ||
		strings.HasPrefix(fullMethod, "/grpc.reflection.v1.ServerReflection/") ||
		strings.HasPrefix(fullMethod, "/grpc.reflection.v1alpha.ServerReflection/")
}

func (s *Server) authUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if s.opts.Auth == nil || skipAuth(info.FullMethod) {
		return handler(ctx, req)
	}
	ctx, err := s.opts.Auth(ctx, info.FullMethod)
	if err != nil {
		return nil, err
	}
	return handler(ctx, req)
}

func (s *Server) authStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	if s.opts.Auth == nil || skipAuth(info.FullMethod) {
		return handler(srv, ss)
	}
	ctx, err := s.opts.Auth(ss.Context(), info.FullMethod)
	if err != nil {
		return err
	}
	return handler(srv, &ctxStream{ServerStream: ss, ctx: ctx})
}
