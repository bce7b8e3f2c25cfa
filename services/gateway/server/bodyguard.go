package server

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promauto"
	"golang.org/x/sync/semaphore"

	"github.com/biobridge/bridge/pkg/apperr"
	"github.com/biobridge/bridge/pkg/auth"
)

// smallBodyBytes caps the bodies of every route that is neither a HealthKit
// push nor a webhook (connect requests carry a few fields).
const smallBodyBytes = 64 << 10

// bodyLimits are the body caps per kind of route.
type bodyLimits struct {
	push, webhook, other int64
}

// forPath picks the cap before anything is read, so an unauthenticated
// webhook or an unknown path can never make the gateway buffer a push-sized
// body.
func (l bodyLimits) forPath(path string) int64 {
	switch {
	case path == "/v1/healthkit/samples":
		return l.push
	case strings.HasPrefix(path, "/v1/webhooks/"):
		return l.webhook
	}
	return l.other
}

// credentialCheck refuses a request whose credentials are missing or, for
// user routes, invalid, before a byte of its body is read. It returns nil
// when the request may go on (the backend checks the credential fully).
type credentialCheck func(r *http.Request) error

// credentialsFor returns the check of a body-carrying route: a valid user
// JWT for the app's routes (the gateway verifies it as the backends do),
// the signature headers for vendor webhooks (their signatures cover the
// body, so ingest verifies them once it has it).
func credentialsFor(users *auth.UserVerifier) func(path string) credentialCheck {
	userJWT := func(r *http.Request) error {
		_, err := users.Verify(bearer(r))
		return err
	}
	headers := func(names ...string) credentialCheck {
		return func(r *http.Request) error {
			for _, n := range names {
				if r.Header.Get(n) == "" {
					return apperr.E(apperr.Unauthenticated, "missing_signature", "missing "+n+" header")
				}
			}
			return nil
		}
	}
	return func(path string) credentialCheck {
		switch {
		case path == "/v1/healthkit/samples", strings.HasPrefix(path, "/v1/connections"):
			return userJWT
		case path == "/v1/webhooks/whoop":
			return headers("X-WHOOP-Signature", "X-WHOOP-Signature-Timestamp")
		case path == "/v1/webhooks/oura":
			return headers("x-oura-signature", "x-oura-timestamp")
		}
		return nil
	}
}

// bearer returns the token of "Authorization: Bearer <token>", or "".
func bearer(r *http.Request) string {
	scheme, tok, ok := strings.Cut(strings.TrimSpace(r.Header.Get("Authorization")), " ")
	if !ok || !strings.EqualFold(scheme, "bearer") {
		return ""
	}
	return strings.TrimSpace(tok)
}

// bodyGuard protects the gateway's memory from request bodies: it checks
// credentials before reading (an anonymous client cannot make the gateway
// buffer anything), caps each body by route (413), and bounds the bytes of
// all bodies in flight together (503 with Retry-After past the budget).
// It reads the whole body before routing, so no handler ever sees a
// partial body or a decode error instead of 413.
type bodyGuard struct {
	limits      bodyLimits
	credentials func(path string) credentialCheck
	inflight    *semaphore.Weighted
	waitBudget  time.Duration

	inflightBytes prometheus.Gauge
	shed          prometheus.Counter
	refused       *prometheus.CounterVec
}

func newBodyGuard(reg prometheus.Registerer, limits bodyLimits, maxInflight int64, waitBudget time.Duration, credentials func(string) credentialCheck) *bodyGuard {
	f := promauto.With(reg)
	return &bodyGuard{
		limits: limits, credentials: credentials, inflight: semaphore.NewWeighted(maxInflight), waitBudget: waitBudget,
		inflightBytes: f.NewGauge(prometheus.GaugeOpts{
			Name: "biobridge_gateway_inflight_body_bytes",
			Help: "Bytes reserved by request bodies being read or handled.",
		}),
		shed: f.NewCounter(prometheus.CounterOpts{
			Name: "biobridge_gateway_body_budget_shed_total",
			Help: "Requests answered 503 because the in-flight body budget was used up.",
		}),
		refused: f.NewCounterVec(prometheus.CounterOpts{
			Name: "biobridge_gateway_refused_before_body_total",
			Help: "Requests refused for their credentials before their body was read, by reason.",
		}, []string{"reason"}),
	}
}

func (g *bodyGuard) wrap(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Body == nil || r.Body == http.NoBody || r.Method == http.MethodGet || r.Method == http.MethodDelete || r.Method == http.MethodHead {
			next.ServeHTTP(w, r)
			return
		}
		if check := g.credentials(r.URL.Path); check != nil {
			if err := check(r); err != nil {
				reason := apperr.ReasonOf(err)
				g.refused.WithLabelValues(reason).Inc()
				// Closing the connection spares reading (and discarding)
				// what the anonymous client still sends.
				w.Header().Set("Connection", "close")
				writeError(w, http.StatusUnauthorized, reason, publicMessage(err))
				return
			}
		}
		max := g.limits.forPath(r.URL.Path)
		if r.ContentLength > max {
			w.Header().Set("Connection", "close")
			writeError(w, http.StatusRequestEntityTooLarge, "body_too_large", fmt.Sprintf("request body exceeds %d bytes", max))
			return
		}
		reserve := max
		if r.ContentLength >= 0 {
			reserve = r.ContentLength
		}
		ctx, cancel := context.WithTimeout(r.Context(), g.waitBudget)
		err := g.inflight.Acquire(ctx, reserve)
		cancel()
		if err != nil {
			g.shed.Inc()
			w.Header().Set("Retry-After", strconv.Itoa(1))
			w.Header().Set("Connection", "close")
			writeError(w, http.StatusServiceUnavailable, "body_budget_exhausted", "too many request bodies in flight, retry later")
			return
		}
		g.inflightBytes.Add(float64(reserve))
		defer func() {
			g.inflight.Release(reserve)
			g.inflightBytes.Sub(float64(reserve))
		}()
		body, err := readBody(http.MaxBytesReader(w, r.Body, max), r.ContentLength)
		if err != nil {
			var tooLarge *http.MaxBytesError
			if errors.As(err, &tooLarge) {
				writeError(w, http.StatusRequestEntityTooLarge, "body_too_large", fmt.Sprintf("request body exceeds %d bytes", max))
				return
			}
			writeError(w, http.StatusBadRequest, "unreadable_body", "request body could not be read")
			return
		}
		r.Body = &bufferedBody{b: body}
		r.ContentLength = int64(len(body))
		next.ServeHTTP(w, r)
	})
}

// publicMessage is the safe message of an *apperr.Error.
func publicMessage(err error) string {
	var ae *apperr.Error
	if errors.As(err, &ae) && ae.Message != "" {
		return ae.Message
	}
	return "unauthenticated"
}

// presizeMax bounds the buffer readBody allocates before any byte arrives
// (a HealthKit push of 10000 samples is about 2.5 MB); larger bodies grow it.
const presizeMax = 4 << 20

// readBody reads a whole body into one buffer of its announced length (plus
// the byte that finds EOF), up to presizeMax; past that, or when the length
// is unknown, the buffer grows as the bytes arrive.
func readBody(r io.Reader, contentLength int64) ([]byte, error) {
	if contentLength < 0 {
		return io.ReadAll(r)
	}
	b := make([]byte, 0, min(contentLength, presizeMax)+1)
	for {
		n, err := r.Read(b[len(b):cap(b)])
		b = b[:len(b)+n]
		if err != nil {
			if errors.Is(err, io.EOF) {
				return b, nil
			}
			return b, err
		}
		if len(b) == cap(b) {
			b = append(b, 0)[:len(b)]
		}
	}
}
