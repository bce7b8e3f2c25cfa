package vendoremu

import (
	"errors"
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Faults are injected misbehaviours, settable at runtime. Every decision is
// drawn from the seeded source, so a run with the same seed and the same
// sequence of calls misbehaves the same way.
type Faults struct {
	// ErrorRate is the fraction (0..1) of vendor data-API requests answered
	// 500.
	ErrorRate float64 `json:"error_rate"`
	// RateLimitRate is the fraction answered 429 with the vendor's headers,
	// on top of the real rate limits.
	RateLimitRate float64 `json:"rate_limit_rate"`
	// Latency is added before every data-API and token-endpoint answer.
	Latency time.Duration `json:"latency"`
	// TokenErrorRate is the fraction of token-endpoint requests answered 500
	// before anything happens (nothing rotates).
	TokenErrorRate float64 `json:"token_error_rate"`
	// TokenLostResponseRate is the fraction of successful refreshes whose
	// answer is replaced by a 502 after the rotation happened: the old
	// refresh token is spent and the caller never saw the new one.
	TokenLostResponseRate float64 `json:"token_lost_response_rate"`
	// WebhookDropRate is the fraction of webhook deliveries never sent.
	WebhookDropRate float64 `json:"webhook_drop_rate"`
	// WebhookDuplicateRate is the fraction of webhook deliveries sent twice
	// (same body, same trace_id).
	WebhookDuplicateRate float64 `json:"webhook_duplicate_rate"`
	// WebhookReorder holds deliveries for Config.ReorderWindow and releases
	// them shuffled (never in the original order when there are several).
	WebhookReorder bool `json:"webhook_reorder"`
	// WhoopRateLimit, when positive, replaces Config.WhoopRateLimit (the
	// per-window budget).
	WhoopRateLimit int `json:"whoop_rate_limit"`
	// OuraRateLimit, when positive, replaces Config.OuraRateLimit.
	OuraRateLimit int `json:"oura_rate_limit"`
}

func (f Faults) validate() error {
	var errs []error
	for _, p := range []struct {
		name string
		v    float64
	}{
		{"ErrorRate", f.ErrorRate}, {"RateLimitRate", f.RateLimitRate}, {"TokenErrorRate", f.TokenErrorRate},
		{"TokenLostResponseRate", f.TokenLostResponseRate}, {"WebhookDropRate", f.WebhookDropRate},
		{"WebhookDuplicateRate", f.WebhookDuplicateRate},
	} {
		if math.IsNaN(p.v) || p.v < 0 || p.v > 1 {
			errs = append(errs, fmt.Errorf("%s must be between 0 and 1", p.name))
		}
	}
	if f.Latency < 0 || f.Latency > time.Minute {
		errs = append(errs, errors.New("Latency must be between 0 and 1m"))
	}
	if f.WhoopRateLimit < 0 || f.OuraRateLimit < 0 {
		errs = append(errs, errors.New("WhoopRateLimit and OuraRateLimit must not be negative"))
	}
	return errors.Join(errs...)
}

// SetFaults replaces the current faults.
func (e *Emulator) SetFaults(f Faults) error {
	if err := f.validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	e.faults = f
	return nil
}

// Faults returns the current faults.
func (e *Emulator) Faults() Faults {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.faults
}

// window is a fixed rate window.
type window struct {
	start time.Time
	count int
}

// roll starts a new window when the current one has passed.
func (w *window) roll(now time.Time, d time.Duration) {
	if w.start.IsZero() || !now.Before(w.start.Add(d)) {
		w.start, w.count = now, 0
	}
}

func (w *window) resetIn(now time.Time, d time.Duration) int {
	return int(math.Ceil(w.start.Add(d).Sub(now).Seconds()))
}

// slider measures the most requests that arrived within any interval of the
// window's length, whether or not they were let through: what a benchmark
// checks to prove a client stays under the vendor's limit.
type slider struct {
	times []time.Time
	max   int
}

func (s *slider) observe(now time.Time, d time.Duration) {
	cut := 0
	for cut < len(s.times) && !s.times[cut].After(now.Add(-d)) {
		cut++
	}
	s.times = append(s.times[cut:], now)
	s.max = max(s.max, len(s.times))
}

type rateState struct {
	whoopMinute, whoopDay window
	whoopSeen             slider
	oura                  map[string]*window
	ouraSeen              map[string]*slider
}

func (r *rateState) init() {
	r.oura = map[string]*window{}
	r.ouraSeen = map[string]*slider{}
}

type apiHandler func(http.ResponseWriter, *http.Request, *grant)

// api wraps a vendor data endpoint: counting, latency, the vendor's rate
// limit, injected 429s and 500s, bearer authentication and scope.
func (e *Emulator) api(v Vendor, scope string, h apiHandler) http.Handler {
	prefix := "/" + string(v)
	if v == Whoop {
		prefix = "/whoop/developer"
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		endpoint := r.Pattern
		if _, path, ok := strings.Cut(endpoint, " "); ok {
			endpoint = r.Method + " " + strings.TrimPrefix(path, prefix)
		} else {
			endpoint = r.Method + " " + strings.TrimPrefix(endpoint, prefix) + "*"
		}
		e.count(v, func(c *VendorCounters) { c.APICalls[endpoint]++; c.APICallsTotal++ })

		e.mu.Lock()
		latency := e.faults.Latency
		e.mu.Unlock()
		if latency > 0 {
			t := time.NewTimer(latency)
			select {
			case <-t.C:
			case <-r.Context().Done():
				t.Stop()
				return
			}
		}

		e.mu.Lock()
		now := e.now()
		g, authErr := e.authenticateLocked(v, r)
		var limited bool
		var injected429, injected500 bool
		switch v {
		case Whoop:
			limited = e.whoopRateLocked(w, now)
		case Oura:
			key := "token:" + r.Header.Get("Authorization")
			if g != nil {
				key = "grant:" + strconv.FormatInt(g.id, 10)
			}
			limited = e.ouraRateLocked(w, key, now)
		}
		if !limited {
			injected429 = e.chanceLocked(e.faults.RateLimitRate)
			injected500 = !injected429 && e.chanceLocked(e.faults.ErrorRate)
		}
		if injected429 {
			e.forced429Locked(w, v, now)
		}
		e.mu.Unlock()

		switch {
		case limited || injected429:
			e.count(v, func(c *VendorCounters) {
				c.RateLimited++
				if injected429 {
					c.InjectedRateLimited++
				}
			})
			if v == Whoop {
				whoopError(w, http.StatusTooManyRequests, "Too Many Requests")
			} else {
				ouraError(w, http.StatusTooManyRequests, "Too Many Requests")
			}
			return
		case injected500:
			e.count(v, func(c *VendorCounters) { c.InjectedErrors++ })
			if v == Whoop {
				whoopError(w, http.StatusInternalServerError, "internal server error")
			} else {
				ouraError(w, http.StatusInternalServerError, "Internal Server Error")
			}
			return
		case g == nil:
			e.count(v, func(c *VendorCounters) { c.Unauthorized++ })
			if v == Whoop {
				whoopError(w, http.StatusUnauthorized, authErr)
			} else {
				ouraError(w, http.StatusUnauthorized, authErr)
			}
			return
		case !g.has(scope):
			e.count(v, func(c *VendorCounters) { c.Forbidden++ })
			if v == Whoop {
				whoopError(w, http.StatusForbidden, "missing scope "+scope)
			} else {
				ouraError(w, http.StatusForbidden, "missing scope "+scope)
			}
			return
		}
		h(w, r, g)
	})
}

func (e *Emulator) whoopLimits() (int, int) {
	lim := e.cfg.WhoopRateLimit
	if e.faults.WhoopRateLimit > 0 {
		lim = e.faults.WhoopRateLimit
	}
	return lim, e.cfg.WhoopDailyLimit
}

// whoopRateLocked applies WHOOP's per-app limits and writes its headers,
// e.g. X-RateLimit-Limit: "100, 100;window=60, 10000;window=86400" (the
// first figure is the limit closest to being hit), X-RateLimit-Remaining
// and X-RateLimit-Reset (seconds) for that limit. It reports whether the
// request is over a limit.
func (e *Emulator) whoopRateLocked(w http.ResponseWriter, now time.Time) bool {
	r := &e.rate
	minuteD, dayD := e.cfg.WhoopRateWindow, 24*time.Hour
	r.whoopSeen.observe(now, minuteD)
	e.countLockedMax(Whoop, r.whoopSeen.max)
	lim, day := e.whoopLimits()
	if lim < 0 && day < 0 {
		return false
	}
	r.whoopMinute.roll(now, minuteD)
	r.whoopDay.roll(now, dayD)
	over := (lim >= 0 && r.whoopMinute.count >= lim) || (day >= 0 && r.whoopDay.count >= day)
	if !over {
		r.whoopMinute.count++
		r.whoopDay.count++
	}
	e.whoopHeadersLocked(w, now)
	return over
}

func (e *Emulator) whoopHeadersLocked(w http.ResponseWriter, now time.Time) {
	r := &e.rate
	lim, day := e.whoopLimits()
	minuteD, dayD := e.cfg.WhoopRateWindow, 24*time.Hour
	type lw struct {
		limit, remaining, reset int
		secs                    int
	}
	var ws []lw
	if lim >= 0 {
		ws = append(ws, lw{lim, max(lim-r.whoopMinute.count, 0), r.whoopMinute.resetIn(now, minuteD), int(math.Ceil(minuteD.Seconds()))})
	}
	if day >= 0 {
		ws = append(ws, lw{day, max(day-r.whoopDay.count, 0), r.whoopDay.resetIn(now, dayD), int(dayD.Seconds())})
	}
	closest := ws[0]
	for _, x := range ws[1:] {
		if x.remaining < closest.remaining {
			closest = x
		}
	}
	parts := []string{strconv.Itoa(closest.limit)}
	for _, x := range ws {
		parts = append(parts, fmt.Sprintf("%d;window=%d", x.limit, x.secs))
	}
	h := w.Header()
	h.Set("X-RateLimit-Limit", strings.Join(parts, ", "))
	h.Set("X-RateLimit-Remaining", strconv.Itoa(closest.remaining))
	h.Set("X-RateLimit-Reset", strconv.Itoa(max(closest.reset, 0)))
}

// ouraRateLocked applies Oura's per-connection limit; over it, 429 with
// Retry-After (seconds).
func (e *Emulator) ouraRateLocked(w http.ResponseWriter, key string, now time.Time) bool {
	r := &e.rate
	d := e.cfg.OuraRateWindow
	s := r.ouraSeen[key]
	if s == nil {
		s = &slider{}
		r.ouraSeen[key] = s
	}
	s.observe(now, d)
	e.countLockedMax(Oura, s.max)
	lim := e.cfg.OuraRateLimit
	if e.faults.OuraRateLimit > 0 {
		lim = e.faults.OuraRateLimit
	}
	if lim < 0 {
		return false
	}
	win := r.oura[key]
	if win == nil {
		win = &window{}
		r.oura[key] = win
	}
	win.roll(now, d)
	if win.count >= lim {
		w.Header().Set("Retry-After", strconv.Itoa(max(win.resetIn(now, d), 1)))
		return true
	}
	win.count++
	return false
}

// forced429Locked writes the headers of an injected 429, like a real one.
func (e *Emulator) forced429Locked(w http.ResponseWriter, v Vendor, now time.Time) {
	if v == Whoop {
		if lim, day := e.whoopLimits(); lim < 0 && day < 0 {
			w.Header().Set("X-RateLimit-Limit", "0")
			w.Header().Set("X-RateLimit-Reset", "1")
		} else {
			e.whoopHeadersLocked(w, now)
		}
		w.Header().Set("X-RateLimit-Remaining", "0")
		return
	}
	w.Header().Set("Retry-After", "1")
}

// tokenFault applies latency and TokenErrorRate to the token endpoint.
func (e *Emulator) tokenFault(w http.ResponseWriter, r *http.Request, v Vendor) bool {
	e.mu.Lock()
	latency := e.faults.Latency
	fail := e.chanceLocked(e.faults.TokenErrorRate)
	e.mu.Unlock()
	if latency > 0 {
		t := time.NewTimer(latency)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return true
		}
	}
	if fail {
		e.count(v, func(c *VendorCounters) { c.InjectedErrors++ })
		oauthError(w, http.StatusInternalServerError, "server_error", "injected fault")
		return true
	}
	return false
}
