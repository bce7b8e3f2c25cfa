// Package admin serves the operator endpoints every service exposes on its
// admin HTTP port: /metrics, /healthz (liveness: the process answers) and
// /readyz (readiness: every dependency check passes). Keeping them off the
// public port means a load balancer or the internet never sees them.
package admin

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// CheckTimeout bounds each readiness check.
const CheckTimeout = 2 * time.Second

// shutdownTimeout bounds the HTTP shutdown once Serve's context ends.
const shutdownTimeout = 5 * time.Second

// Check is one readiness check, for example a PostgreSQL or Redis ping.
type Check struct {
	Name string
	Fn   func(context.Context) error
}

// Server is the admin HTTP server.
type Server struct {
	addr   string
	logger *slog.Logger
	checks []Check
	mux    *http.ServeMux
	srv    *http.Server

	mu sync.Mutex // guards ln: Addr may be called while Serve starts
	ln net.Listener
}

// New returns a server for addr (":0" picks a free port) exposing reg.
func New(addr string, reg *prometheus.Registry, logger *slog.Logger, checks ...Check) *Server {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	s := &Server{addr: addr, logger: logger, checks: checks, mux: http.NewServeMux()}
	if reg != nil {
		// Readiness is also a metric, so alerts can say which dependency
		// (PostgreSQL, Redis, Kafka, a peer service) is unreachable. A
		// second server on the same registry keeps the first collector.
		if err := reg.Register(&readinessCollector{checks: checks}); err != nil {
			var are prometheus.AlreadyRegisteredError
			if !errors.As(err, &are) {
				logger.Warn("register readiness metric", "err", err)
			}
		}
		s.mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
			Registry:          reg, // also counts scrape errors on reg
			EnableOpenMetrics: true,
		}))
	}
	s.mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]any{"status": "ok"})
	})
	s.mux.HandleFunc("GET /readyz", s.readyz)
	s.srv = &http.Server{
		Handler:           s.mux,
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	return s
}

// Handle adds a route (for example a debug endpoint). Call before Serve.
func (s *Server) Handle(pattern string, h http.Handler) {
	s.mux.Handle(pattern, h)
}

// Listen binds the address, so Addr is known before Serve (":0" in tests).
func (s *Server) Listen() error {
	_, err := s.listener()
	return err
}

func (s *Server) listener() (net.Listener, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln != nil {
		return s.ln, nil
	}
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return nil, fmt.Errorf("listen admin on %s: %w", s.addr, err)
	}
	s.ln = ln
	return ln, nil
}

// Addr returns the bound address once Listen succeeded, else the configured one.
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ln != nil {
		return s.ln.Addr().String()
	}
	return s.addr
}

// Serve serves until ctx is done, then shuts down gracefully (bounded) and
// returns nil. It calls Listen if needed.
func (s *Server) Serve(ctx context.Context) error {
	ln, err := s.listener()
	if err != nil {
		return err
	}
	errc := make(chan error, 1)
	go func() { errc <- s.srv.Serve(ln) }()
	s.logger.Info("admin server listening", "addr", s.Addr())
	select {
	case err := <-errc:
		return fmt.Errorf("serve admin: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if err := s.srv.Shutdown(sctx); err != nil {
		// Shutdown timed out: close the remaining connections hard.
		_ = s.srv.Close()
		return fmt.Errorf("shutdown admin server: %w", err)
	}
	if err := <-errc; err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve admin: %w", err)
	}
	return nil
}

type checkResult struct {
	Name  string `json:"name"`
	Error string `json:"error"`
}

// PublicError is a readiness failure whose message is safe to show on
// /readyz (it names no host, credential or user), for checks whose reason is
// what an operator needs to see there, such as a misconfigured topic.
type PublicError struct{ Message string }

func (e *PublicError) Error() string { return e.Message }

// Public returns a readiness failure that /readyz shows as msg.
func Public(msg string) error { return &PublicError{Message: msg} }

// readyz runs all checks concurrently, each bounded by CheckTimeout. The
// message for a failing check is generic (it failed or timed out) because
// driver errors can carry connection strings, unless the check returned a
// PublicError; the full error is logged.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) {
	results := runChecks(r.Context(), s.checks)
	var failed []checkResult
	for i, err := range results {
		if err == nil {
			continue
		}
		msg := "check failed"
		var pub *PublicError
		switch {
		case errors.Is(err, context.DeadlineExceeded):
			msg = "check timed out"
		case errors.As(err, &pub):
			msg = pub.Message
		}
		s.logger.WarnContext(r.Context(), "readiness check failed", "check", s.checks[i].Name, "err", err)
		failed = append(failed, checkResult{Name: s.checks[i].Name, Error: msg})
	}
	if len(failed) > 0 {
		writeJSON(w, http.StatusServiceUnavailable, map[string]any{"status": "unavailable", "failed": failed})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"status": "ok"})
}

// ReadyHandler is the /readyz handler, for a service that also answers
// readiness on another listener (the gateway's public port).
func (s *Server) ReadyHandler() http.Handler { return http.HandlerFunc(s.readyz) }

// runChecks runs every check concurrently, each bounded by CheckTimeout, and
// returns their errors in order.
func runChecks(ctx context.Context, checks []Check) []error {
	results := make([]error, len(checks))
	var wg sync.WaitGroup
	for i, c := range checks {
		wg.Go(func() {
			cctx, cancel := context.WithTimeout(ctx, CheckTimeout)
			defer cancel()
			results[i] = runCheck(cctx, c)
		})
	}
	wg.Wait()
	return results
}

// runCheck runs c but returns when ctx expires even if c ignores ctx.
func runCheck(ctx context.Context, c Check) (err error) {
	done := make(chan error, 1)
	go func() {
		defer func() {
			if p := recover(); p != nil {
				done <- fmt.Errorf("check panicked: %v", p)
			}
		}()
		done <- c.Fn(ctx)
	}()
	select {
	case err := <-done:
		if err != nil && ctx.Err() != nil {
			return fmt.Errorf("%w: %w", ctx.Err(), err)
		}
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

var readinessDesc = prometheus.NewDesc(
	"biobridge_readiness_check_success",
	"Whether a readiness check passed when /metrics was scraped (1) or not (0).",
	[]string{"check"}, nil,
)

// readinessCollector runs the readiness checks on every scrape.
type readinessCollector struct {
	checks []Check
}

func (c *readinessCollector) Describe(ch chan<- *prometheus.Desc) { ch <- readinessDesc }

func (c *readinessCollector) Collect(ch chan<- prometheus.Metric) {
	for i, err := range runChecks(context.Background(), c.checks) {
		ok := 0.0
		if err == nil {
			ok = 1
		}
		ch <- prometheus.MustNewConstMetric(readinessDesc, prometheus.GaugeValue, ok, c.checks[i].Name)
	}
}
