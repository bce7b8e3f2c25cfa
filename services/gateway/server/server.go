// Package server is the HTTP edge of the bridge. grpc-gateway maps the REST
// routes to the services' gRPC APIs; the vendor webhook routes are handled
// here because signatures are computed over the exact body bytes, which must
// reach ingest untouched. The gateway holds no business logic.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/textproto"
	"strconv"
	"strings"
	"time"

	"github.com/grpc-ecosystem/grpc-gateway/v2/runtime"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"golang.org/x/sync/errgroup"
	"google.golang.org/genproto/googleapis/rpc/errdetails"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	ingestv1 "github.com/biobridge/bridge/gen/go/biobridge/ingest/v1"
	tokensv1 "github.com/biobridge/bridge/gen/go/biobridge/tokens/v1"
	"github.com/biobridge/bridge/gen/openapi"
	"github.com/biobridge/bridge/pkg/admin"
	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/pkg/grpcclient"
	"github.com/biobridge/bridge/pkg/grpcserver"
	"github.com/biobridge/bridge/pkg/telemetry"
)

// Server is a running gateway.
type Server struct {
	cfg    Config
	logger *slog.Logger
	http   *http.Server
	ln     net.Listener
	admin  *admin.Server
	conns  []*grpc.ClientConn
}

// New checks cfg with Validate (the check LoadConfig runs, so a Config
// built by hand gets it too), then builds the gateway and binds its ports
// (":0" works), ready to Serve.
func New(ctx context.Context, cfg Config, logger *slog.Logger) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("invalid configuration:\n%w", err)
	}
	s := &Server{cfg: cfg, logger: logger}
	reg := telemetry.NewRegistry()
	dial := func(target string) (*grpc.ClientConn, error) {
		conn, err := grpcclient.Dial(target, grpcclient.Config{TLS: cfg.TLS, DefaultTimeout: cfg.RequestTimeout, TracerProvider: cfg.TracerProvider,
			IdempotentServices: []string{"biobridge.biometrics.v1.BiometricsService"}})
		if err != nil {
			return nil, err
		}
		s.conns = append(s.conns, conn)
		return conn, nil
	}
	ingestConn, err := dial(cfg.IngestTarget)
	if err != nil {
		return nil, s.closeWith(fmt.Errorf("dial ingest: %w", err))
	}
	brokerConn, err := dial(cfg.TokenBrokerTarget)
	if err != nil {
		return nil, s.closeWith(fmt.Errorf("dial token broker: %w", err))
	}
	persistConn, err := dial(cfg.PersistenceTarget)
	if err != nil {
		return nil, s.closeWith(fmt.Errorf("dial persistence: %w", err))
	}

	mux := runtime.NewServeMux(
		runtime.WithMarshalerOption(runtime.MIMEWildcard, newGatewayJSON()),
		runtime.WithIncomingHeaderMatcher(headerMatcher),
		runtime.WithErrorHandler(errorHandler),
		runtime.WithForwardResponseOption(setStatusFromMetadata),
	)
	if err := ingestv1.RegisterIngestServiceHandlerClient(ctx, mux, ingestv1.NewIngestServiceClient(ingestConn)); err != nil {
		return nil, s.closeWith(err)
	}
	if err := tokensv1.RegisterTokenBrokerServiceHandlerClient(ctx, mux, tokensv1.NewTokenBrokerServiceClient(brokerConn)); err != nil {
		return nil, s.closeWith(err)
	}
	if err := biometricsv1.RegisterBiometricsServiceHandlerClient(ctx, mux, biometricsv1.NewBiometricsServiceClient(persistConn)); err != nil {
		return nil, s.closeWith(err)
	}
	wh := &webhooks{ingest: ingestv1.NewIngestServiceClient(ingestConn), mux: mux, maxBody: int64(cfg.MaxWebhookBodyBytes), logger: logger}
	if err := mux.HandlePath(http.MethodPost, "/v1/webhooks/whoop", wh.whoop); err != nil {
		return nil, s.closeWith(err)
	}
	if err := mux.HandlePath(http.MethodPost, "/v1/webhooks/oura", wh.oura); err != nil {
		return nil, s.closeWith(err)
	}

	checks := []admin.Check{
		backendCheck("ingest", ingestConn),
		backendCheck("tokenbroker", brokerConn),
		backendCheck("persistence", persistConn),
	}
	s.admin = admin.New(cfg.AdminAddr, reg, logger, checks...)

	users, err := auth.NewUserTokenVerifier(ctx, cfg.UserTokens, logger)
	if err != nil {
		return nil, s.closeWith(err)
	}
	guard := newBodyGuard(reg, bodyLimits{
		push:    int64(cfg.MaxBodyBytes),
		webhook: int64(cfg.MaxWebhookBodyBytes),
		other:   smallBodyBytes,
	}, int64(cfg.MaxInflightBodyBytes), cfg.BodyWaitBudget, credentialsFor(users))
	root := http.NewServeMux()
	root.Handle("/", guard.wrap(mux))
	root.HandleFunc("GET /openapi.json", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(openapi.Spec)
	})
	// Liveness and readiness answer on the public port too (load balancers
	// probe it); metrics stay on the admin port, which is not public.
	root.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	root.Handle("GET /readyz", s.admin.ReadyHandler())

	s.http = &http.Server{
		Handler:           instrument(reg, requestID(root)),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       60 * time.Second,
		WriteTimeout:      cfg.RequestTimeout + 5*time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	s.ln, err = net.Listen("tcp", cfg.HTTPAddr)
	if err != nil {
		return nil, s.closeWith(fmt.Errorf("listen %s: %w", cfg.HTTPAddr, err))
	}
	if err := s.admin.Listen(); err != nil {
		_ = s.ln.Close()
		return nil, s.closeWith(fmt.Errorf("listen admin: %w", err))
	}
	return s, nil
}

func (s *Server) closeWith(err error) error {
	for _, c := range s.conns {
		err = errors.Join(err, c.Close())
	}
	return err
}

// HTTPAddr is the bound public address.
func (s *Server) HTTPAddr() string { return s.ln.Addr().String() }

// AdminAddr is the bound admin address.
func (s *Server) AdminAddr() string { return s.admin.Addr() }

// Serve runs until ctx ends, then drains in-flight requests.
func (s *Server) Serve(ctx context.Context) error {
	s.logger.InfoContext(ctx, "gateway serving", slog.String("http", s.HTTPAddr()), slog.String("admin", s.AdminAddr()))
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		if err := s.http.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve http: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.WithoutCancel(gctx), 10*time.Second)
		defer cancel()
		return s.http.Shutdown(sctx)
	})
	g.Go(func() error { return s.admin.Serve(gctx) })
	err := g.Wait()
	for _, c := range s.conns {
		if cerr := c.Close(); cerr != nil {
			err = errors.Join(err, cerr)
		}
	}
	return err
}

// Run builds and serves the gateway until ctx ends.
func Run(ctx context.Context, cfg Config, logger *slog.Logger) error {
	s, err := New(ctx, cfg, logger)
	if err != nil {
		return err
	}
	return s.Serve(ctx)
}

// Probe is the `gateway healthcheck` command: GET /healthz on the public port.
func Probe(ctx context.Context, cfg Config) error {
	addr := cfg.HTTPAddr
	if strings.HasPrefix(addr, ":") {
		addr = "127.0.0.1" + addr
	}
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/healthz", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck %s: %w", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck %s: %s", addr, resp.Status)
	}
	return nil
}

func backendCheck(name string, conn *grpc.ClientConn) admin.Check {
	return admin.Check{Name: name, Fn: func(ctx context.Context) error {
		resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
		if err != nil {
			return err
		}
		if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
			return errors.New(resp.GetStatus().String())
		}
		return nil
	}}
}

// headerMatcher forwards the request id and the standard headers; grpc-gateway
// forwards Authorization by itself. A caller's W3C trace context
// (traceparent, tracestate) is dropped: the gateway is the public edge, so
// every request starts a trace of ours (see docs/observability.md).
func headerMatcher(key string) (string, bool) {
	switch textproto.CanonicalMIMEHeaderKey(key) {
	case "X-Request-Id":
		return grpcserver.RequestIDHeader, true
	case "Traceparent", "Tracestate":
		return "", false
	}
	return runtime.DefaultHeaderMatcher(key)
}

// errorHandler renders gRPC statuses as grpc-gateway does ({code, message,
// details}), and adds Retry-After to 429 and 503 answers from the status's
// RetryInfo so vendors and apps back off for the right time.
func errorHandler(ctx context.Context, mux *runtime.ServeMux, m runtime.Marshaler, w http.ResponseWriter, r *http.Request, err error) {
	st := status.Convert(err)
	if st.Code() == codes.ResourceExhausted || st.Code() == codes.Unavailable {
		retry := time.Second
		for _, d := range st.Details() {
			if ri, ok := d.(*errdetails.RetryInfo); ok && ri.GetRetryDelay() != nil {
				retry = ri.GetRetryDelay().AsDuration()
			}
		}
		secs := int(retry.Round(time.Second) / time.Second)
		if secs < 1 {
			secs = 1
		}
		w.Header().Set("Retry-After", strconv.Itoa(secs))
	}
	runtime.DefaultHTTPErrorHandler(ctx, mux, m, w, r, err)
}

// setStatusFromMetadata lets a handler choose a 2xx code other than 200,
// and turns the OAuth callback's answer into the redirect that sends the
// user's browser on to the app.
func setStatusFromMetadata(ctx context.Context, w http.ResponseWriter, m proto.Message) error {
	if cb, ok := m.(*tokensv1.HandleAuthorizationCallbackResponse); ok && cb.GetRedirectUrl() != "" {
		w.Header().Set("Location", cb.GetRedirectUrl())
		// The query carries an authorization code: keep it out of caches
		// and of the Referer of whatever the app opens next.
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Referrer-Policy", "no-referrer")
		w.WriteHeader(http.StatusFound)
		return nil
	}
	md, ok := runtime.ServerMetadataFromContext(ctx)
	if !ok {
		return nil
	}
	if vals := md.HeaderMD.Get("x-http-code"); len(vals) > 0 {
		code, err := strconv.Atoi(vals[0])
		if err == nil {
			delete(w.Header(), "Grpc-Metadata-X-Http-Code")
			w.WriteHeader(code)
		}
	}
	return nil
}

// writeError renders an error in the same shape grpc-gateway uses.
func writeError(w http.ResponseWriter, httpCode int, reason, msg string) {
	code := codes.InvalidArgument
	switch httpCode {
	case http.StatusRequestEntityTooLarge:
		code = codes.ResourceExhausted
	case http.StatusUnauthorized:
		code = codes.Unauthenticated
	case http.StatusServiceUnavailable:
		code = codes.Unavailable
	}
	writeJSON(w, httpCode, map[string]any{
		"code":    int(code),
		"message": msg,
		"details": []map[string]any{{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason, "domain": "biobridge"}},
	})
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

type requestIDKey struct{}

// requestID gives every request an id (the caller's X-Request-Id when it is
// sane), echoes it, and forwards it to the backends through the header matcher.
func requestID(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get("X-Request-Id")
		if id == "" || len(id) > 128 {
			id = grpcserver.NewRequestID()
			r.Header.Set("X-Request-Id", id)
		}
		w.Header().Set("X-Request-Id", id)
		next.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), requestIDKey{}, id)))
	})
}

// outgoing carries the request id to a backend call made by hand.
func outgoing(r *http.Request) context.Context {
	ctx := r.Context()
	if id, ok := ctx.Value(requestIDKey{}).(string); ok {
		ctx = metadata.AppendToOutgoingContext(ctx, grpcserver.RequestIDHeader, id)
	}
	return ctx
}

type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.code = code
	r.ResponseWriter.WriteHeader(code)
}

func (r *statusRecorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// instrument records request counts and latencies by route pattern (never
// the raw path: it contains user ids).
func instrument(reg *prometheus.Registry, next http.Handler) http.Handler {
	f := promauto.With(reg)
	requests := f.NewCounterVec(prometheus.CounterOpts{
		Name: "biobridge_gateway_http_requests_total",
		Help: "HTTP requests by route and status code.",
	}, []string{"route", "code"})
	latency := f.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "biobridge_gateway_http_request_duration_seconds",
		Help:    "HTTP request latency by route.",
		Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10},
	}, []string{"route"})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		next.ServeHTTP(rec, r)
		route := routeOf(r)
		requests.WithLabelValues(route, strconv.Itoa(rec.code)).Inc()
		latency.WithLabelValues(route).Observe(time.Since(start).Seconds())
	})
}

// routeOf maps a path to its route template so metric labels stay bounded
// and free of user ids.
func routeOf(r *http.Request) string {
	p := r.URL.Path
	switch {
	case strings.HasPrefix(p, "/v1/users/") && strings.HasSuffix(p, "/biometrics/latest"):
		return "/v1/users/{user_id}/biometrics/latest"
	case strings.HasPrefix(p, "/v1/users/") && strings.HasSuffix(p, "/readings"):
		return "/v1/users/{user_id}/biometrics/{metric}/readings"
	case strings.HasPrefix(p, "/v1/connections/") && strings.HasSuffix(p, "/authorize"):
		return "/v1/connections/{vendor}/authorize"
	case strings.HasPrefix(p, "/v1/connections/"):
		return "/v1/connections/{vendor}"
	case strings.HasPrefix(p, "/v1/oauth/"):
		return "/v1/oauth/{vendor}/callback"
	}
	switch p {
	case "/v1/healthkit/samples", "/v1/webhooks/whoop", "/v1/webhooks/oura", "/v1/connections", "/v1/metrics",
		"/healthz", "/readyz", "/metrics", "/openapi.json":
		return p
	}
	return "other"
}
