package stack

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/pkg/auth"
)

// TestStartRefusesAServiceTokenNobodyAccepts: the mistake a new user makes
// (their own SERVICE_TOKENS, SERVICE_TOKEN left to devstack) stops the start
// with a message naming both variables, instead of a stack whose every
// internal call is refused.
func TestStartRefusesAServiceTokenNobodyAccepts(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name string
		env  map[string]string
	}{
		{"own SERVICE_TOKENS, SERVICE_TOKEN filled in", map[string]string{"SERVICE_TOKENS": "agent:my-agent-token"}},
		{"both set, not matching", map[string]string{"SERVICE_TOKENS": "internal:a-token", "SERVICE_TOKEN": "another-token"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, err := Start(context.Background(), Options{Getenv: func(k string) string { return tt.env[k] }, Ephemeral: true})
			require.Error(t, err)
			assert.Nil(t, s)
			assert.Contains(t, err.Error(), "SERVICE_TOKEN (")
			assert.Contains(t, err.Error(), "is not among SERVICE_TOKENS")
			assert.NotContains(t, err.Error(), "my-agent-token", "tokens are never echoed")
			assert.NotContains(t, err.Error(), "another-token")
		})
	}
}

func TestStartRefusesAGlobalServiceACL(t *testing.T) {
	t.Parallel()
	env := map[string]string{"SERVICE_ACL": "agent=*"}
	_, err := Start(context.Background(), Options{Getenv: func(k string) string { return env[k] }, Ephemeral: true})
	require.Error(t, err)
	assert.Contains(t, err.Error(), "SERVICE_ACL: devstack gives each service")
}

// TestDevACLIsLeastPrivilege: the agents' token reads biometrics and nothing
// else; the internal caller gets what the wiring calls, not the agents' or
// operators' methods.
func TestDevACLIsLeastPrivilege(t *testing.T) {
	t.Parallel()
	e := newEnv(func(string) string { return "" })
	acl := func(service string) *auth.ACL {
		a, err := auth.ParseACL(e.forService(service, "internal")("SERVICE_ACL"))
		require.NoError(t, err)
		require.True(t, a.Enforced())
		return a
	}
	persistence, broker, ingest := acl("persistence"), acl("tokenbroker"), acl("ingest")
	assert.True(t, persistence.Allowed("agent", "/biobridge.biometrics.v1.BiometricsService/GetLatest"))
	for _, m := range []string{"LeaseOutbox", "AckOutbox", "DeleteRecords", "WriteEvents"} {
		assert.False(t, persistence.Allowed("agent", "/biobridge.persistence.v1.PersistenceService/"+m), m)
		assert.True(t, persistence.Allowed("internal", "/biobridge.persistence.v1.PersistenceService/"+m), m)
	}
	assert.False(t, broker.Allowed("agent", "/biobridge.tokens.v1.TokenBrokerService/GetAccessToken"))
	assert.True(t, broker.Allowed("internal", "/biobridge.tokens.v1.TokenBrokerService/GetAccessToken"))
	assert.False(t, ingest.Allowed("internal", "/biobridge.ingest.v1.IngestService/RetryJobs"))
	assert.True(t, ingest.Allowed("operator", "/biobridge.ingest.v1.IngestService/RetryJobs"))

	open := newEnv(func(k string) string { return map[string]string{"SERVICE_ACL_OPEN": "true"}[k] })
	assert.Empty(t, open.forService("persistence", "internal")("SERVICE_ACL"), "SERVICE_ACL_OPEN=true turns the ACL off")
}
