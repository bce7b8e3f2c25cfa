package server

import (
	"errors"
	"net/url"
	"strings"
	"time"

	"go.opentelemetry.io/otel/trace"

	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/pkg/config"
	"github.com/biobridge/bridge/pkg/ratebudget"
	"github.com/biobridge/bridge/pkg/service"
	"github.com/biobridge/bridge/services/tokenbroker/internal/broker"
	"github.com/biobridge/bridge/services/tokenbroker/internal/relay"
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
	// APIURL is WHOOP_API_URL /
	// OURA_API_URL: the vendor's host
	// root, to which the OAuth and API paths are appended.
	APIURL string
	// AuthorizeURL is OURA_AUTHORIZE_URL; WHOOP derives it from
	// APIURL (+ /oauth/oauth2/auth).
	AuthorizeURL string
}

// Configured reports whether the vendor is offered.
func (v VendorConfig) Configured() bool { return v.ClientID != "" }

// Config is the token broker's configuration. Each field names its
// environment variable and what its values mean; each default is written
// once, where LoadConfig reads the variable or as the constant it reads it
// over (broker.Default*, relay.DefaultInterval; docs/configuration.md lists
// them), and New gives a hand-built Config's zero
// tunables the same defaults (setDefaults).
type Config struct {
	// TracerProvider makes the service's spans; nil is the global one,
	// which the binary sets up from the OTEL_* variables. Not read from the
	// environment: devstack gives each service its own, so each keeps its
	// service.name in one process.
	TracerProvider trace.TracerProvider
	// GRPCAddr is TOKENBROKER_GRPC_ADDR.
	GRPCAddr string
	// AdminAddr is TOKENBROKER_ADMIN_ADDR: /metrics,
	// /healthz, /readyz.
	AdminAddr string
	// PostgresURL is POSTGRES_URL (required). The broker owns schema "tokens".
	PostgresURL string
	// RedisURL is REDIS_URL (required): refresh locks and the token cache.
	RedisURL string
	// RedisKeyPrefix is REDIS_KEY_PREFIX: prepended to every key.
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
	// PersistenceTarget is PERSISTENCE_TARGET (empty: connection events stay
	// queued in the broker's outbox, see the pending gauge).
	PersistenceTarget string
	// ServiceToken is SERVICE_TOKEN (required with PERSISTENCE_TARGET): the
	// bearer token presented to persistence.
	ServiceToken string
	// TLS is TLS_CERT_FILE, TLS_KEY_FILE, TLS_CA_FILE (server and client).
	TLS config.TLSFiles
	// Common is LOG_FORMAT, LOG_LEVEL and LOG_PSEUDONYM_KEY (required): what
	// cmd/tokenbroker needs to build the logger. New does not read it.
	service.Common

	// SafetyMargin is TOKENBROKER_TOKEN_SAFETY_MARGIN: tokens
	// with less life left are refreshed rather than handed out.
	SafetyMargin time.Duration
	// RefreshTimeout is TOKENBROKER_REFRESH_TIMEOUT: deadline
	// of one vendor token call.
	RefreshTimeout time.Duration
	// LockLease is TOKENBROKER_LOCK_LEASE (at least RefreshTimeout + 2s): the
	// refresh lock's lease.
	LockLease time.Duration
	// StateTTL is TOKENBROKER_STATE_TTL: lifetime of an
	// authorization state.
	StateTTL time.Duration
	// ProactiveWindow is TOKENBROKER_PROACTIVE_REFRESH_WINDOW:
	// active connections expiring within it are refreshed in the background.
	ProactiveWindow time.Duration
	// ProactiveInterval is TOKENBROKER_PROACTIVE_REFRESH_INTERVAL.
	ProactiveInterval time.Duration
	// ActiveWindow is TOKENBROKER_ACTIVE_WINDOW: a connection
	// whose token was handed out within it counts as active.
	ActiveWindow time.Duration
	// RelayInterval is TOKENBROKER_RELAY_INTERVAL: how often
	// pending connection events are forwarded when nothing new was written.
	RelayInterval time.Duration
	// StorePatience is TOKENBROKER_REFRESH_STORE_PATIENCE: how
	// long a refresh the vendor answered keeps retrying to store its
	// result (renewing its lock and claim) before it leaves the sealed
	// result parked in Redis for the next holder.
	StorePatience time.Duration

	// The shared vendor rate budget, the same variables and Redis keys as
	// ingest's, so the broker's own API calls (the user-id lookup on
	// connect, revocation) and ingest's fetches add up to one limit.
	// WhoopRateLimit is WHOOP_RATE_LIMIT per WhoopRateWindow,
	// WHOOP_RATE_WINDOW; WhoopDailyLimit is WHOOP_DAILY_LIMIT
	// (0 turns the daily window off).
	WhoopRateLimit  int
	WhoopRateWindow time.Duration
	WhoopDailyLimit int
	// OuraRateLimit is OURA_RATE_LIMIT per OuraRateWindow,
	// OURA_RATE_WINDOW.
	OuraRateLimit  int
	OuraRateWindow time.Duration
	// RateBudgetSlack is RATE_BUDGET_SLACK (0: window/50 + 500ms).
	RateBudgetSlack time.Duration
}

// DefaultProactiveInterval is the default of
// TOKENBROKER_PROACTIVE_REFRESH_INTERVAL. The other tunables' defaults are the
// broker's (broker.Default*) and the relay's (relay.DefaultInterval), which
// LoadConfig reads over.
const DefaultProactiveInterval = 30 * time.Second

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
		SafetyMargin:      l.Duration("TOKENBROKER_TOKEN_SAFETY_MARGIN", broker.DefaultSafetyMargin),
		RefreshTimeout:    l.Duration("TOKENBROKER_REFRESH_TIMEOUT", broker.DefaultRefreshTimeout),
		LockLease:         l.Duration("TOKENBROKER_LOCK_LEASE", broker.DefaultLockLease),
		StateTTL:          l.Duration("TOKENBROKER_STATE_TTL", broker.DefaultStateTTL),
		ProactiveWindow:   l.Duration("TOKENBROKER_PROACTIVE_REFRESH_WINDOW", broker.DefaultProactiveWindow),
		ProactiveInterval: l.Duration("TOKENBROKER_PROACTIVE_REFRESH_INTERVAL", DefaultProactiveInterval),
		ActiveWindow:      l.Duration("TOKENBROKER_ACTIVE_WINDOW", broker.DefaultActiveWindow),
		RelayInterval:     l.Duration("TOKENBROKER_RELAY_INTERVAL", relay.DefaultInterval),
		StorePatience:     l.Duration("TOKENBROKER_REFRESH_STORE_PATIENCE", broker.DefaultStorePatience),
		WhoopRateLimit:    l.Int("WHOOP_RATE_LIMIT", ratebudget.DefaultWhoopLimit, 1, 1_000_000),
		WhoopRateWindow:   l.Duration("WHOOP_RATE_WINDOW", ratebudget.DefaultWhoopWindow),
		WhoopDailyLimit:   l.Int("WHOOP_DAILY_LIMIT", ratebudget.DefaultWhoopDailyLimit, 0, 100_000_000),
		OuraRateLimit:     l.Int("OURA_RATE_LIMIT", ratebudget.DefaultOuraLimit, 1, 1_000_000),
		OuraRateWindow:    l.Duration("OURA_RATE_WINDOW", ratebudget.DefaultOuraWindow),
		RateBudgetSlack:   l.Duration("RATE_BUDGET_SLACK", 0),
	}
	c.UserTokenSecret = c.UserTokens.Secret
	c.Common = service.LoadCommon(l)
	return c, errors.Join(l.Err(), c.Validate())
}

// Validate checks the relations between settings and their formats
// beyond their types; LoadConfig reports its problems with the variables'
// own.
func (c Config) Validate() error {
	l := config.New(nil)
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
	l.Check("TOKENBROKER_LOCK_LEASE", c.LockLease >= c.RefreshTimeout+broker.MinStoreBudget,
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
	return l.Err()
}

func httpURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}

// indentJoined flattens a joined error into one line per problem.
func indentJoined(err error) string {
	return strings.ReplaceAll(err.Error(), "\n", "; ")
}

// setDefaults fills a hand-built Config's zero fields with LoadConfig's
// defaults, so each default is written once, where LoadConfig reads its
// variable.
func (c *Config) setDefaults() {
	config.FillZero(c, defaults())
}

// defaults is the Config LoadConfig reads from an empty environment (the
// errors about required variables are expected), less what a hand-built
// Config leaves empty on purpose: its listen addresses (the caller's
// choice), WhoopDailyLimit (0: no daily budget), the user-token settings
// (pkg/auth's own defaults) and the shared logging settings, which New
// does not read.
func defaults() Config {
	d, _ := LoadConfig(func(string) string { return "" })
	d.GRPCAddr, d.AdminAddr = "", ""
	d.WhoopDailyLimit = 0
	d.UserTokens = auth.UserTokenConfig{}
	d.Common = service.Common{}
	return d
}
