package ingesttest

import (
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/services/ingest/server"
)

// TestInternalAuthFailureIsAServerError: when persistence refuses ingest's
// own service token (a deployment mistake), a HealthKit push with a valid
// user JWT is answered 500, not a 401 the app would read as "log the user
// in again", and ingest's log says which variables to check.
func TestInternalAuthFailureIsAServerError(t *testing.T) {
	t.Parallel()
	logs := &syncBuffer{}
	e := newEnv(t, options{
		ingest:    func(c *server.Config) { c.ServiceToken = "a-token-persistence-does-not-know" },
		ingestLog: logs,
	})
	tok, err := auth.IssueUserToken(userSecret, "user-internal", time.Hour)
	require.NoError(t, err)
	at := time.Now().UTC().Add(-time.Hour).Truncate(time.Second).Format(time.RFC3339)
	req, err := http.NewRequest(http.MethodPost, e.gatewayURL+"/v1/healthkit/samples", strings.NewReader(
		`{"samples":[{"uuid":"I1","type":"HKQuantityTypeIdentifierHeartRate","value":64,"unit":"count/min","start_date":"`+at+`","end_date":"`+at+`"}]}`))
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+tok)
	body := e.do(req, http.StatusInternalServerError)
	assert.NotContains(t, string(body), "service token", "the app is not told about internal credentials")
	require.Eventually(t, func() bool {
		return strings.Contains(logs.String(), "SERVICE_TOKENS") && strings.Contains(logs.String(), "WriteEvents")
	}, 5*time.Second, 20*time.Millisecond, "ingest logs which call was refused and what to check")
}
