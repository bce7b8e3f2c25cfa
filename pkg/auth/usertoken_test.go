package auth_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/MicahParks/jwkset"
	"github.com/golang-jwt/jwt/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/pkg/apperr"
	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/pkg/config"
)

const (
	testIssuer   = "https://idp.example.test/"
	testAudience = "biobridge-api"
)

// signingKey is one key of the identity provider.
type signingKey struct {
	kid    string
	method jwt.SigningMethod
	priv   crypto.Signer
}

func newKeys(t *testing.T) (rsaKey, ecKey, edKey signingKey) {
	t.Helper()
	r, err := rsa.GenerateKey(rand.Reader, 2048)
	require.NoError(t, err)
	e, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	require.NoError(t, err)
	_, d, err := ed25519.GenerateKey(rand.Reader)
	require.NoError(t, err)
	return signingKey{"rsa-1", jwt.SigningMethodRS256, r},
		signingKey{"ec-1", jwt.SigningMethodES256, e},
		signingKey{"ed-1", jwt.SigningMethodEdDSA, d}
}

// jwksJSON is the public key set an identity provider publishes.
func jwksJSON(t *testing.T, keys ...signingKey) []byte {
	t.Helper()
	set := jwkset.NewMemoryStorage()
	for _, k := range keys {
		jwk, err := jwkset.NewJWKFromKey(k.priv.Public(), jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: k.kid, USE: jwkset.UseSig}})
		require.NoError(t, err)
		require.NoError(t, set.KeyWrite(context.Background(), jwk))
	}
	raw, err := set.JSONPublic(context.Background())
	require.NoError(t, err)
	return raw
}

func sign(t *testing.T, k signingKey, claims jwt.MapClaims) string {
	t.Helper()
	tok := jwt.NewWithClaims(k.method, claims)
	tok.Header["kid"] = k.kid
	s, err := tok.SignedString(k.priv)
	require.NoError(t, err)
	return s
}

func claims(mut func(jwt.MapClaims)) jwt.MapClaims {
	c := jwt.MapClaims{"sub": "user-1", "iss": testIssuer, "aud": []string{testAudience},
		"exp": time.Now().Add(time.Hour).Unix(), "iat": time.Now().Unix()}
	if mut != nil {
		mut(c)
	}
	return c
}

// jwksServer serves a key set that a test can replace (key rotation).
type jwksServer struct {
	*httptest.Server
	mu    sync.Mutex
	body  []byte
	reads int
}

func newJWKSServer(t *testing.T, body []byte) *jwksServer {
	s := &jwksServer{body: body}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		s.mu.Lock()
		defer s.mu.Unlock()
		s.reads++
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(s.body)
	}))
	t.Cleanup(s.Close)
	return s
}

func (s *jwksServer) set(body []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.body = body
}

func jwksVerifier(t *testing.T, url string) *auth.UserVerifier {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	v, err := auth.NewUserTokenVerifier(ctx, auth.UserTokenConfig{JWKSURL: url, Issuer: testIssuer, Audience: testAudience}, nil)
	require.NoError(t, err)
	return v
}

func TestUserVerifierJWKS(t *testing.T) {
	t.Parallel()
	rsaKey, ecKey, edKey := newKeys(t)
	srv := newJWKSServer(t, jwksJSON(t, rsaKey, ecKey, edKey))
	v := jwksVerifier(t, srv.URL)

	stranger, _, _ := newKeys(t)
	stranger.kid = "not-published"
	pubDER, err := x509.MarshalPKIXPublicKey(rsaKey.priv.Public())
	require.NoError(t, err)
	pubPEM := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: pubDER})
	confused := jwt.NewWithClaims(jwt.SigningMethodHS256, claims(nil))
	confused.Header["kid"] = rsaKey.kid
	keyConfusion, err := confused.SignedString(pubPEM)
	require.NoError(t, err)
	noneTok := jwt.NewWithClaims(jwt.SigningMethodNone, claims(nil))
	noneTok.Header["kid"] = rsaKey.kid
	none, err := noneTok.SignedString(jwt.UnsafeAllowNoneSignatureType)
	require.NoError(t, err)

	tests := []struct {
		name       string
		token      string
		wantReason string
	}{
		{"RS256 from the key set", sign(t, rsaKey, claims(nil)), ""},
		{"ES256 from the key set", sign(t, ecKey, claims(nil)), ""},
		{"EdDSA from the key set", sign(t, edKey, claims(nil)), ""},
		{"audience among several", sign(t, rsaKey, claims(func(c jwt.MapClaims) { c["aud"] = []string{"other", testAudience} })), ""},
		{"wrong aud", sign(t, rsaKey, claims(func(c jwt.MapClaims) { c["aud"] = "another-api" })), auth.ReasonWrongAudience},
		{"no aud", sign(t, rsaKey, claims(func(c jwt.MapClaims) { delete(c, "aud") })), auth.ReasonWrongAudience},
		{"wrong iss", sign(t, rsaKey, claims(func(c jwt.MapClaims) { c["iss"] = "https://evil.example.test/" })), auth.ReasonWrongIssuer},
		{"unknown kid", sign(t, stranger, claims(nil)), auth.ReasonUnknownKey},
		{"alg none", none, auth.ReasonUnsupportedAlgorithm},
		{"HS256 with the public key as secret", keyConfusion, auth.ReasonUnsupportedAlgorithm},
		{"expired", sign(t, rsaKey, claims(func(c jwt.MapClaims) { c["exp"] = time.Now().Add(-time.Hour).Unix() })), auth.ReasonExpiredToken},
		{"no exp", sign(t, rsaKey, claims(func(c jwt.MapClaims) { delete(c, "exp") })), auth.ReasonInvalidToken},
		{"no sub", sign(t, rsaKey, claims(func(c jwt.MapClaims) { delete(c, "sub") })), auth.ReasonInvalidToken},
		{"signature of another key under a published kid", sign(t, signingKey{rsaKey.kid, jwt.SigningMethodRS256, stranger.priv}, claims(nil)), auth.ReasonInvalidToken},
		{"tampered payload", tamper(sign(t, rsaKey, claims(nil))), auth.ReasonInvalidToken},
		{"garbage", "a.b.c", auth.ReasonMalformedToken},
		{"missing", "", auth.ReasonMissingToken},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			sub, err := v.Verify(tt.token)
			if tt.wantReason == "" {
				require.NoError(t, err)
				assert.Equal(t, "user-1", sub)
				return
			}
			require.Error(t, err)
			assert.Empty(t, sub)
			assert.Equal(t, apperr.Unauthenticated, apperr.CodeOf(err))
			assert.Equal(t, tt.wantReason, apperr.ReasonOf(err), "%v", err)
		})
	}
}

// tamper changes the payload's subject without re-signing.
func tamper(tok string) string {
	parts := strings.Split(tok, ".")
	parts[1] = base64.RawURLEncoding.EncodeToString([]byte(`{"sub":"admin","iss":"` + testIssuer + `","aud":"` + testAudience + `","exp":9999999999}`))
	return strings.Join(parts, ".")
}

// TestUserVerifierJWKSKeyRotation: the identity provider publishes a new
// key and signs with it; the verifier picks it up without a restart.
func TestUserVerifierJWKSKeyRotation(t *testing.T) {
	t.Parallel()
	oldKey, _, _ := newKeys(t)
	newKey, _, _ := newKeys(t)
	newKey.kid = "rsa-2"
	srv := newJWKSServer(t, jwksJSON(t, oldKey))
	v := jwksVerifier(t, srv.URL)

	_, err := v.Verify(sign(t, oldKey, claims(nil)))
	require.NoError(t, err)
	srv.set(jwksJSON(t, newKey))
	sub, err := v.Verify(sign(t, newKey, claims(nil)))
	require.NoError(t, err, "a token signed by a newly published key is accepted")
	assert.Equal(t, "user-1", sub)
}

func TestUserVerifierJWKSFile(t *testing.T) {
	t.Parallel()
	k, _, _ := newKeys(t)
	path := filepath.Join(t.TempDir(), "jwks.json")
	require.NoError(t, os.WriteFile(path, jwksJSON(t, k), 0o600))
	v := jwksVerifier(t, "file://"+path)
	sub, err := v.Verify(sign(t, k, claims(nil)))
	require.NoError(t, err)
	assert.Equal(t, "user-1", sub)
}

func TestNewUserTokenVerifierFailsOnUnreachableJWKS(t *testing.T) {
	t.Parallel()
	srv := httptest.NewServer(http.NotFoundHandler())
	srv.Close()
	_, err := auth.NewUserTokenVerifier(context.Background(), auth.UserTokenConfig{JWKSURL: srv.URL}, nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "USER_JWKS_URL")
}

// TestHS256VerifierChecksIssuerAndAudience: development tokens get the
// same claim checks when they are configured.
func TestHS256VerifierChecksIssuerAndAudience(t *testing.T) {
	t.Parallel()
	secret := []byte("user-token-secret-0123456789abcdef")
	v, err := auth.NewUserTokenVerifier(context.Background(), auth.UserTokenConfig{Secret: secret, Issuer: testIssuer, Audience: testAudience}, nil)
	require.NoError(t, err)
	good, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims(nil)).SignedString(secret)
	require.NoError(t, err)
	_, err = v.Verify(good)
	require.NoError(t, err)
	bad, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims(func(c jwt.MapClaims) { c["aud"] = "x" })).SignedString(secret)
	require.NoError(t, err)
	_, err = v.Verify(bad)
	assert.Equal(t, auth.ReasonWrongAudience, apperr.ReasonOf(err))
}

func TestLoadUserTokenConfig(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		env     map[string]string
		wantErr string
	}{
		{"secret", map[string]string{"USER_TOKEN_SECRET": strings.Repeat("s", 32)}, ""},
		{"jwks", map[string]string{"USER_JWKS_URL": "https://idp.example.test/.well-known/jwks.json", "USER_TOKEN_AUDIENCE": "a"}, ""},
		{"jwks file", map[string]string{"USER_JWKS_URL": "file:///etc/biobridge/jwks.json"}, ""},
		{"neither", map[string]string{}, "USER_JWKS_URL: is required"},
		{"both", map[string]string{"USER_TOKEN_SECRET": strings.Repeat("s", 32), "USER_JWKS_URL": "https://idp.example.test/jwks"}, "USER_TOKEN_SECRET: must not be set together"},
		{"short secret", map[string]string{"USER_TOKEN_SECRET": "short"}, "USER_TOKEN_SECRET: must be at least 32 bytes"},
		{"plain http off loopback", map[string]string{"USER_JWKS_URL": "http://idp.example.test/jwks"}, "USER_JWKS_URL: must be https://"},
		{"refresh too often", map[string]string{"USER_JWKS_URL": "https://idp.example.test/jwks", "USER_JWKS_REFRESH_INTERVAL": "1s"}, "USER_JWKS_REFRESH_INTERVAL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			l := config.New(func(k string) string { return tt.env[k] })
			auth.LoadUserTokenConfig(l)
			if tt.wantErr == "" {
				require.NoError(t, l.Err())
				return
			}
			require.Error(t, l.Err())
			assert.Contains(t, l.Err().Error(), tt.wantErr)
		})
	}
}

// FuzzUserVerifierJWKS feeds arbitrary tokens to a JWKS verifier: it must
// never panic, and it may accept only what the key signed.
func FuzzUserVerifierJWKS(f *testing.F) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	jwk, err := jwkset.NewJWKFromKey(k.Public(), jwkset.JWKOptions{Metadata: jwkset.JWKMetadataOptions{KID: "fuzz"}})
	if err != nil {
		f.Fatal(err)
	}
	set, err := json.Marshal(jwkset.JWKSMarshal{Keys: []jwkset.JWKMarshal{jwk.Marshal()}})
	if err != nil {
		f.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write(set) }))
	defer srv.Close()
	v, err := auth.NewUserTokenVerifier(context.Background(), auth.UserTokenConfig{JWKSURL: srv.URL, Audience: testAudience}, nil)
	if err != nil {
		f.Fatal(err)
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodES256, jwt.MapClaims{"sub": "u", "aud": testAudience, "exp": time.Now().Add(time.Hour).Unix()})
	tok.Header["kid"] = "fuzz"
	good, err := tok.SignedString(k)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(good)
	f.Add("")
	f.Add("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1In0.")
	f.Add(strings.Repeat("a.", 3))
	f.Fuzz(func(t *testing.T, s string) {
		sub, err := v.Verify(s)
		if err != nil {
			if apperr.CodeOf(err) != apperr.Unauthenticated || apperr.ReasonOf(err) == "" {
				t.Fatalf("error without a stable reason: %v", err)
			}
			return
		}
		// Encodings of the same signed token may differ (ECDSA signatures
		// are malleable); its claims may not.
		if sub != "u" {
			t.Fatalf("accepted claims the key did not sign: %q", s)
		}
	})
}
