package auth_test

import (
	"context"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/metadata"

	"github.com/biobridge/bridge/pkg/apperr"
	"github.com/biobridge/bridge/pkg/auth"
)

func TestParseServiceTokens(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      string
		wantErr string
	}{
		{name: "ok", in: "langgraph:tok-aaaaaaaa, gateway:tok-bbbbbbbb"},
		{name: "empty", in: " , ", wantErr: "no service tokens configured"},
		{name: "no colon", in: "gateway:tok-ok,supersecretvalue", wantErr: "entry 2: want name:token"},
		{name: "empty token", in: "gateway:", wantErr: "entry 1 (gateway): empty token"},
		{name: "duplicate", in: "a:tok-1,a:tok-2", wantErr: "entry 2 (a): duplicate name"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			st, err := auth.ParseServiceTokens(tt.in)
			if tt.wantErr == "" {
				require.NoError(t, err)
				assert.Equal(t, []string{"langgraph", "gateway"}, st.Names())
				return
			}
			require.Error(t, err)
			assert.Contains(t, err.Error(), tt.wantErr)
			assert.NotContains(t, err.Error(), "supersecretvalue", "tokens are never echoed")
			assert.NotContains(t, err.Error(), "tok-2")
		})
	}
}

func TestAuthenticate(t *testing.T) {
	t.Parallel()
	st, err := auth.ParseServiceTokens("langgraph:tok-lg-123456,gateway:tok-gw-654321")
	require.NoError(t, err)
	tests := []struct {
		token    string
		wantName string
		wantOK   bool
	}{
		{"tok-lg-123456", "langgraph", true},
		{"tok-gw-654321", "gateway", true},
		{"tok-gw-65432", "", false},
		{"tok-gw-6543210", "", false},
		{"", "", false},
		{"langgraph", "", false},
	}
	for _, tt := range tests {
		name, ok := st.Authenticate(tt.token)
		assert.Equal(t, tt.wantOK, ok, tt.token)
		assert.Equal(t, tt.wantName, name, tt.token)
	}
	var nilTokens *auth.ServiceTokens
	_, ok := nilTokens.Authenticate("x")
	assert.False(t, ok)
}

func TestUserVerifier(t *testing.T) {
	t.Parallel()
	secret := []byte("user-token-secret-0123456789abcdef")
	v := auth.NewUserVerifier(secret)

	good, err := auth.IssueUserToken(secret, "user-1", time.Hour)
	require.NoError(t, err)
	expired, err := auth.IssueUserToken(secret, "user-1", -time.Hour)
	require.NoError(t, err)
	otherKey, err := auth.IssueUserToken([]byte("another secret"), "user-1", time.Hour)
	require.NoError(t, err)
	noSub, err := auth.IssueUserToken(secret, "", time.Hour)
	require.NoError(t, err)
	noExp, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"sub": "user-1"}).SignedString(secret)
	require.NoError(t, err)
	hs512, err := jwt.NewWithClaims(jwt.SigningMethodHS512, jwt.MapClaims{"sub": "user-1", "exp": time.Now().Add(time.Hour).Unix()}).SignedString(secret)
	require.NoError(t, err)
	none, err := jwt.NewWithClaims(jwt.SigningMethodNone, jwt.MapClaims{"sub": "user-1", "exp": time.Now().Add(time.Hour).Unix()}).SignedString(jwt.UnsafeAllowNoneSignatureType)
	require.NoError(t, err)

	tests := []struct {
		name       string
		token      string
		wantSub    string
		wantReason string
	}{
		{"valid", good, "user-1", ""},
		{"missing", "", "", auth.ReasonMissingToken},
		{"malformed", "not-a-jwt", "", auth.ReasonMalformedToken},
		{"expired", expired, "", auth.ReasonExpiredToken},
		{"wrong key", otherKey, "", auth.ReasonInvalidToken},
		{"no sub", noSub, "", auth.ReasonInvalidToken},
		{"no exp", noExp, "", auth.ReasonInvalidToken},
		{"hs512 rejected", hs512, "", auth.ReasonUnsupportedAlgorithm},
		{"alg none rejected", none, "", auth.ReasonUnsupportedAlgorithm},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			sub, err := v.Verify(tt.token)
			if tt.wantReason == "" {
				require.NoError(t, err)
				assert.Equal(t, tt.wantSub, sub)
				return
			}
			require.Error(t, err)
			assert.Empty(t, sub)
			assert.Equal(t, apperr.Unauthenticated, apperr.CodeOf(err))
			assert.Equal(t, tt.wantReason, apperr.ReasonOf(err))
		})
	}
}

func TestContext(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	assert.Empty(t, auth.Caller(ctx))
	assert.Empty(t, auth.User(ctx))
	ctx = auth.WithUser(auth.WithCaller(ctx, "gateway"), "user-7")
	assert.Equal(t, "gateway", auth.Caller(ctx))
	assert.Equal(t, "user-7", auth.User(ctx))
}

func TestBearerToken(t *testing.T) {
	t.Parallel()
	tests := map[string]struct {
		md   metadata.MD
		want string
	}{
		"bearer":       {metadata.Pairs("authorization", "Bearer abc.def"), "abc.def"},
		"lowercase":    {metadata.Pairs("authorization", "bearer  abc "), "abc"},
		"basic":        {metadata.Pairs("authorization", "Basic Zm9v"), ""},
		"no scheme":    {metadata.Pairs("authorization", "abc"), ""},
		"empty bearer": {metadata.Pairs("authorization", "Bearer "), ""},
		"absent":       {metadata.MD{}, ""},
	}
	for name, tt := range tests {
		ctx := metadata.NewIncomingContext(context.Background(), tt.md)
		assert.Equal(t, tt.want, auth.BearerToken(ctx), name)
	}
	assert.Equal(t, "", auth.BearerToken(context.Background()))
}
