package auth_test

import (
	"context"

	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"google.golang.org/grpc/metadata"

	"github.com/biobridge/bridge/pkg/apperr"
	"github.com/biobridge/bridge/pkg/auth"
)

const (
	writeEvents = "/biobridge.persistence.v1.PersistenceService/WriteEvents"
	leaseOutbox = "/biobridge.persistence.v1.PersistenceService/LeaseOutbox"
	getLatest   = "/biobridge.biometrics.v1.BiometricsService/GetLatest"
	watchLatest = "/biobridge.biometrics.v1.BiometricsService/WatchLatest"
)

func TestParseACLErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		in      string
		wantErr []string
	}{
		{name: "no equals", in: "agents=" + getLatest + ";ingest", wantErr: []string{"entry 2: want caller=pattern|pattern"}},
		{name: "empty caller", in: "=" + getLatest, wantErr: []string{"entry 1: want caller=pattern|pattern"}},
		{name: "no methods", in: "agents= ", wantErr: []string{"entry 1 (agents): no methods"}},
		{name: "duplicate", in: "agents=*;agents=" + getLatest, wantErr: []string{"entry 2 (agents): duplicate caller"}},
		{name: "caller with comma", in: "a,b=*", wantErr: []string{`entry 1 ("a,b"): caller name`}},
		{name: "no leading slash", in: "agents=biobridge.biometrics.v1.BiometricsService/GetLatest",
			wantErr: []string{`entry 1 (agents): pattern "biobridge.biometrics.v1.BiometricsService/GetLatest"`}},
		{name: "service only", in: "agents=/biobridge.biometrics.v1.BiometricsService", wantErr: []string{`pattern "/biobridge.biometrics.v1.BiometricsService"`}},
		{name: "empty pattern", in: "agents=" + getLatest + "||" + watchLatest, wantErr: []string{`entry 1 (agents): pattern ""`}},
		{name: "partial wildcard", in: "agents=/biobridge.biometrics.v1.BiometricsService/Get*", wantErr: []string{"a wildcard must be a whole method name"}},
		{name: "wildcard service", in: "agents=/*/GetLatest", wantErr: []string{`pattern "/*/GetLatest"`}},
		{name: "too many slashes", in: "agents=/a/b/c", wantErr: []string{`pattern "/a/b/c"`}},
		{name: "only separators", in: " ; ; ", wantErr: []string{"no entries"}},
		{name: "every problem reported", in: "x;agents=/bad;ingest=" + writeEvents,
			wantErr: []string{"entry 1: want", `entry 2 (agents): pattern "/bad"`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			acl, err := auth.ParseACL(tt.in)
			require.Error(t, err)
			assert.Nil(t, acl)
			for _, want := range tt.wantErr {
				assert.Contains(t, err.Error(), want)
			}
			assert.NotContains(t, err.Error(), "\n", "one line, so it fits the config report")
		})
	}
}

func TestACLAllowed(t *testing.T) {
	t.Parallel()
	acl, err := auth.ParseACL(" ingest=" + writeEvents + " | /biobridge.persistence.v1.PersistenceService/DeleteRecords ;" +
		"agents=/biobridge.biometrics.v1.BiometricsService/*;" +
		"operator=*;")
	require.NoError(t, err)
	require.True(t, acl.Enforced())

	open, err := auth.ParseACL("  ")
	require.NoError(t, err)
	require.False(t, open.Enforced())
	var nilACL *auth.ACL

	tests := []struct {
		name   string
		acl    *auth.ACL
		caller string
		method string
		want   bool
	}{
		{"exact method", acl, "ingest", writeEvents, true},
		{"second exact method", acl, "ingest", "/biobridge.persistence.v1.PersistenceService/DeleteRecords", true},
		{"method not listed", acl, "ingest", leaseOutbox, false},
		{"other service", acl, "ingest", getLatest, false},
		{"service wildcard", acl, "agents", getLatest, true},
		{"service wildcard, streaming method", acl, "agents", watchLatest, true},
		{"service wildcard does not reach other services", acl, "agents", writeEvents, false},
		{"service wildcard is not a prefix match", acl, "agents", "/biobridge.biometrics.v1.BiometricsServiceX/GetLatest", false},
		{"global wildcard", acl, "operator", leaseOutbox, true},
		{"unlisted caller", acl, "publisher", leaseOutbox, false},
		{"empty caller", acl, "", getLatest, false},
		{"malformed method", acl, "agents", "biobridge.biometrics.v1.BiometricsService/GetLatest", false},
		{"open ACL allows everyone", open, "anyone", writeEvents, true},
		{"nil ACL allows everyone", nilACL, "anyone", writeEvents, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			assert.Equal(t, tt.want, tt.acl.Allowed(tt.caller, tt.method))
			err := tt.acl.Check(tt.caller, tt.method)
			if tt.want {
				assert.NoError(t, err)
				return
			}
			var ae *apperr.Error
			require.ErrorAs(t, err, &ae)
			assert.Equal(t, apperr.PermissionDenied, ae.Code)
			assert.Equal(t, auth.ReasonMethodNotAllowed, ae.Reason)
			assert.Contains(t, ae.Message, tt.method)
		})
	}
}

// TestServiceHook checks the one service-token hook every server uses: a
// missing or unknown token is Unauthenticated with one reason, a caller the
// ACL does not allow is PermissionDenied, and an allowed caller's name
// reaches the handler.
func TestServiceHook(t *testing.T) {
	t.Parallel()
	tokens, err := auth.ParseServiceTokens("agents:agents-token,ingest:ingest-token")
	require.NoError(t, err)
	acl, err := auth.ParseACL("agents=" + getLatest + ";ingest=*")
	require.NoError(t, err)
	hook := auth.ServiceHook(tokens, acl)
	bearer := func(v string) context.Context {
		if v == "" {
			return context.Background()
		}
		return metadata.NewIncomingContext(context.Background(), metadata.Pairs("authorization", v))
	}
	tests := []struct {
		name       string
		header     string
		method     string
		wantCode   apperr.Code // 0: allowed
		wantReason string
		wantCaller string
	}{
		{"no token", "", getLatest, apperr.Unauthenticated, auth.ReasonInvalidServiceToken, ""},
		{"unknown token", "Bearer nope", getLatest, apperr.Unauthenticated, auth.ReasonInvalidServiceToken, ""},
		{"not a bearer", "Basic agents-token", getLatest, apperr.Unauthenticated, auth.ReasonInvalidServiceToken, ""},
		{"method outside the caller's ACL", "Bearer agents-token", writeEvents, apperr.PermissionDenied, auth.ReasonMethodNotAllowed, ""},
		{"allowed", "Bearer agents-token", getLatest, 0, "", "agents"},
		{"scheme case-insensitive", "bearer ingest-token", leaseOutbox, 0, "", "ingest"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			ctx, err := hook(bearer(tt.header), tt.method)
			if tt.wantCode != 0 {
				require.Error(t, err)
				assert.Equal(t, tt.wantCode, apperr.CodeOf(err))
				assert.Equal(t, tt.wantReason, apperr.ReasonOf(err))
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.wantCaller, auth.Caller(ctx))
		})
	}
}

func TestMethodNotListed(t *testing.T) {
	t.Parallel()
	err := auth.MethodNotListed("/biobridge.x.v1.XService/Drop")
	assert.Equal(t, apperr.PermissionDenied, apperr.CodeOf(err))
	assert.Equal(t, auth.ReasonMethodNotAllowed, apperr.ReasonOf(err))
}
