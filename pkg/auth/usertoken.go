package auth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"time"

	"github.com/MicahParks/keyfunc/v3"
	"github.com/golang-jwt/jwt/v5"
	"golang.org/x/time/rate"

	"github.com/biobridge/bridge/pkg/apperr"
	"github.com/biobridge/bridge/pkg/config"
)

// Reasons of the errors Verify returns (all with Code Unauthenticated). They
// are stable: apps and tests may rely on them.
const (
	ReasonMissingToken   = "missing_token"
	ReasonMalformedToken = "malformed_token"
	ReasonExpiredToken   = "expired_token"
	ReasonInvalidToken   = "invalid_token"
	// ReasonUnsupportedAlgorithm: the token's alg is not one the verifier
	// accepts ("none", or HS256 while a JWKS is configured: the key
	// confusion attack that signs with the public key as an HMAC secret).
	ReasonUnsupportedAlgorithm = "unsupported_algorithm"
	// ReasonUnknownKey: the token's kid is not in the JWKS, even after a
	// refresh.
	ReasonUnknownKey    = "unknown_key"
	ReasonWrongAudience = "wrong_audience"
	ReasonWrongIssuer   = "wrong_issuer"
)

// Algorithms accepted with a JWKS: the asymmetric ones identity providers
// sign with. HMAC is never accepted with a JWKS, whatever the key set holds.
var jwksAlgorithms = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}

// UserTokenConfig says how user JWTs are verified. Exactly one of Secret
// (HS256, development) and JWKSURL (production) is set.
type UserTokenConfig struct {
	// Secret is USER_TOKEN_SECRET (>= 32 bytes): the HS256 key. An app
	// cannot keep a signing secret, so this is for development and tests.
	Secret []byte
	// JWKSURL is USER_JWKS_URL: the identity provider's key set,
	// https://... (or http:// on loopback) or file:///path. Keys are cached,
	// re-read every JWKSRefreshInterval, and re-read at once (at most once a
	// minute) when a token names an unknown kid, so key rotation needs no
	// restart.
	JWKSURL string
	// JWKSRefreshInterval is USER_JWKS_REFRESH_INTERVAL (default 1h).
	JWKSRefreshInterval time.Duration
	// Issuer is USER_TOKEN_ISSUER: when set, iss must equal it.
	Issuer string
	// Audience is USER_TOKEN_AUDIENCE: when set, aud must contain it.
	Audience string
}

// DefaultJWKSRefreshInterval is USER_JWKS_REFRESH_INTERVAL's default.
const DefaultJWKSRefreshInterval = time.Hour

// LoadUserTokenConfig reads the USER_* variables into a config, recording
// problems in l.
func LoadUserTokenConfig(l *config.Loader) UserTokenConfig {
	c := UserTokenConfig{
		Secret:              l.Bytes("USER_TOKEN_SECRET"),
		JWKSURL:             l.String("USER_JWKS_URL", ""),
		JWKSRefreshInterval: l.Duration("USER_JWKS_REFRESH_INTERVAL", DefaultJWKSRefreshInterval),
		Issuer:              l.String("USER_TOKEN_ISSUER", ""),
		Audience:            l.String("USER_TOKEN_AUDIENCE", ""),
	}
	switch {
	case len(c.Secret) == 0 && c.JWKSURL == "":
		l.Check("USER_JWKS_URL", false, "is required (or USER_TOKEN_SECRET for HS256 in development)")
	case len(c.Secret) > 0 && c.JWKSURL != "":
		l.Check("USER_TOKEN_SECRET", false, "must not be set together with USER_JWKS_URL (HS256 is for development only)")
	case len(c.Secret) > 0:
		l.Check("USER_TOKEN_SECRET", len(c.Secret) >= 32, "must be at least 32 bytes")
	default:
		if err := checkJWKSURL(c.JWKSURL); err != nil {
			l.Check("USER_JWKS_URL", false, err.Error())
		}
	}
	l.Check("USER_JWKS_REFRESH_INTERVAL", c.JWKSRefreshInterval >= time.Minute, "must be at least 1m")
	return c
}

func checkJWKSURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return errors.New("must be a URL")
	}
	switch {
	case u.Scheme == "https" && u.Host != "":
	case u.Scheme == "file" && u.Path != "":
	case u.Scheme == "http" && isLoopbackHost(u.Hostname()):
	default:
		return errors.New("must be https://..., file:///... or http:// on loopback")
	}
	return nil
}

// UserVerifier verifies user JWTs and returns their subject.
type UserVerifier struct {
	parser           *jwt.Parser
	keyfunc          jwt.Keyfunc
	algs             []string
	issuer, audience string
}

// NewUserVerifier returns an HS256 verifier for tokens signed with secret
// (development and tests).
func NewUserVerifier(secret []byte) *UserVerifier {
	secret = append([]byte(nil), secret...)
	return &UserVerifier{
		algs:    []string{jwt.SigningMethodHS256.Alg()},
		keyfunc: func(*jwt.Token) (any, error) { return secret, nil },
		parser:  jwt.NewParser(parserOptions([]string{jwt.SigningMethodHS256.Alg()}, "", "")...),
	}
}

func parserOptions(algs []string, issuer, audience string) []jwt.ParserOption {
	opts := []jwt.ParserOption{
		// Pinning the algorithms defeats alg=none and key confusion.
		jwt.WithValidMethods(algs),
		jwt.WithExpirationRequired(),
		jwt.WithLeeway(30 * time.Second),
	}
	if issuer != "" {
		opts = append(opts, jwt.WithIssuer(issuer))
	}
	if audience != "" {
		opts = append(opts, jwt.WithAudience(audience))
	}
	return opts
}

// NewUserTokenVerifier builds the verifier cfg describes. With a JWKS it
// fetches the key set once before returning (a wrong URL fails the start,
// not every request later) and keeps refreshing it until ctx ends.
func NewUserTokenVerifier(ctx context.Context, cfg UserTokenConfig, logger *slog.Logger) (*UserVerifier, error) {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	v := &UserVerifier{}
	switch {
	case len(cfg.Secret) > 0 && cfg.JWKSURL != "":
		return nil, errors.New("user tokens: set either a secret or a JWKS URL, not both")
	case len(cfg.Secret) > 0:
		hs := NewUserVerifier(cfg.Secret)
		v.algs, v.keyfunc = hs.algs, hs.keyfunc
	case cfg.JWKSURL != "":
		if err := checkJWKSURL(cfg.JWKSURL); err != nil {
			return nil, fmt.Errorf("USER_JWKS_URL: %w", err)
		}
		kf, err := newJWKSKeyfunc(ctx, cfg, logger)
		if err != nil {
			return nil, err
		}
		v.algs = jwksAlgorithms
		v.keyfunc = kf
	default:
		return nil, errors.New("user tokens: a secret or a JWKS URL is required")
	}
	v.issuer, v.audience = cfg.Issuer, cfg.Audience
	v.parser = jwt.NewParser(parserOptions(v.algs, cfg.Issuer, cfg.Audience)...)
	return v, nil
}

func newJWKSKeyfunc(ctx context.Context, cfg UserTokenConfig, logger *slog.Logger) (jwt.Keyfunc, error) {
	refresh := cfg.JWKSRefreshInterval
	if refresh <= 0 {
		refresh = DefaultJWKSRefreshInterval
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	// file:// serves a key set mounted from a secret or config map through
	// the same cache and refresh as a URL.
	transport.RegisterProtocol("file", http.NewFileTransport(http.Dir("/")))
	failFirst := false
	kf, err := keyfunc.NewDefaultOverrideCtx(ctx, []string{cfg.JWKSURL}, keyfunc.Override{
		Client:                    &http.Client{Transport: transport, Timeout: 10 * time.Second},
		HTTPTimeout:               10 * time.Second,
		NoErrorReturnFirstHTTPReq: &failFirst,
		RefreshInterval:           refresh,
		// An unknown kid triggers a refresh at most once a minute; tokens
		// with made-up kids cannot turn the gateway into a JWKS flooder.
		// A request never queues for the limiter: the next refresh is a
		// minute away, far past RateLimitWaitMax, so the limiter refuses
		// at once (the wait bound only has to exceed scheduling delays).
		RefreshUnknownKID: rate.NewLimiter(rate.Every(time.Minute), 1),
		RateLimitWaitMax:  time.Second,
		RefreshErrorHandlerFunc: func(string) func(context.Context, error) {
			return func(ctx context.Context, err error) {
				logger.WarnContext(ctx, "jwks refresh failed; keeping the cached keys", "err", err)
			}
		},
	})
	if err != nil {
		return nil, fmt.Errorf("USER_JWKS_URL: load key set: %w", err)
	}
	return kf.Keyfunc, nil
}

// Verify checks token and returns its sub. Errors are *apperr.Error with
// Code Unauthenticated and one of the Reason* reasons.
func (v *UserVerifier) Verify(token string) (sub string, err error) {
	if token == "" {
		return "", apperr.E(apperr.Unauthenticated, ReasonMissingToken, "missing bearer token")
	}
	var claims jwt.RegisteredClaims
	parsed, err := v.parser.ParseWithClaims(token, &claims, v.keyfunc)
	if err != nil {
		return "", v.refusal(parsed, &claims, err)
	}
	if claims.Subject == "" {
		return "", apperr.E(apperr.Unauthenticated, ReasonInvalidToken, "token has no subject")
	}
	return claims.Subject, nil
}

// refusal maps a parse error to its stable reason. claims holds what the
// token claimed (filled even when verification failed).
func (v *UserVerifier) refusal(parsed *jwt.Token, claims *jwt.RegisteredClaims, err error) error {
	switch {
	case errors.Is(err, jwt.ErrTokenMalformed):
		return apperr.Wrap(err, apperr.Unauthenticated, ReasonMalformedToken, "malformed token")
	case parsed != nil && parsed.Method != nil && !slices.Contains(v.algs, parsed.Method.Alg()):
		return apperr.Wrap(err, apperr.Unauthenticated, ReasonUnsupportedAlgorithm, "token algorithm is not accepted")
	case errors.Is(err, jwt.ErrTokenUnverifiable):
		// The key function found no key for the token's kid, even after
		// a refresh (or a refresh was not allowed yet).
		return apperr.Wrap(err, apperr.Unauthenticated, ReasonUnknownKey, "token signed by an unknown key")
	case !errors.Is(err, jwt.ErrTokenInvalidClaims):
		return apperr.Wrap(err, apperr.Unauthenticated, ReasonInvalidToken, "invalid token")
	// From here on the signature is good and a claim is not.
	case errors.Is(err, jwt.ErrTokenExpired):
		return apperr.Wrap(err, apperr.Unauthenticated, ReasonExpiredToken, "token expired")
	case v.audience != "" && !slices.Contains(claims.Audience, v.audience):
		return apperr.Wrap(err, apperr.Unauthenticated, ReasonWrongAudience, "token is for another audience")
	case v.issuer != "" && claims.Issuer != v.issuer:
		return apperr.Wrap(err, apperr.Unauthenticated, ReasonWrongIssuer, "token is from another issuer")
	}
	return apperr.Wrap(err, apperr.Unauthenticated, ReasonInvalidToken, "invalid token")
}

func isLoopbackHost(h string) bool {
	return h == "localhost" || h == "127.0.0.1" || h == "::1"
}
