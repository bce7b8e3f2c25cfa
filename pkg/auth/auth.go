// Package auth holds the two credentials the system accepts: service tokens
// for internal callers (SERVICE_TOKENS=name:token,...; the name is the caller
// recorded in the audit log) and user JWTs from the app's identity provider
// (verified against its JWKS; HS256 with a shared secret in development),
// whose sub is the internal user id. It also carries the authenticated
// identities in the context, and the ACL (SERVICE_ACL) that says which
// methods each service caller may call.
package auth

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc/metadata"
)

// ServiceTokens authenticates internal callers by static bearer token.
type ServiceTokens struct {
	entries []serviceToken
}

type serviceToken struct {
	name string
	// hash is SHA-256 of the token: comparing fixed-length digests keeps the
	// comparison time independent of the token lengths as well.
	hash [sha256.Size]byte
}

// ParseServiceTokens parses "name:token,name2:token2". Errors name the bad
// entry by position and caller name, never by its token.
func ParseServiceTokens(s string) (*ServiceTokens, error) {
	t := &ServiceTokens{}
	seen := map[string]bool{}
	var errs []error
	for i, raw := range strings.Split(s, ",") {
		raw = strings.TrimSpace(raw)
		if raw == "" {
			continue
		}
		name, token, ok := strings.Cut(raw, ":")
		name, token = strings.TrimSpace(name), strings.TrimSpace(token)
		switch {
		case !ok || name == "":
			errs = append(errs, fmt.Errorf("entry %d: want name:token", i+1))
			continue
		case token == "":
			errs = append(errs, fmt.Errorf("entry %d (%s): empty token", i+1, name))
			continue
		case seen[name]:
			errs = append(errs, fmt.Errorf("entry %d (%s): duplicate name", i+1, name))
			continue
		}
		seen[name] = true
		t.entries = append(t.entries, serviceToken{name: name, hash: sha256.Sum256([]byte(token))})
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	if len(t.entries) == 0 {
		return nil, errors.New("no service tokens configured")
	}
	return t, nil
}

// Names returns the configured caller names (for logging at startup).
func (t *ServiceTokens) Names() []string {
	out := make([]string, len(t.entries))
	for i, e := range t.entries {
		out[i] = e.name
	}
	return out
}

// Authenticate returns the caller name for token. It compares against every
// entry without an early exit, so timing reveals neither which entry matched
// nor how much of a token was right.
func (t *ServiceTokens) Authenticate(token string) (name string, ok bool) {
	if t == nil {
		return "", false
	}
	h := sha256.Sum256([]byte(token))
	matched := 0
	for _, e := range t.entries {
		eq := subtle.ConstantTimeCompare(h[:], e.hash[:])
		if eq == 1 && matched == 0 {
			name = e.name
		}
		matched |= eq
	}
	if token == "" || matched == 0 {
		return "", false
	}
	return name, true
}

// IssueUserToken signs an HS256 token for sub valid for ttl (devstack, tests).
func IssueUserToken(secret []byte, sub string, ttl time.Duration) (string, error) {
	now := time.Now()
	claims := jwt.RegisteredClaims{
		Subject:   sub,
		IssuedAt:  jwt.NewNumericDate(now),
		ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
	}
	s, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(secret)
	if err != nil {
		return "", fmt.Errorf("sign user token: %w", err)
	}
	return s, nil
}

type callerKey struct{}
type userKey struct{}

// WithCaller returns ctx carrying the authenticated service caller name.
func WithCaller(ctx context.Context, name string) context.Context {
	return context.WithValue(ctx, callerKey{}, name)
}

// Caller returns the authenticated service caller name, or "".
func Caller(ctx context.Context) string {
	s, _ := ctx.Value(callerKey{}).(string)
	return s
}

// WithUser returns ctx carrying the authenticated user id (JWT sub).
func WithUser(ctx context.Context, sub string) context.Context {
	return context.WithValue(ctx, userKey{}, sub)
}

// User returns the authenticated user id, or "".
func User(ctx context.Context) string {
	s, _ := ctx.Value(userKey{}).(string)
	return s
}

// BearerToken returns the token from incoming gRPC metadata
// "authorization: Bearer <token>" (scheme case-insensitive), or "".
func BearerToken(ctx context.Context) string {
	// The one key, without copying the whole metadata.
	for _, v := range metadata.ValueFromIncomingContext(ctx, "authorization") {
		scheme, tok, found := strings.Cut(strings.TrimSpace(v), " ")
		if found && strings.EqualFold(scheme, "bearer") {
			if tok = strings.TrimSpace(tok); tok != "" {
				return tok
			}
		}
	}
	return ""
}
