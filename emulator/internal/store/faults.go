package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"time"
)

// Faults are injected misbehaviours, settable at runtime. Every decision is
// drawn from the seeded source, so a run with the same seed and the same
// sequence of calls misbehaves the same way.
type Faults struct {
	// ErrorRate is the fraction (0..1) of vendor data-API requests answered
	// 500.
	ErrorRate float64 `json:"error_rate"`
	// ErrorsNext answers the next ErrorsNext data-API requests 500 (counted
	// as injected errors) before the rates apply, and counts down: a test
	// that must see a fault gets one regardless of how many requests its
	// run happens to make.
	ErrorsNext int `json:"errors_next"`
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

// Validate reports every out-of-range field.
func (f Faults) Validate() error {
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
	if f.ErrorsNext < 0 {
		errs = append(errs, errors.New("ErrorsNext must not be negative"))
	}
	if f.WhoopRateLimit < 0 || f.OuraRateLimit < 0 {
		errs = append(errs, errors.New("WhoopRateLimit and OuraRateLimit must not be negative"))
	}
	return errors.Join(errs...)
}

// MarshalJSON writes Latency as a Go duration string ("250ms").
func (f Faults) MarshalJSON() ([]byte, error) {
	type plain Faults
	return json.Marshal(struct {
		plain
		Latency string `json:"latency"`
	}{plain(f), f.Latency.String()})
}

// UnmarshalJSON reads Latency as a duration string ("250ms") or a number of
// nanoseconds.
func (f *Faults) UnmarshalJSON(b []byte) error {
	type plain Faults
	var aux struct {
		*plain
		Latency json.RawMessage `json:"latency"`
	}
	aux.plain = (*plain)(f)
	if err := json.Unmarshal(b, &aux); err != nil {
		return err
	}
	f.Latency = 0
	if len(aux.Latency) == 0 || string(aux.Latency) == "null" {
		return nil
	}
	var s string
	if err := json.Unmarshal(aux.Latency, &s); err == nil {
		d, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("latency: %w", err)
		}
		f.Latency = d
		return nil
	}
	var n int64
	if err := json.Unmarshal(aux.Latency, &n); err != nil {
		return fmt.Errorf("latency must be a duration string or nanoseconds")
	}
	f.Latency = time.Duration(n)
	return nil
}
