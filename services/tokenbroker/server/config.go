package server

import (
	"net/url"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/pkg/config"
	"github.com/biobridge/bridge/pkg/ratebudget"
	"github.com/biobridge/bridge/pkg/service"
	"github.com/biobridge/bridge/services/tokenbroker/internal/tokencrypt"
	"github.com/biobridge/bridge/services/tokenbroker/internal/vendors"
)

// VendorConfig is one vendor's OAuth client. A vendor whose ClientID is
// empty is not offered: its RPCs answer FAILED_PRECONDITION
// "vendor_not_configured".
type VendorConfig struct {
	// ClientID is WHOOP_CLIENT_ID / OURA_CLIENT_ID.
	ClientID string
	// ClientSecret is WHOOP_CLIENT_SECRET / OURA_CLIENT_SECRET (required
	// with the client id).
	ClientSecret string
	// APIURL is WHOOP_API_URL (default https://api.prod.whoop.com) /
	// OURA_API_URL (default https://api.ouraring.com): the vendor's host
	// root, to which the OAuth and API paths are appended.
	APIURL string
	// AuthorizeURL is OURA_AUTHORIZE_URL (default
	// https://cloud.ouraring.com/oauth/authorize); WHOOP derives it from
	// APIURL (+ /oauth/oauth2/auth).
	AuthorizeURL string
}

// Configured reports whether the vendor is offered.
func (v VendorConfig) Configured() bool { return v.ClientID != "" }

// Config is the token broker's configuration. Each field names its
// environment variable and default.
type Config struct {
	// TracerProvider makes the service's spans; nil is the global one,
	// which the binary sets up from the OTEL_* variables. Not read from the
	// environment: devstack gives each service its own, so each keeps its
	// service.name in one process.
	TracerProvider trace.TracerProvider
	// GRPCAddr is TOKENBROKER_GRPC_ADDR (default ":9102").
	GRPCAddr string
	// AdminAddr is TOKENBROKER_ADMIN_ADDR (default ":9202"): /metrics,
	// /healthz, /readyz.
	AdminAddr string
	// PostgresURL is POSTGRES_URL (required). The broker owns schema "tokens".
	PostgresURL string
	// RedisURL is REDIS_URL (required): refresh locks and the token cache.
	RedisURL string
	// RedisKeyPrefix is REDIS_KEY_PREFIX (default ""): prepended to every key.
	RedisKeyPrefix string
	// TokenEncryptionKeys is TOKEN_ENCRYPTION_KEYS (required):
	// "keyid:base64(32 bytes),..."; the first key encrypts, every key decrypts.
	TokenEncryptionKeys string
	// Whoop is WHOOP_CLIENT_ID, WHOOP_CLIENT_SECRET, WHOOP_API_URL.
	Whoop VendorConfig
	// Oura is OURA_CLIENT_ID, OURA_CLIENT_SECRET, OURA_API_URL, OURA_AUTHORIZE_URL.
	Oura VendorConfig
	// PublicBaseURL is PUBLIC_BASE_URL (required when a vendor is
	// configured): the OAuth redirect URI is PublicBaseURL +
	// /v1/oauth/{vendor}/callback.
	PublicBaseURL string
	// ReturnURLs is OAUTH_RETURN_URLS (comma-separated, required when a
	// vendor is configured): the apps' return URLs (a universal link or a
	// custom scheme such as com.example.app:/oauth). The vendor's redirect
	// is forwarded to one of them with vendor, code and state, and the app
	// completes the connection with its user's JWT; the first is the
	// default, StartAuthorization's return_to picks another.
	ReturnURLs []string
	// UserTokenSecret is USER_TOKEN_SECRET (>= 32 bytes): HS256 key of the
	// users' JWTs, for development. Production verifies against the
	// identity provider's JWKS (UserTokens).
	UserTokenSecret []byte
	// UserTokens is USER_JWKS_URL, USER_JWKS_REFRESH_INTERVAL,
	// USER_TOKEN_ISSUER and USER_TOKEN_AUDIENCE (see auth.UserTokenConfig);
	// its Secret defaults to UserTokenSecret.
	UserTokens auth.UserTokenConfig
	// ServiceTokens is SERVICE_TOKENS (required): "name:token,..." allowed
	// to call GetAccessToken and ResolveVendorUser.
	ServiceTokens string
	// ServiceACL is SERVICE_ACL ("caller=pattern|pattern;...", required
	// by LoadConfig unless SERVICE_ACL_OPEN=true; empty in a hand-built
	// Config: every caller may call every service-token method): which
	// service-token methods each caller may call. User-JWT and state
	// methods are not affected.
	ServiceACL string
	// PersistenceTarget is PERSISTENCE_TARGET (default "": connection events
	// stay queued in the broker's outbox, see the pending gauge).
	PersistenceTarget string
	// ServiceToken is SERVICE_TOKEN (required with PERSISTENCE_TARGET): the
	// bearer token presented to persistence.
	ServiceToken string
	// TLS is TLS_CERT_FILE, TLS_KEY_FILE, TLS_CA_FILE (server and client).
	TLS config.TLSFiles
	// Common is LOG_FORMAT, LOG_LEVEL and LOG_PSEUDONYM_KEY (required): what
	// cmd/tokenbroker needs to build the logger. New does not read it.
	Common service.Common

	// SafetyMargin is TOKENBROKER_TOKEN_SAFETY_MARGIN (default 2m): tokens
	// with less life left are refreshed rather than handed out.
	SafetyMargin time.Duration
	// RefreshTimeout is TOKENBROKER_REFRESH_TIMEOUT (default 10s): deadline
	// of one vendor token call.
	RefreshTimeout time.Duration
	// LockLease is TOKENBROKER_LOCK_LEASE (default 30s, at least
	// RefreshTimeout + 2s): the refresh lock's lease.
	LockLease time.Duration
	// StateTTL is TOKENBROKER_STATE_TTL (default 10m): lifetime of an
	// authorization state.
	StateTTL time.Duration
	// ProactiveWindow is TOKENBROKER_PROACTIVE_REFRESH_WINDOW (default 5m):
	// active connections expiring within it are refreshed in the background.
	ProactiveWindow time.Duration
	// ProactiveInterval is TOKENBROKER_PROACTIVE_REFRESH_INTERVAL (default 30s).
	ProactiveInterval time.Duration
	// ActiveWindow is TOKENBROKER_ACTIVE_WINDOW (default 72h): a connection
	// whose token was handed out within it counts as active.
	ActiveWindow time.Duration
	// RelayInterval is TOKENBROKER_RELAY_INTERVAL (default 2s): how often
	// pending connection events are forwarded when nothing new was written.
	RelayInterval time.Duration
	// StorePatience is TOKENBROKER_REFRESH_STORE_PATIENCE (default 2m): how
	// long a refresh the vendor answered keeps retrying to store its
	// result (renewing its lock and claim) before it leaves the sealed
	// result parked in Redis for the next holder.
	StorePatience time.Duration

	// The shared vendor rate budget, the same variables and Redis keys as
	// ingest's, so the broker's own API calls (the user-id lookup on
	// connect, revocation) and ingest's fetches add up to one limit.
	// WhoopRateLimit is WHOOP_RATE_LIMIT (default 100) per WhoopRateWindow,
	// WHOOP_RATE_WINDOW (default 1m); WhoopDailyLimit is WHOOP_DAILY_LIMIT
	// (default 10000, 0 turns the daily window off).
	WhoopRateLimit  int
	WhoopRateWindow time.Duration
	WhoopDailyLimit int
	// OuraRateLimit is OURA_RATE_LIMIT (default 5000) per OuraRateWindow,
	// OURA_RATE_WINDOW (default 5m).
	OuraRateLimit  int
	OuraRateWindow time.Duration
	// RateBudgetSlack is RATE_BUDGET_SLACK (default 0: window/50 + 500ms).
	RateBudgetSlack time.Duration
}

// Defaults of the tunables (New applies them to zero fields as well).
const (
	DefaultSafetyMargin      = 2 * time.Minute
	DefaultRefreshTimeout    = 10 * time.Second
	DefaultLockLease         = 30 * time.Second
	DefaultStateTTL          = 10 * time.Minute
	DefaultProactiveWindow   = 5 * time.Minute
	DefaultProactiveInterval = 30 * time.Second
	DefaultActiveWindow      = 72 * time.Hour
	DefaultRelayInterval     = 2 * time.Second
	DefaultStorePatience     = 2 * time.Minute
)

// LoadConfig reads and validates the whole configuration, reporting every
// problem at once.
func LoadConfig(getenv func(string) string) (Config, error) {
	l := config.New(getenv)
	c := Config{
		GRPCAddr:            l.String("TOKENBROKER_GRPC_ADDR", ":9102"),
		AdminAddr:           l.String("TOKENBROKER_ADMIN_ADDR", ":9202"),
		PostgresURL:         l.Required("POSTGRES_URL"),
		RedisURL:            l.Required("REDIS_URL"),
		RedisKeyPrefix:      l.String("REDIS_KEY_PREFIX", ""),
		TokenEncryptionKeys: l.Required("TOKEN_ENCRYPTION_KEYS"),
		Whoop: VendorConfig{
			ClientID:     l.String("WHOOP_CLIENT_ID", ""),
			ClientSecret: l.String("WHOOP_CLIENT_SECRET", ""),
			APIURL:       l.String("WHOOP_API_URL", vendors.DefaultWhoopAPIURL),
		},
		Oura: VendorConfig{
			ClientID:     l.String("OURA_CLIENT_ID", ""),
			ClientSecret: l.String("OURA_CLIENT_SECRET", ""),
			APIURL:       l.String("OURA_API_URL", vendors.DefaultOuraAPIURL),
			AuthorizeURL: l.String("OURA_AUTHORIZE_URL", vendors.DefaultOuraAuthorizeURL),
		},
		PublicBaseURL:     l.String("PUBLIC_BASE_URL", ""),
		ReturnURLs:        l.List("OAUTH_RETURN_URLS", nil),
		UserTokens:        auth.LoadUserTokenConfig(l),
		ServiceTokens:     l.Required("SERVICE_TOKENS"),
		ServiceACL:        auth.LoadACL(l),
		PersistenceTarget: l.String("PERSISTENCE_TARGET", ""),
		ServiceToken:      l.String("SERVICE_TOKEN", ""),
		TLS:               l.TLS(),
		SafetyMargin:      l.Duration("TOKENBROKER_TOKEN_SAFETY_MARGIN", DefaultSafetyMargin),
		RefreshTimeout:    l.Duration("TOKENBROKER_REFRESH_TIMEOUT", DefaultRefreshTimeout),
		LockLease:         l.Duration("TOKENBROKER_LOCK_LEASE", DefaultLockLease),
		StateTTL:          l.Duration("TOKENBROKER_STATE_TTL", DefaultStateTTL),
		ProactiveWindow:   l.Duration("TOKENBROKER_PROACTIVE_REFRESH_WINDOW", DefaultProactiveWindow),
		ProactiveInterval: l.Duration("TOKENBROKER_PROACTIVE_REFRESH_INTERVAL", DefaultProactiveInterval),
		ActiveWindow:      l.Duration("TOKENBROKER_ACTIVE_WINDOW", DefaultActiveWindow),
		RelayInterval:     l.Duration("TOKENBROKER_RELAY_INTERVAL", DefaultRelayInterval),
		StorePatience:     l.Duration("TOKENBROKER_REFRESH_STORE_PATIENCE", DefaultStorePatience),
		WhoopRateLimit:    l.Int("WHOOP_RATE_LIMIT", ratebudget.DefaultWhoopLimit, 1, 1_000_000),
		WhoopRateWindow:   l.Duration("WHOOP_RATE_WINDOW", ratebudget.DefaultWhoopWindow),
		WhoopDailyLimit:   l.Int("WHOOP_DAILY_LIMIT", ratebudget.DefaultWhoopDailyLimit, 0, 100_000_000),
		OuraRateLimit:     l.Int("OURA_RATE_LIMIT", ratebudget.DefaultOuraLimit, 1, 1_000_000),
		OuraRateWindow:    l.Duration("OURA_RATE_WINDOW", ratebudget.DefaultOuraWindow),
		RateBudgetSlack:   l.Duration("RATE_BUDGET_SLACK", 0),
	}
	l.Check("WHOOP_RATE_WINDOW", c.WhoopRateWindow >= time.Second, "must be at least 1s")
	l.Check("OURA_RATE_WINDOW", c.OuraRateWindow >= time.Second, "must be at least 1s")
	if c.TokenEncryptionKeys != "" {
		if _, err := tokencrypt.Parse(c.TokenEncryptionKeys); err != nil {
			l.Check("TOKEN_ENCRYPTION_KEYS", false, indentJoined(err))
		}
	}
	if c.ServiceTokens != "" {
		if _, err := auth.ParseServiceTokens(c.ServiceTokens); err != nil {
			l.Check("SERVICE_TOKENS", false, indentJoined(err))
		}
	}
	c.UserTokenSecret = c.UserTokens.Secret
	for _, v := range []struct {
		prefix string
		cfg    VendorConfig
	}{{"WHOOP", c.Whoop}, {"OURA", c.Oura}} {
		l.Check(v.prefix+"_CLIENT_SECRET", v.cfg.ClientID == "" || v.cfg.ClientSecret != "", "is required when "+v.prefix+"_CLIENT_ID is set")
		l.Check(v.prefix+"_CLIENT_ID", v.cfg.ClientSecret == "" || v.cfg.ClientID != "", "is required when "+v.prefix+"_CLIENT_SECRET is set")
		l.Check(v.prefix+"_API_URL", httpURL(v.cfg.APIURL), "must be an absolute http(s) URL")
	}
	l.Check("OURA_AUTHORIZE_URL", httpURL(c.Oura.AuthorizeURL), "must be an absolute http(s) URL")
	if c.Whoop.Configured() || c.Oura.Configured() {
		l.Check("PUBLIC_BASE_URL", c.PublicBaseURL != "", "is required when a vendor is configured (OAuth redirect URIs)")
		l.Check("OAUTH_RETURN_URLS", len(c.ReturnURLs) > 0, "is required when a vendor is configured (where the vendor's redirect sends the browser back to the app)")
	}
	for _, u := range c.ReturnURLs {
		p, err := url.Parse(u)
		l.Check("OAUTH_RETURN_URLS", err == nil && p.Scheme != "" && p.Fragment == "" && (p.Host != "" || p.Opaque != "" || p.Path != ""),
			"each must be an absolute URL without a fragment (https://app.example.com/oauth or com.example.app:/oauth)")
	}
	if c.PublicBaseURL != "" {
		l.Check("PUBLIC_BASE_URL", httpURL(c.PublicBaseURL), "must be an absolute http(s) URL")
	}
	l.Check("SERVICE_TOKEN", c.PersistenceTarget == "" || c.ServiceToken != "", "is required when PERSISTENCE_TARGET is set")
	l.Check("TOKENBROKER_LOCK_LEASE", c.LockLease >= c.RefreshTimeout+2*time.Second,
		"must be at least TOKENBROKER_REFRESH_TIMEOUT + 2s (the lease must outlast the vendor call and the write)")
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"TOKENBROKER_TOKEN_SAFETY_MARGIN", c.SafetyMargin}, {"TOKENBROKER_REFRESH_TIMEOUT", c.RefreshTimeout},
		{"TOKENBROKER_STATE_TTL", c.StateTTL}, {"TOKENBROKER_PROACTIVE_REFRESH_WINDOW", c.ProactiveWindow},
		{"TOKENBROKER_PROACTIVE_REFRESH_INTERVAL", c.ProactiveInterval}, {"TOKENBROKER_ACTIVE_WINDOW", c.ActiveWindow},
		{"TOKENBROKER_RELAY_INTERVAL", c.RelayInterval}, {"TOKENBROKER_REFRESH_STORE_PATIENCE", c.StorePatience},
	} {
		l.Check(d.name, d.v > 0, "must be positive")
	}
	c.Common = service.LoadCommon(l)
	return c, l.Err()
}

func httpURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}

// indentJoined flattens a joined error into one line per problem.
func indentJoined(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", "; ")
}

func (c *Config) setDefaults() {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	def(&c.SafetyMargin, DefaultSafetyMargin)
	def(&c.RefreshTimeout, DefaultRefreshTimeout)
	def(&c.LockLease, DefaultLockLease)
	def(&c.StateTTL, DefaultStateTTL)
	def(&c.ProactiveWindow, DefaultProactiveWindow)
	def(&c.ProactiveInterval, DefaultProactiveInterval)
	def(&c.ActiveWindow, DefaultActiveWindow)
	def(&c.RelayInterval, DefaultRelayInterval)
	def(&c.StorePatience, DefaultStorePatience)
	def(&c.WhoopRateWindow, ratebudget.DefaultWhoopWindow)
	def(&c.OuraRateWindow, ratebudget.DefaultOuraWindow)
	if c.WhoopRateLimit <= 0 {
		c.WhoopRateLimit = ratebudget.DefaultWhoopLimit
	}
	if c.OuraRateLimit <= 0 {
		c.OuraRateLimit = ratebudget.DefaultOuraLimit
	}
	if c.Whoop.APIURL == "" {
		c.Whoop.APIURL = vendors.DefaultWhoopAPIURL
	}
	if c.Oura.APIURL == "" {
		c.Oura.APIURL = vendors.DefaultOuraAPIURL
	}
	if c.Oura.AuthorizeURL == "" {
		c.Oura.AuthorizeURL = vendors.DefaultOuraAuthorizeURL
	}
}
