// Package vendorhttp is the one HTTP client per vendor that every fetch goes
// through: a pooled transport with connect and total timeouts and a
// connection cap, the app-wide rate budget checked before each request, the
// vendor's 429 answers turned into a pause, and a span and metrics per call.
// Close waits for calls in flight, so a shutdown never cuts a fetch whose
// result a worker is about to store.
//
// Errors are *Error values whose Kind tells the caller what to do: wait
// (RateLimited), back off and retry (Unavailable), give up on the record
// (NotFound), or treat the job as broken (Permanent).
package vendorhttp

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/biobridge/bridge/pkg/ratebudget"
	"github.com/biobridge/bridge/pkg/telemetry"
)

// Kind classifies a failed call.
type Kind int

// The kinds of failure.
const (
	// RateLimited: the vendor said 429, or the shared budget is spent.
	// Retry after RetryAfter; not the job's fault.
	RateLimited Kind = iota + 1
	// Unavailable: 5xx, timeout, connection trouble. Back off and retry.
	Unavailable
	// NotFound: 404. The record is gone (deleted since the webhook).
	NotFound
	// Unauthorized: 401/403. The token was rejected (TokenRejected) or
	// lacks a scope.
	Unauthorized
	// Permanent: any other 4xx or an undecodable answer; retrying the same
	// request cannot help.
	Permanent
)

func (k Kind) String() string {
	switch k {
	case RateLimited:
		return "rate_limited"
	case Unavailable:
		return "unavailable"
	case NotFound:
		return "not_found"
	case Unauthorized:
		return "unauthorized"
	case Permanent:
		return "permanent"
	}
	return "unknown"
}

// Error is a failed vendor call. Its text never contains the response body
// (health data) or the token.
type Error struct {
	Kind       Kind
	Vendor     string
	Endpoint   string
	Status     int
	RetryAfter time.Duration
	// TokenRejected: the vendor refused the access token itself (a 401, or
	// a 403 that says so), not a scope or the account's plan. A new token
	// may work; the same one never will.
	TokenRejected bool
	Err           error
}

func (e *Error) Error() string {
	s := fmt.Sprintf("%s %s: %s", e.Vendor, e.Endpoint, e.Kind)
	if e.Status != 0 {
		s += fmt.Sprintf(" (HTTP %d)", e.Status)
	}
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// IsTokenRejected reports whether err is a vendor call that failed because
// the vendor refused the access token.
func IsTokenRejected(err error) bool {
	var ve *Error
	return errors.As(err, &ve) && ve.TokenRejected
}

// KindOf returns the Kind of the first *Error in err's chain (0 if none).
func KindOf(err error) Kind {
	var ve *Error
	if errors.As(err, &ve) {
		return ve.Kind
	}
	return 0
}

// Budget is the shared rate budget (ratebudget.Budget).
type Budget interface {
	Take(ctx context.Context) (time.Duration, error)
	// TakeShare takes the budget for work that may fill each window only
	// up to share of its limit.
	TakeShare(ctx context.Context, share float64) (time.Duration, error)
	Pause(ctx context.Context, d time.Duration) error
	// Utilization is how full the fullest window is (0..1).
	Utilization(ctx context.Context) (float64, error)
}

type backgroundKey struct{}

// Background marks calls made with the returned context as background work
// (backfill, reconciliation): they take at most Config.BackgroundShare of
// the budget and never wait for it, so live work keeps both the rest of the
// budget and the workers.
func Background(ctx context.Context) context.Context {
	return context.WithValue(ctx, backgroundKey{}, true)
}

// IsBackground reports whether ctx was marked by Background.
func IsBackground(ctx context.Context) bool {
	b, _ := ctx.Value(backgroundKey{}).(bool)
	return b
}

// Config configures a Client.
type Config struct {
	// TracerProvider makes the spans (default: the global one).
	TracerProvider trace.TracerProvider
	// Vendor names the vendor in metrics, spans and errors ("whoop").
	Vendor string
	// BaseURL is prepended to every path.
	BaseURL string
	// ConnectTimeout bounds dialing and the TLS handshake (default 5s).
	ConnectTimeout time.Duration
	// RequestTimeout bounds one call from sending to the last body byte
	// (default 15s).
	RequestTimeout time.Duration
	// MaxConns caps connections to the vendor (default 16).
	MaxConns int
	// Budget, when set, is taken before every request.
	Budget Budget
	// BudgetWait is how long a call may wait for the budget before it
	// gives up with RateLimited (default 2s): longer waits are better spent
	// with the job back in the queue than holding a worker.
	BudgetWait time.Duration
	// BackgroundShare is the part (0..1] of each budget window background
	// calls may fill (default 0.5).
	BackgroundShare float64
	// PauseOn429 pauses the whole budget when the vendor answers 429: right
	// for an app-wide limit (WHOOP), wrong for a per-token one (Oura).
	PauseOn429 bool
	// Default429Wait is used when a 429 names no delay (default 5s).
	Default429Wait time.Duration
	// MaxBodyBytes caps a response body (default 8 MiB).
	MaxBodyBytes int64
	// Registry receives the metrics (shared by every vendor's client).
	Metrics *Metrics
	Logger  *slog.Logger
}

func (c *Config) setDefaults() {
	if c.ConnectTimeout <= 0 {
		c.ConnectTimeout = 5 * time.Second
	}
	if c.RequestTimeout <= 0 {
		c.RequestTimeout = 15 * time.Second
	}
	if c.MaxConns <= 0 {
		c.MaxConns = 16
	}
	if c.BudgetWait <= 0 {
		c.BudgetWait = 2 * time.Second
	}
	if c.BackgroundShare <= 0 || c.BackgroundShare > 1 {
		c.BackgroundShare = 0.5
	}
	if c.Default429Wait <= 0 {
		c.Default429Wait = 5 * time.Second
	}
	if c.MaxBodyBytes <= 0 {
		c.MaxBodyBytes = 8 << 20
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Metrics == nil {
		c.Metrics = NewMetrics(nil)
	}
}

// Metrics are the vendor call metrics, shared by the vendors' clients.
// Their names and labels are what the deploy dashboards and alerts query
// (deploy/README.md); endpoints are in the spans, not in the labels.
type Metrics struct {
	requests    *prometheus.CounterVec
	duration    *prometheus.HistogramVec
	rateLimited *prometheus.CounterVec
	budgetWait  *prometheus.HistogramVec
	inFlight    *prometheus.GaugeVec
	utilization *prometheus.GaugeVec
}

// NewMetrics registers the metrics on reg (nil: unregistered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "biobridge_ingest_vendor_requests_total",
			Help: "Vendor API calls by vendor and HTTP status (\"error\" when no answer came).",
		}, []string{"vendor", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "biobridge_ingest_vendor_request_duration_seconds",
			Help:    "Vendor API call latency (fetch latency) by vendor.",
			Buckets: []float64{.01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		}, []string{"vendor"}),
		rateLimited: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "biobridge_ingest_vendor_rate_limited_total",
			Help: "Calls not made or refused because of rate limits: source \"vendor\" (a 429) or \"budget\" (our shared budget was spent).",
		}, []string{"vendor", "source"}),
		budgetWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "biobridge_ingest_rate_budget_wait_seconds",
			Help:    "Time calls waited for the shared rate budget.",
			Buckets: []float64{0, .01, .05, .1, .25, .5, 1, 2, 5},
		}, []string{"vendor"}),
		inFlight: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "biobridge_ingest_vendor_requests_in_flight",
			Help: "Vendor API calls in flight.",
		}, []string{"vendor"}),
		utilization: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "biobridge_ingest_rate_budget_utilization_ratio",
			Help: "How full the vendor's shared rate budget is: requests in its fullest window over that window's limit (measured periodically; the same on every replica).",
		}, []string{"vendor"}),
	}
	if reg != nil {
		reg.MustRegister(m.requests, m.duration, m.rateLimited, m.budgetWait, m.inFlight, m.utilization)
	}
	return m
}

// init creates vendor's series at zero: a labelled series is exported only
// after its first use otherwise, and dashboards, alerts and rate() over the
// first event need it before.
func (m *Metrics) init(vendor string) {
	for _, code := range []string{"200", "404", "429", "500", "error"} {
		m.requests.WithLabelValues(vendor, code)
	}
	m.duration.WithLabelValues(vendor)
	for _, src := range []string{"vendor", "budget"} {
		m.rateLimited.WithLabelValues(vendor, src)
	}
	m.budgetWait.WithLabelValues(vendor)
	m.inFlight.WithLabelValues(vendor)
	m.utilization.WithLabelValues(vendor)
}

// Client calls one vendor's API.
type Client struct {
	cfg       Config
	http      *http.Client
	transport *http.Transport
	tracer    trace.Tracer

	mu     sync.Mutex
	closed bool
	wg     sync.WaitGroup
}

// New builds the vendor's client. Build it once and reuse it: the pool is
// what makes calls cheap.
func New(cfg Config) (*Client, error) {
	cfg.setDefaults()
	if cfg.Vendor == "" || cfg.BaseURL == "" {
		return nil, errors.New("vendorhttp: Vendor and BaseURL are required")
	}
	cfg.BaseURL = strings.TrimRight(cfg.BaseURL, "/")
	cfg.Metrics.init(cfg.Vendor)
	dialer := &net.Dialer{Timeout: cfg.ConnectTimeout, KeepAlive: 30 * time.Second}
	tr := &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           dialer.DialContext,
		TLSHandshakeTimeout:   cfg.ConnectTimeout,
		MaxConnsPerHost:       cfg.MaxConns,
		MaxIdleConns:          cfg.MaxConns,
		MaxIdleConnsPerHost:   cfg.MaxConns,
		IdleConnTimeout:       90 * time.Second,
		ResponseHeaderTimeout: cfg.RequestTimeout,
		ExpectContinueTimeout: time.Second,
		ForceAttemptHTTP2:     true,
	}
	return &Client{
		cfg:       cfg,
		transport: tr,
		// Redirects are not followed: vendor data endpoints never redirect,
		// and following one would send the bearer token elsewhere.
		http: &http.Client{Transport: tr, Timeout: cfg.RequestTimeout, CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		}},
		tracer: telemetry.TracerProviderOr(cfg.TracerProvider).Tracer("github.com/biobridge/bridge/services/ingest/vendorhttp"),
	}, nil
}

// Vendor returns the vendor name.
func (c *Client) Vendor() string { return c.cfg.Vendor }

// MeasureBudget refreshes the budget utilization gauge.
func (c *Client) MeasureBudget(ctx context.Context) error {
	if c.cfg.Budget == nil {
		return nil
	}
	u, err := c.cfg.Budget.Utilization(ctx)
	if err != nil {
		return err
	}
	c.cfg.Metrics.utilization.WithLabelValues(c.cfg.Vendor).Set(u)
	return nil
}

// GetJSON GETs BaseURL+path with the bearer token and decodes a 200 answer
// into dst. endpoint is the low-cardinality name used in metrics and spans
// ("sleep", "cycle_recovery"); path may contain record ids.
func (c *Client) GetJSON(ctx context.Context, endpoint, path, token string, dst any) error {
	if !c.enter() {
		return c.fail(endpoint, Unavailable, 0, 0, errors.New("client is shut down"))
	}
	defer c.wg.Done()
	if err := c.takeBudget(ctx, endpoint); err != nil {
		return err
	}

	ctx, span := c.tracer.Start(ctx, c.cfg.Vendor+" GET "+endpoint, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("vendor", c.cfg.Vendor), attribute.String("vendor.endpoint", endpoint),
			attribute.String("http.request.method", http.MethodGet)))
	defer span.End()
	m := c.cfg.Metrics
	m.inFlight.WithLabelValues(c.cfg.Vendor).Inc()
	defer m.inFlight.WithLabelValues(c.cfg.Vendor).Dec()
	start := time.Now()
	err := c.do(ctx, endpoint, path, token, dst, span)
	m.duration.WithLabelValues(c.cfg.Vendor).Observe(time.Since(start).Seconds())
	if err != nil {
		span.SetStatus(codes.Error, KindOf(err).String())
	}
	return err
}

func (c *Client) do(ctx context.Context, endpoint, path, token string, dst any, span trace.Span) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.cfg.BaseURL+path, nil)
	if err != nil {
		return c.fail(endpoint, Permanent, 0, 0, fmt.Errorf("build request: %w", err))
	}
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		c.cfg.Metrics.requests.WithLabelValues(c.cfg.Vendor, "error").Inc()
		if ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return ctx.Err()
		}
		// Timeouts and connection failures: the URL in err may carry ids,
		// never tokens; keep only the kind of failure.
		return c.fail(endpoint, Unavailable, 0, 0, errors.New(transportProblem(err)))
	}
	defer resp.Body.Close()
	span.SetAttributes(attribute.Int("http.response.status_code", resp.StatusCode))
	c.cfg.Metrics.requests.WithLabelValues(c.cfg.Vendor, strconv.Itoa(resp.StatusCode)).Inc()
	body, readErr := io.ReadAll(io.LimitReader(resp.Body, c.cfg.MaxBodyBytes+1))
	switch {
	case resp.StatusCode == http.StatusOK:
		if readErr != nil {
			return c.fail(endpoint, Unavailable, resp.StatusCode, 0, errors.New("answer cut off"))
		}
		if int64(len(body)) > c.cfg.MaxBodyBytes {
			return c.fail(endpoint, Permanent, resp.StatusCode, 0, errors.New("answer too large"))
		}
		if err := json.Unmarshal(body, dst); err != nil {
			return c.fail(endpoint, Permanent, resp.StatusCode, 0, errors.New("answer is not the expected JSON"))
		}
		return nil
	case resp.StatusCode == http.StatusTooManyRequests:
		wait := retryAfter(resp.Header, time.Now())
		if wait <= 0 {
			wait = c.cfg.Default429Wait
		}
		c.cfg.Metrics.rateLimited.WithLabelValues(c.cfg.Vendor, "vendor").Inc()
		if c.cfg.PauseOn429 && c.cfg.Budget != nil {
			if err := c.cfg.Budget.Pause(context.WithoutCancel(ctx), wait); err != nil {
				c.cfg.Logger.WarnContext(ctx, "cannot pause the rate budget", slog.String("vendor", c.cfg.Vendor), slog.Any("err", err))
			}
		}
		return c.fail(endpoint, RateLimited, resp.StatusCode, wait, nil)
	case resp.StatusCode == http.StatusNotFound:
		return c.fail(endpoint, NotFound, resp.StatusCode, 0, nil)
	case resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden:
		e := c.fail(endpoint, Unauthorized, resp.StatusCode, 0, nil).(*Error)
		e.TokenRejected = TokenRejected(resp.StatusCode, resp.Header, body)
		return e
	case resp.StatusCode >= 500 || resp.StatusCode == http.StatusRequestTimeout:
		// Only Retry-After counts here: WHOOP sends X-RateLimit-Reset on
		// every answer, and on a 500 it says nothing about the outage.
		return c.fail(endpoint, Unavailable, resp.StatusCode, retryAfterOnly(resp.Header, time.Now()), nil)
	}
	return c.fail(endpoint, Permanent, resp.StatusCode, 0, nil)
}

// takeBudget waits for the shared budget up to BudgetWait. Background
// calls take only their share and do not wait: the job goes back to the
// queue until the named time, and the worker is free for live work.
func (c *Client) takeBudget(ctx context.Context, endpoint string) error {
	b := c.cfg.Budget
	if b == nil {
		return nil
	}
	start := time.Now()
	deadline := start.Add(c.cfg.BudgetWait)
	share := 1.0
	if IsBackground(ctx) {
		share, deadline = c.cfg.BackgroundShare, start
	}
	wait, err := ratebudget.Wait(ctx, deadline, func(ctx context.Context) (time.Duration, error) { return b.TakeShare(ctx, share) })
	switch {
	case errors.Is(err, ratebudget.ErrSpent):
		c.cfg.Metrics.budgetWait.WithLabelValues(c.cfg.Vendor).Observe(time.Since(start).Seconds())
		c.cfg.Metrics.rateLimited.WithLabelValues(c.cfg.Vendor, "budget").Inc()
		return c.fail(endpoint, RateLimited, 0, wait, err)
	case err != nil && err == ctx.Err(): // Wait returns ctx.Err() itself; a wrapped one is take's
		return err
	case err != nil:
		// Without Redis there is no shared budget; calling anyway could
		// get the whole app throttled, so treat it as an outage.
		return c.fail(endpoint, Unavailable, 0, 0, err)
	}
	c.cfg.Metrics.budgetWait.WithLabelValues(c.cfg.Vendor).Observe(time.Since(start).Seconds())
	return nil
}

func (c *Client) fail(endpoint string, k Kind, status int, retry time.Duration, err error) error {
	return &Error{Kind: k, Vendor: c.cfg.Vendor, Endpoint: endpoint, Status: status, RetryAfter: retry, Err: err}
}

func (c *Client) enter() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return false
	}
	c.wg.Add(1)
	return true
}

// Close refuses new calls, waits for the ones in flight (or ctx) and
// closes idle connections.
func (c *Client) Close(ctx context.Context) error {
	c.mu.Lock()
	c.closed = true
	c.mu.Unlock()
	done := make(chan struct{})
	go func() {
		c.wg.Wait()
		close(done)
	}()
	var err error
	select {
	case <-done:
	case <-ctx.Done():
		err = fmt.Errorf("close %s client: calls still in flight: %w", c.cfg.Vendor, ctx.Err())
	}
	c.transport.CloseIdleConnections()
	return err
}

// TokenRejected decides whether a 401 or 403 answer means the access token
// itself was refused (a refreshed token may work) rather than a missing
// scope or an account without access to the data (nothing a refresh can
// fix). A 401 always means the token (RFC 6750 §3.1: invalid_token). A 403
// means the token only when it says so: WWW-Authenticate error
// "invalid_token", or an error text naming the token (expired, revoked,
// invalid) and no scope. Oura answers 403 for an expired subscription, so a
// 403 that says nothing is not taken for a token problem.
func TokenRejected(status int, h http.Header, body []byte) bool {
	switch status {
	case http.StatusUnauthorized:
		return true
	case http.StatusForbidden:
	default:
		return false
	}
	if auth := strings.ToLower(h.Get("WWW-Authenticate")); auth != "" {
		switch {
		case strings.Contains(auth, "insufficient_scope"):
			return false
		case strings.Contains(auth, "invalid_token"):
			return true
		}
	}
	var fields map[string]any
	if len(body) > 4096 || json.Unmarshal(body, &fields) != nil {
		return false
	}
	var text strings.Builder
	for _, k := range []string{"error", "error_description", "detail", "message", "title"} {
		if v, ok := fields[k].(string); ok {
			text.WriteString(strings.ToLower(v))
			text.WriteByte(' ')
		}
	}
	t := text.String()
	if strings.Contains(t, "scope") {
		return false
	}
	return strings.Contains(t, "invalid_token") || strings.Contains(t, "token") &&
		(strings.Contains(t, "expired") || strings.Contains(t, "revoked") || strings.Contains(t, "invalid"))
}

// retryAfter reads, for a 429, Retry-After (seconds or an HTTP date) and
// WHOOP's X-RateLimit-Reset (seconds until the window resets) and returns
// the longer, capped at 15 minutes.
func retryAfter(h http.Header, now time.Time) time.Duration {
	d := retryAfterOnly(h, now)
	if v := strings.TrimSpace(h.Get("X-RateLimit-Reset")); v != "" {
		if n, err := strconv.ParseFloat(v, 64); err == nil && n > 0 {
			d = max(d, time.Duration(n*float64(time.Second)))
		}
	}
	return min(max(d, 0), 15*time.Minute)
}

// retryAfterOnly reads Retry-After alone, capped at 15 minutes.
func retryAfterOnly(h http.Header, now time.Time) time.Duration {
	var d time.Duration
	if v := strings.TrimSpace(h.Get("Retry-After")); v != "" {
		if n, err := strconv.ParseFloat(v, 64); err == nil && n > 0 {
			d = time.Duration(n * float64(time.Second))
		} else if t, err := http.ParseTime(v); err == nil {
			d = t.Sub(now)
		}
	}
	return min(max(d, 0), 15*time.Minute)
}

func transportProblem(err error) string {
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return "timeout"
	case strings.Contains(err.Error(), "connection refused"):
		return "connection refused"
	case strings.Contains(err.Error(), "EOF"), strings.Contains(err.Error(), "connection reset"):
		return "connection lost"
	}
	return "transport error"
}
