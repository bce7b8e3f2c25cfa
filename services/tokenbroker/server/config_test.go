package server_test

import (
	"bytes"
	"context"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/services/tokenbroker/server"
)

// TestLoadConfig reports every invalid variable at once and applies defaults.
func TestLoadConfig(t *testing.T) {
	valid := map[string]string{
		"POSTGRES_URL":          "postgres://postgres@127.0.0.1:5432/biobridge",
		"REDIS_URL":             "redis://127.0.0.1:6379/0",
		"TOKEN_ENCRYPTION_KEYS": "k1:" + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{7}, 32)),
		"USER_TOKEN_SECRET":     "user-token-secret-for-tests-0123456789",
		"SERVICE_TOKENS":        "ingest:abc",
		"LOG_PSEUDONYM_KEY":     "0123456789abcdef",
		"WHOOP_CLIENT_ID":       "id",
		"WHOOP_CLIENT_SECRET":   "secret",
		"PUBLIC_BASE_URL":       "https://bridge.example",
		"OAUTH_RETURN_URLS":     "com.example.app:/oauth, https://app.example/oauth",
		"SERVICE_ACL":           "ingest=/biobridge.tokens.v1.TokenBrokerService/GetAccessToken",
	}
	tests := []struct {
		name    string
		env     map[string]string
		wantErr []string
		check   func(t *testing.T, c server.Config)
	}{
		{
			name: "valid with defaults",
			env:  valid,
			check: func(t *testing.T, c server.Config) {
				require.Equal(t, ":9102", c.GRPCAddr)
				require.Equal(t, ":9202", c.AdminAddr)
				require.Equal(t, "https://api.prod.whoop.com", c.Whoop.APIURL)
				require.Equal(t, "https://api.ouraring.com", c.Oura.APIURL)
				require.Equal(t, "https://cloud.ouraring.com/oauth/authorize", c.Oura.AuthorizeURL)
				require.True(t, c.Whoop.Configured())
				require.False(t, c.Oura.Configured())
				require.Equal(t, 30*time.Second, c.LockLease)
				require.Empty(t, c.PersistenceTarget)
				require.Equal(t, []byte("0123456789abcdef"), c.Common.PseudonymKey)
				require.Equal(t, []string{"com.example.app:/oauth", "https://app.example/oauth"}, c.ReturnURLs)
			},
		},
		{
			name:    "no SERVICE_ACL outside development",
			env:     without(valid, "SERVICE_ACL"),
			wantErr: []string{"SERVICE_ACL: is required", "SERVICE_ACL_OPEN=true"},
		},
		{
			name:  "SERVICE_ACL_OPEN says so explicitly",
			env:   with(without(valid, "SERVICE_ACL"), "SERVICE_ACL_OPEN", "true"),
			check: func(t *testing.T, c server.Config) { require.Empty(t, c.ServiceACL) },
		},
		{
			name:    "no app return URL",
			env:     without(valid, "OAUTH_RETURN_URLS"),
			wantErr: []string{"OAUTH_RETURN_URLS: is required when a vendor is configured"},
		},
		{
			name:    "a return URL with a fragment",
			env:     with(valid, "OAUTH_RETURN_URLS", "https://app.example/oauth#x"),
			wantErr: []string{"OAUTH_RETURN_URLS: each must be an absolute URL"},
		},
		{
			name: "everything wrong at once",
			env: map[string]string{
				"TOKEN_ENCRYPTION_KEYS":       "k1:c2hvcnQ=",
				"USER_TOKEN_SECRET":           "short",
				"SERVICE_TOKENS":              "nocolon",
				"SERVICE_ACL":                 "ingest=GetAccessToken",
				"WHOOP_CLIENT_ID":             "id",
				"OURA_CLIENT_SECRET":          "s",
				"OURA_API_URL":                "not a url",
				"PERSISTENCE_TARGET":          "127.0.0.1:9103",
				"TOKENBROKER_LOCK_LEASE":      "5s",
				"TOKENBROKER_REFRESH_TIMEOUT": "10s",
			},
			wantErr: []string{
				"POSTGRES_URL: is required", "REDIS_URL: is required", "TOKEN_ENCRYPTION_KEYS: entry 1 (k1): key must be 32 bytes",
				"USER_TOKEN_SECRET: must be at least 32 bytes", "SERVICE_TOKENS: entry 1: want name:token",
				`SERVICE_ACL: entry 1 (ingest): pattern "GetAccessToken"`,
				"WHOOP_CLIENT_SECRET: is required when WHOOP_CLIENT_ID is set", "OURA_CLIENT_ID: is required when OURA_CLIENT_SECRET is set",
				"OURA_API_URL: must be an absolute http(s) URL", "PUBLIC_BASE_URL: is required when a vendor is configured",
				"SERVICE_TOKEN: is required when PERSISTENCE_TARGET is set", "TOKENBROKER_LOCK_LEASE: must be at least",
				"LOG_PSEUDONYM_KEY: is required",
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c, err := server.LoadConfig(func(k string) string { return tc.env[k] })
			if len(tc.wantErr) > 0 {
				require.Error(t, err)
				for _, w := range tc.wantErr {
					require.Contains(t, err.Error(), w)
				}
				for _, secret := range []string{"c2hvcnQ", "short", "nocolon"} {
					require.False(t, strings.Contains(err.Error(), secret), "errors must not echo secret values")
				}
				return
			}
			require.NoError(t, err)
			tc.check(t, c)
		})
	}
}

func without(env map[string]string, k string) map[string]string {
	out := map[string]string{}
	for key, v := range env {
		if key != k {
			out[key] = v
		}
	}
	return out
}

func with(env map[string]string, k, v string) map[string]string {
	out := without(env, k)
	out[k] = v
	return out
}

// TestNewValidatesAHandBuiltConfig: New checks a Config built by hand with
// the same Validate LoadConfig uses, before it connects to anything, and
// names every problem by its variable.
func TestNewValidatesAHandBuiltConfig(t *testing.T) {
	t.Parallel()
	cfg := server.Config{
		PostgresURL: "postgres://127.0.0.1:1/none", RedisURL: "redis://127.0.0.1:1/0",
		TokenEncryptionKeys: "k1:" + base64.StdEncoding.EncodeToString([]byte(strings.Repeat("k", 32))),
		ServiceTokens:       "ingest:a-token",
		Whoop:               server.VendorConfig{ClientID: "whoop-client", ClientSecret: "whoop-secret"},
		RefreshTimeout:      10 * time.Second, LockLease: 5 * time.Second,
	}
	_, err := server.New(context.Background(), cfg, nil)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "PUBLIC_BASE_URL", "a vendor is configured without a redirect root")
	assert.Contains(t, err.Error(), "OAUTH_RETURN_URLS")
	assert.Contains(t, err.Error(), "TOKENBROKER_LOCK_LEASE", "the lease does not outlast the refresh")
}
