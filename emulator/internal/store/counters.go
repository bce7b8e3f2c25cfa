package store

import (
	"maps"
	"sync"
)

// VendorCounters count what one emulated vendor saw and did.
type VendorCounters struct {
	// OAuth.
	AuthorizationCodes int64 `json:"authorization_codes"`
	AuthorizeErrors    int64 `json:"authorize_errors"`
	TokenRequests      int64 `json:"token_requests"`
	// TokensIssued counts successful authorization_code exchanges.
	TokensIssued int64 `json:"tokens_issued"`
	// TokenRefreshes counts successful refresh_token grants (rotations).
	TokenRefreshes int64 `json:"token_refreshes"`
	// RefreshTokenReuseViolations counts refresh tokens presented again
	// after they were spent.
	RefreshTokenReuseViolations int64 `json:"refresh_token_reuse_violations"`
	InvalidGrants               int64 `json:"invalid_grants"`
	InvalidClient               int64 `json:"invalid_client"`
	PKCEFailures                int64 `json:"pkce_failures"`
	Revocations                 int64 `json:"revocations"`

	// Data API. APICalls is keyed by "METHOD path-pattern" relative to the
	// API base, e.g. "GET /v2/activity/sleep/{id}".
	APICallsTotal int64            `json:"api_calls_total"`
	APICalls      map[string]int64 `json:"api_calls"`
	// RateLimited counts every 429 sent, InjectedRateLimited the subset
	// caused by Faults.RateLimitRate.
	RateLimited         int64 `json:"rate_limited"`
	InjectedRateLimited int64 `json:"injected_rate_limited"`
	InjectedErrors      int64 `json:"injected_errors"`
	Unauthorized        int64 `json:"unauthorized"`
	Forbidden           int64 `json:"forbidden"`
	// MaxRequestsInWindow is the most requests that arrived within any
	// interval as long as the rate window (WHOOP: per app; Oura: the
	// busiest connection), rejected ones included.
	MaxRequestsInWindow int64 `json:"max_requests_in_window"`

	// Webhooks. Delivered, Failed (retries exhausted or 410) and Dropped
	// count deliveries (a duplicate is a delivery of its own); Attempts
	// counts HTTP requests; Unrouted counts events with no target.
	WebhooksDelivered  int64 `json:"webhooks_delivered"`
	WebhooksFailed     int64 `json:"webhooks_failed"`
	WebhooksDropped    int64 `json:"webhooks_dropped"`
	WebhooksDuplicated int64 `json:"webhooks_duplicated"`
	WebhooksUnrouted   int64 `json:"webhooks_unrouted"`
	WebhookAttempts    int64 `json:"webhook_attempts"`
	WebhookRetries     int64 `json:"webhook_retries"`
	// Oura verification handshakes performed and passed; subscriptions
	// cancelled because the callback answered 410.
	Handshakes        int64 `json:"handshakes"`
	HandshakesPassed  int64 `json:"handshakes_passed"`
	SubscriptionsGone int64 `json:"subscriptions_gone"`
}

// Counters is a snapshot of both vendors' counters.
type Counters struct {
	Whoop VendorCounters `json:"whoop"`
	Oura  VendorCounters `json:"oura"`
	// WebhooksPending is how many deliveries are queued, in flight, held
	// for reordering or waiting for a retry.
	WebhooksPending int64 `json:"webhooks_pending"`
}

// CounterSet is both vendors' live counters. It has its own lock, always
// taken last (never while holding it does the code take another), so
// counting is safe from under the emulator's state lock.
type CounterSet struct {
	mu    sync.Mutex
	whoop VendorCounters
	oura  VendorCounters
}

// NewCounterSet returns zeroed counters.
func NewCounterSet() *CounterSet {
	c := &CounterSet{}
	c.Reset()
	return c
}

// Reset zeroes every counter.
func (c *CounterSet) Reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.whoop = VendorCounters{APICalls: map[string]int64{}}
	c.oura = VendorCounters{APICalls: map[string]int64{}}
}

// Count applies f to v's counters under the counters' lock.
func (c *CounterSet) Count(v Vendor, f func(*VendorCounters)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if v == Whoop {
		f(&c.whoop)
	} else {
		f(&c.oura)
	}
}

// Snapshot copies both vendors' counters; WebhooksPending is left zero
// for the caller to fill in.
func (c *CounterSet) Snapshot() Counters {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := Counters{Whoop: c.whoop, Oura: c.oura}
	out.Whoop.APICalls = maps.Clone(c.whoop.APICalls)
	out.Oura.APICalls = maps.Clone(c.oura.APICalls)
	return out
}
