package store

import (
	"math"
	"time"
)

// Window is a fixed rate window: Count requests let through since it
// started.
type Window struct {
	start time.Time
	Count int
}

// Roll starts a new window when the current one has passed.
func (w *Window) Roll(now time.Time, d time.Duration) {
	if w.start.IsZero() || !now.Before(w.start.Add(d)) {
		w.start, w.Count = now, 0
	}
}

// ResetIn is the seconds until the window of length d ends, rounded up.
func (w *Window) ResetIn(now time.Time, d time.Duration) int {
	return int(math.Ceil(w.start.Add(d).Sub(now).Seconds()))
}

// Slider measures the most requests that arrived within any interval of the
// window's length, whether or not they were let through: what a benchmark
// checks to prove a client stays under the vendor's limit.
type Slider struct {
	times []time.Time
	max   int
}

// Observe records a request at now against a window of length d.
func (s *Slider) Observe(now time.Time, d time.Duration) {
	cut := 0
	for cut < len(s.times) && !s.times[cut].After(now.Add(-d)) {
		cut++
	}
	s.times = append(s.times[cut:], now)
	s.max = max(s.max, len(s.times))
}

// Max is the most requests seen within any window's length.
func (s *Slider) Max() int { return s.max }

// RateState is both vendors' rate-limit state: WHOOP counts per app (a
// minute and a day window), Oura per connection (keyed by the caller).
type RateState struct {
	WhoopMinute, WhoopDay Window
	WhoopSeen             Slider
	Oura                  map[string]*Window
	OuraSeen              map[string]*Slider
}

// Init makes the per-connection maps.
func (r *RateState) Init() {
	r.Oura = map[string]*Window{}
	r.OuraSeen = map[string]*Slider{}
}
