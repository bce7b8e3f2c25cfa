package emulator

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/biobridge/bridge/emulator/internal/store"
)

// Development defaults. They are deliberately recognisable so that nobody
// mistakes them for real vendor credentials.
const (
	DefaultWhoopClientID         = "whoop-dev-client-id"
	DefaultWhoopClientSecret     = "whoop-dev-client-secret"
	DefaultOuraClientID          = "oura-dev-client-id"
	DefaultOuraClientSecret      = "oura-dev-client-secret"
	DefaultOuraVerificationToken = "oura-dev-verification-token"
	DefaultAddr                  = "127.0.0.1:8090"
)

// Config configures an Emulator. The zero value is usable: every field has a
// documented default applied by New.
type Config struct {
	// Seed makes every generated id, token, value and fault decision
	// reproducible. 0 picks a random seed, which is logged and returned by
	// (*Emulator).Seed so a failing run can be replayed.
	Seed uint64
	// Now is the clock. Default time.Now. Tests that compare two emulators
	// for determinism inject a fixed clock.
	Now func() time.Time

	// Client credentials of the single registered app per vendor. Defaults
	// are the Default* constants.
	WhoopClientID     string
	WhoopClientSecret string
	OuraClientID      string
	OuraClientSecret  string

	// WhoopWebhookURL is the app's webhook URL as registered in the WHOOP
	// developer dashboard. Empty: WHOOP events are not delivered (counted
	// as unrouted).
	WhoopWebhookURL string
	// OuraWebhookURL, when set, behaves like a pre-existing, already
	// verified, never-expiring Oura subscription for every (event_type,
	// data_type), used whenever no subscription created through the API
	// matches. It lets devstack work without a subscription step.
	OuraWebhookURL string
	// OuraVerificationToken is the token sent by the handshake that
	// (*Emulator).VerifyOuraCallback performs against OuraWebhookURL.
	// Default DefaultOuraVerificationToken.
	OuraVerificationToken string

	// AccessTokenTTL is the lifetime of issued access tokens. Default 1h
	// (WHOOP's expires_in of 3600).
	AccessTokenTTL time.Duration
	// AuthCodeTTL is the lifetime of authorization codes. Default 10m.
	AuthCodeTTL time.Duration
	// ReuseKeepsGrant changes what a reused refresh token does. By default
	// the vendors' behaviour is emulated: the reuse is rejected with
	// invalid_grant AND the whole grant (every token descended from the same
	// authorization) is revoked, so two concurrent refreshes break the
	// connection. When true only the reused token is rejected.
	ReuseKeepsGrant bool

	// WhoopRateLimit is the per-app budget per WhoopRateWindow. Default 100;
	// negative disables the limit.
	WhoopRateLimit int
	// WhoopRateWindow is the rate window. Default 1m.
	WhoopRateWindow time.Duration
	// WhoopDailyLimit is the per-app budget per 24h. Default 10000; negative
	// disables it.
	WhoopDailyLimit int
	// OuraRateLimit is the per-connection budget per OuraRateWindow.
	// Default 5000; negative disables the limit.
	OuraRateLimit int
	// OuraRateWindow is the Oura rate window. Default 5m.
	OuraRateWindow time.Duration

	// OuraPageSize is the page size of Oura document collections. Default 50.
	OuraPageSize int
	// OuraHeartRatePageSize is the page size of the heartrate collection.
	// Default 1000.
	OuraHeartRatePageSize int
	// OuraSubscriptionTTL is how long an Oura webhook subscription lives
	// before it has to be renewed. Default 30 days.
	OuraSubscriptionTTL time.Duration
	// OuraDateRangeQuirk reproduces what the real Oura API has been observed
	// doing with start_date/end_date (sleep: start exclusive; daily
	// documents: end exclusive). Default false: both bounds inclusive, as
	// the API reference documents.
	OuraDateRangeQuirk bool

	// ScoreDelay, when positive, scores PENDING_SCORE WHOOP records
	// automatically this long after they were created. 0: they stay pending
	// until ScoreRecord is called.
	ScoreDelay time.Duration

	// WebhookWorkers bounds concurrent webhook deliveries. Default 4.
	WebhookWorkers int
	// WebhookRetryDelays are the waits before the 2nd, 3rd, ... delivery
	// attempt after a non-2xx answer or a timeout: the vendors' schedule of
	// about five attempts over an hour, scaled down. Default 100ms, 200ms,
	// 400ms, 800ms (5 attempts). An empty non-nil slice means no retries.
	WebhookRetryDelays []time.Duration
	// WebhookTimeout bounds one delivery attempt and the Oura verification
	// handshake; a slower answer counts as a failure, as at the vendors.
	// Default 2s.
	WebhookTimeout time.Duration
	// ReorderWindow is how long deliveries are held back and shuffled when
	// Faults.WebhookReorder is on. Default 50ms.
	ReorderWindow time.Duration
	// WebhookQueueSize bounds the delivery queue; producers wait when it is
	// full. Default 4096.
	WebhookQueueSize int

	// Faults are the initial faults (none by default); SetFaults changes
	// them at runtime.
	Faults Faults

	// HTTPClient delivers webhooks and performs handshakes. Default a
	// dedicated client; per-attempt deadlines come from WebhookTimeout.
	HTTPClient *http.Client
}

func (c *Config) setDefaults() {
	if c.Now == nil {
		c.Now = time.Now
	}
	def := func(s *string, v string) {
		if *s == "" {
			*s = v
		}
	}
	def(&c.WhoopClientID, DefaultWhoopClientID)
	def(&c.WhoopClientSecret, DefaultWhoopClientSecret)
	def(&c.OuraClientID, DefaultOuraClientID)
	def(&c.OuraClientSecret, DefaultOuraClientSecret)
	def(&c.OuraVerificationToken, DefaultOuraVerificationToken)
	defDur := func(d *time.Duration, v time.Duration) {
		if *d == 0 {
			*d = v
		}
	}
	defDur(&c.AccessTokenTTL, time.Hour)
	defDur(&c.AuthCodeTTL, 10*time.Minute)
	defDur(&c.WhoopRateWindow, time.Minute)
	defDur(&c.OuraRateWindow, 5*time.Minute)
	defDur(&c.OuraSubscriptionTTL, 30*24*time.Hour)
	defDur(&c.WebhookTimeout, 2*time.Second)
	defDur(&c.ReorderWindow, 50*time.Millisecond)
	defInt := func(i *int, v int) {
		if *i == 0 {
			*i = v
		}
	}
	defInt(&c.WhoopRateLimit, 100)
	defInt(&c.WhoopDailyLimit, 10000)
	defInt(&c.OuraRateLimit, 5000)
	defInt(&c.OuraPageSize, 50)
	defInt(&c.OuraHeartRatePageSize, 1000)
	defInt(&c.WebhookWorkers, 4)
	defInt(&c.WebhookQueueSize, 4096)
	if c.WebhookRetryDelays == nil {
		c.WebhookRetryDelays = []time.Duration{
			100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond,
		}
	}
	if c.HTTPClient == nil {
		c.HTTPClient = &http.Client{}
	}
}

// Validate reports every invalid field at once.
func (c Config) Validate() error {
	var errs []error
	if c.AccessTokenTTL < 0 {
		errs = append(errs, errors.New("AccessTokenTTL must not be negative"))
	}
	if c.AuthCodeTTL < 0 {
		errs = append(errs, errors.New("AuthCodeTTL must not be negative"))
	}
	for _, d := range []struct {
		name string
		d    time.Duration
	}{
		{"WhoopRateWindow", c.WhoopRateWindow}, {"OuraRateWindow", c.OuraRateWindow},
		{"OuraSubscriptionTTL", c.OuraSubscriptionTTL}, {"WebhookTimeout", c.WebhookTimeout},
		{"ReorderWindow", c.ReorderWindow}, {"ScoreDelay", c.ScoreDelay},
	} {
		if d.d < 0 {
			errs = append(errs, fmt.Errorf("%s must not be negative", d.name))
		}
	}
	if c.OuraPageSize < 0 || c.OuraHeartRatePageSize < 0 {
		errs = append(errs, errors.New("OuraPageSize and OuraHeartRatePageSize must be positive"))
	}
	if c.WebhookWorkers < 0 || c.WebhookWorkers > 256 {
		errs = append(errs, errors.New("WebhookWorkers must be between 1 and 256"))
	}
	if c.WebhookQueueSize < 0 {
		errs = append(errs, errors.New("WebhookQueueSize must be positive"))
	}
	for i, d := range c.WebhookRetryDelays {
		if d < 0 {
			errs = append(errs, fmt.Errorf("WebhookRetryDelays[%d] must not be negative", i))
		}
	}
	for _, u := range [][2]string{{"WhoopWebhookURL", c.WhoopWebhookURL}, {"OuraWebhookURL", c.OuraWebhookURL}} {
		if u[1] == "" {
			continue
		}
		if err := store.CheckHTTPURL(u[1]); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", u[0], err))
		}
	}
	if err := c.Faults.Validate(); err != nil {
		errs = append(errs, fmt.Errorf("Faults: %w", err))
	}
	return errors.Join(errs...)
}

// ConfigFromEnv reads a Config through getenv, reporting every invalid
// variable at once. It honours the suite's own variable names (DESIGN §6:
// WHOOP_CLIENT_ID, WHOOP_CLIENT_SECRET, OURA_CLIENT_ID, OURA_CLIENT_SECRET,
// OURA_VERIFICATION_TOKEN) so the emulator and the services agree, plus:
//
//	VENDOREMU_SEED                   uint64, 0/unset = random
//	VENDOREMU_WHOOP_WEBHOOK_URL      default PUBLIC_BASE_URL + /v1/webhooks/whoop when PUBLIC_BASE_URL is set
//	VENDOREMU_OURA_WEBHOOK_URL       default PUBLIC_BASE_URL + /v1/webhooks/oura when PUBLIC_BASE_URL is set
//	VENDOREMU_ACCESS_TOKEN_TTL       duration, default 1h
//	VENDOREMU_WHOOP_RATE_LIMIT       requests per minute per app, default 100, negative disables
//	VENDOREMU_OURA_RATE_LIMIT        requests per 5 minutes per connection, default 5000, negative disables
//	VENDOREMU_SCORE_DELAY            duration, default 0 (pending records stay pending)
//	VENDOREMU_WEBHOOK_RETRY_DELAYS   comma list of durations, default 100ms,200ms,400ms,800ms
func ConfigFromEnv(getenv func(string) string) (Config, error) {
	var c Config
	var errs []error
	c.WhoopClientID = getenv("WHOOP_CLIENT_ID")
	c.WhoopClientSecret = getenv("WHOOP_CLIENT_SECRET")
	c.OuraClientID = getenv("OURA_CLIENT_ID")
	c.OuraClientSecret = getenv("OURA_CLIENT_SECRET")
	c.OuraVerificationToken = getenv("OURA_VERIFICATION_TOKEN")
	if v := getenv("VENDOREMU_SEED"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			errs = append(errs, fmt.Errorf("VENDOREMU_SEED: %w", err))
		}
		c.Seed = n
	}
	base := strings.TrimRight(getenv("PUBLIC_BASE_URL"), "/")
	c.WhoopWebhookURL = getenv("VENDOREMU_WHOOP_WEBHOOK_URL")
	if c.WhoopWebhookURL == "" && base != "" {
		c.WhoopWebhookURL = base + "/v1/webhooks/whoop"
	}
	c.OuraWebhookURL = getenv("VENDOREMU_OURA_WEBHOOK_URL")
	if c.OuraWebhookURL == "" && base != "" {
		c.OuraWebhookURL = base + "/v1/webhooks/oura"
	}
	dur := func(name string, dst *time.Duration) {
		if v := getenv(name); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil || d < 0 {
				errs = append(errs, fmt.Errorf("%s: invalid duration %q", name, v))
				return
			}
			*dst = d
		}
	}
	dur("VENDOREMU_ACCESS_TOKEN_TTL", &c.AccessTokenTTL)
	dur("VENDOREMU_SCORE_DELAY", &c.ScoreDelay)
	num := func(name string, dst *int) {
		if v := getenv(name); v != "" {
			n, err := strconv.Atoi(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", name, err))
				return
			}
			*dst = n
		}
	}
	num("VENDOREMU_WHOOP_RATE_LIMIT", &c.WhoopRateLimit)
	num("VENDOREMU_OURA_RATE_LIMIT", &c.OuraRateLimit)
	if v := getenv("VENDOREMU_WEBHOOK_RETRY_DELAYS"); v != "" {
		c.WebhookRetryDelays = []time.Duration{}
		for _, part := range strings.Split(v, ",") {
			d, err := time.ParseDuration(strings.TrimSpace(part))
			if err != nil || d < 0 {
				errs = append(errs, fmt.Errorf("VENDOREMU_WEBHOOK_RETRY_DELAYS: invalid duration %q", part))
				continue
			}
			c.WebhookRetryDelays = append(c.WebhookRetryDelays, d)
		}
	}
	for _, u := range [][2]string{
		{"VENDOREMU_WHOOP_WEBHOOK_URL", c.WhoopWebhookURL}, {"VENDOREMU_OURA_WEBHOOK_URL", c.OuraWebhookURL},
	} {
		if u[1] == "" {
			continue
		}
		if err := store.CheckHTTPURL(u[1]); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", u[0], err))
		}
	}
	return c, errors.Join(errs...)
}
