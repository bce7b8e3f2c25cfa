package emulator

import (
	"fmt"
	"math"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/biobridge/bridge/emulator/internal/oura"
	"github.com/biobridge/bridge/emulator/internal/store"
	"github.com/biobridge/bridge/emulator/internal/whoop"
)

// Faults are injected misbehaviours, settable at runtime. Every decision is
// drawn from the seeded source, so a run with the same seed and the same
// sequence of calls misbehaves the same way.
type Faults = store.Faults

// SetFaults replaces the current faults.
func (e *Emulator) SetFaults(f Faults) error {
	if err := f.Validate(); err != nil {
		return fmt.Errorf("%w: %w", ErrInvalid, err)
	}
	e.st.Mu.Lock()
	defer e.st.Mu.Unlock()
	e.st.Faults = f
	return nil
}

// Faults returns the current faults.
func (e *Emulator) Faults() Faults {
	e.st.Mu.Lock()
	defer e.st.Mu.Unlock()
	return e.st.Faults
}

// api wraps a vendor data endpoint: counting, latency, the vendor's rate
// limit, injected 429s and 500s, bearer authentication and scope.
func (e *Emulator) api(v Vendor, scope string, h store.APIHandler) http.Handler {
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

		e.st.Mu.Lock()
		latency := e.st.Faults.Latency
		e.st.Mu.Unlock()
		if latency > 0 {
			t := time.NewTimer(latency)
			select {
			case <-t.C:
			case <-r.Context().Done():
				t.Stop()
				return
			}
		}

		e.st.Mu.Lock()
		now := e.st.Now()
		g, authErr := e.st.AuthenticateLocked(v, r)
		var u *store.Person
		if g != nil {
			u = e.grantUserLocked(g)
		}
		var limited bool
		var injected429, injected500 bool
		switch v {
		case Whoop:
			limited = e.whoopRateLocked(w, now)
		case Oura:
			key := "token:" + r.Header.Get("Authorization")
			if g != nil {
				key = "grant:" + strconv.FormatInt(g.ID, 10)
			}
			limited = e.ouraRateLocked(w, key, now)
		}
		switch {
		case limited:
		case e.st.Faults.ErrorsNext > 0:
			e.st.Faults.ErrorsNext--
			injected500 = true
		default:
			injected429 = e.st.ChanceLocked(e.st.Faults.RateLimitRate)
			injected500 = !injected429 && e.st.ChanceLocked(e.st.Faults.ErrorRate)
		}
		if injected429 {
			e.forced429Locked(w, v, now)
		}
		e.st.Mu.Unlock()

		switch {
		case limited || injected429:
			e.count(v, func(c *VendorCounters) {
				c.RateLimited++
				if injected429 {
					c.InjectedRateLimited++
				}
			})
			if v == Whoop {
				whoop.Error(w, http.StatusTooManyRequests, "Too Many Requests")
			} else {
				oura.Error(w, http.StatusTooManyRequests, "Too Many Requests")
			}
			return
		case injected500:
			e.count(v, func(c *VendorCounters) { c.InjectedErrors++ })
			if v == Whoop {
				whoop.Error(w, http.StatusInternalServerError, "internal server error")
			} else {
				oura.Error(w, http.StatusInternalServerError, "Internal Server Error")
			}
			return
		case g == nil:
			e.count(v, func(c *VendorCounters) { c.Unauthorized++ })
			if v == Whoop {
				whoop.Error(w, http.StatusUnauthorized, authErr)
			} else {
				oura.Error(w, http.StatusUnauthorized, authErr)
			}
			return
		case !g.Has(scope):
			e.count(v, func(c *VendorCounters) { c.Forbidden++ })
			if v == Whoop {
				whoop.Error(w, http.StatusForbidden, "missing scope "+scope)
			} else {
				oura.Error(w, http.StatusForbidden, "missing scope "+scope)
			}
			return
		}
		h(w, r, g, u)
	})
}

func (e *Emulator) whoopLimits() (int, int) {
	lim := e.cfg.WhoopRateLimit
	if e.st.Faults.WhoopRateLimit > 0 {
		lim = e.st.Faults.WhoopRateLimit
	}
	return lim, e.cfg.WhoopDailyLimit
}

// whoopRateLocked applies WHOOP's per-app limits and writes its headers,
// e.g. X-RateLimit-Limit: "100, 100;window=60, 10000;window=86400" (the
// first figure is the limit closest to being hit), X-RateLimit-Remaining
// and X-RateLimit-Reset (seconds) for that limit. It reports whether the
// request is over a limit.
func (e *Emulator) whoopRateLocked(w http.ResponseWriter, now time.Time) bool {
	r := &e.st.Rate
	minuteD, dayD := e.cfg.WhoopRateWindow, 24*time.Hour
	r.WhoopSeen.Observe(now, minuteD)
	e.countLockedMax(Whoop, r.WhoopSeen.Max())
	lim, day := e.whoopLimits()
	if lim < 0 && day < 0 {
		return false
	}
	r.WhoopMinute.Roll(now, minuteD)
	r.WhoopDay.Roll(now, dayD)
	over := (lim >= 0 && r.WhoopMinute.Count >= lim) || (day >= 0 && r.WhoopDay.Count >= day)
	if !over {
		r.WhoopMinute.Count++
		r.WhoopDay.Count++
	}
	e.whoopHeadersLocked(w, now)
	return over
}

func (e *Emulator) whoopHeadersLocked(w http.ResponseWriter, now time.Time) {
	r := &e.st.Rate
	lim, day := e.whoopLimits()
	minuteD, dayD := e.cfg.WhoopRateWindow, 24*time.Hour
	type lw struct {
		limit, remaining, reset int
		secs                    int
	}
	var ws []lw
	if lim >= 0 {
		ws = append(ws, lw{lim, max(lim-r.WhoopMinute.Count, 0), r.WhoopMinute.ResetIn(now, minuteD), int(math.Ceil(minuteD.Seconds()))})
	}
	if day >= 0 {
		ws = append(ws, lw{day, max(day-r.WhoopDay.Count, 0), r.WhoopDay.ResetIn(now, dayD), int(dayD.Seconds())})
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
	r := &e.st.Rate
	d := e.cfg.OuraRateWindow
	s := r.OuraSeen[key]
	if s == nil {
		s = &store.Slider{}
		r.OuraSeen[key] = s
	}
	s.Observe(now, d)
	e.countLockedMax(Oura, s.Max())
	lim := e.cfg.OuraRateLimit
	if e.st.Faults.OuraRateLimit > 0 {
		lim = e.st.Faults.OuraRateLimit
	}
	if lim < 0 {
		return false
	}
	win := r.Oura[key]
	if win == nil {
		win = &store.Window{}
		r.Oura[key] = win
	}
	win.Roll(now, d)
	if win.Count >= lim {
		w.Header().Set("Retry-After", strconv.Itoa(max(win.ResetIn(now, d), 1)))
		return true
	}
	win.Count++
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
