package e2e

import (
	"bytes"
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/emulator"
	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	ingestv1 "github.com/biobridge/bridge/gen/go/biobridge/ingest/v1"
	"github.com/biobridge/bridge/services/devstack/internal/vendorrecords"
)

// tokenEdgeEnv keeps everything but live webhooks out of the way (no
// backfill, no reconciliation: only the webhooks' own jobs can bring the
// data) and lifts the rate limits, which are not what these tests measure.
var tokenEdgeEnv = map[string]string{
	"INGEST_BACKFILL_DAYS":            "0",
	"INGEST_RECONCILE_INTERVAL":       "0",
	"INGEST_CONNECTION_SYNC_INTERVAL": "200ms",
	"TOKENBROKER_RELAY_INTERVAL":      "200ms",
	"WHOOP_RATE_LIMIT":                "100000",
}

var unlimitedEmulator = emulator.Config{WhoopRateLimit: -1, WhoopDailyLimit: -1, OuraRateLimit: -1}

// jobStates counts the webhook jobs by state, and the most attempts any
// of them took.
func (w *world) jobStates() (map[int]int, int) {
	w.t.Helper()
	rows, err := w.db.Query(context.Background(), `SELECT state, count(*), max(attempts) FROM ingest.jobs WHERE kind = 'webhook' GROUP BY state`)
	require.NoError(w.t, err)
	defer rows.Close()
	out := map[int]int{}
	most := 0
	for rows.Next() {
		var state, n, attempts int
		require.NoError(w.t, rows.Scan(&state, &n, &attempts))
		out[state] = n
		most = max(most, attempts)
	}
	require.NoError(w.t, rows.Err())
	return out, most
}

// workouts creates n workouts for emuUser at the emulator, each announced
// by its own webhook.
func (w *world) workouts(emuUser string, n int) {
	w.t.Helper()
	end := time.Now().UTC().Add(-time.Hour).Truncate(time.Second)
	for i := range n {
		at := end.Add(-time.Duration(i) * 2 * time.Hour)
		_, err := w.s.Emulator.CreateRecord(context.Background(), emulator.RecordSpec{User: emuUser, Vendor: emulator.Whoop,
			Type: "workout", Start: at.Add(-45 * time.Minute), End: at, SportName: "running"})
		require.NoError(w.t, err)
	}
}

// TestRejectedAccessTokensRefreshOnce: the vendor invalidates the user's
// access tokens early (a password change); then 50 webhooks for the user
// arrive at once through the gateway. Every record is stored, with one
// refresh at the vendor, no refresh token presented twice, no job dead, and
// no job spending an attempt on the rejected token.
func TestRejectedAccessTokensRefreshOnce(t *testing.T) {
	w := startWorld(t, tokenEdgeEnv, unlimitedEmulator)
	w.connect("rita", "whoop", "rita")
	require.Equal(t, 1, w.s.Emulator.ExpireAccessTokens(emulator.Whoop, "rita"))
	before := w.s.Emulator.Counters().Whoop

	w.workouts("rita", 50)
	want := vendorrecords.Expected(w.s.Emulator, "rita")
	require.Len(t, want, 50)
	require.Eventually(t, func() bool {
		got, _ := w.stored("rita")
		return len(got) == len(want)
	}, 60*time.Second, 100*time.Millisecond)
	got, _ := w.stored("rita")
	require.Equal(t, want, got, "every acknowledged record is stored")

	after := w.s.Emulator.Counters().Whoop
	assert.EqualValues(t, 1, after.TokenRefreshes-before.TokenRefreshes, "refreshes at the vendor")
	assert.Zero(t, after.RefreshTokenReuseViolations, "refresh token reuse violations")
	// A record is stored once persistence acknowledged it; its job is
	// marked done after that acknowledgment.
	require.Eventually(t, func() bool { st, _ := w.jobStates(); return st[3] == 50 }, 20*time.Second, 50*time.Millisecond)
	states, attempts := w.jobStates()
	assert.Equal(t, map[int]int{3: 50}, states, "all 50 webhook jobs done, none dead")
	assert.Equal(t, 1, attempts, "a rejected token costs no attempt")
	assert.Equal(t, "CONNECTION_STATUS_ACTIVE", w.connections("rita")["whoop"].Status)
}

// TestRevokedGrantParksJobsUntilReconnect: the user's grant is revoked at
// the vendor; the webhooks that follow cannot be fetched. The connection
// becomes broken (refresh_failed on biometrics.connections.v1) and the jobs
// are parked, visible with their reason, not burned to dead. When the user
// reconnects through the OAuth flow, every parked record arrives.
func TestRevokedGrantParksJobsUntilReconnect(t *testing.T) {
	w := startWorld(t, tokenEdgeEnv, unlimitedEmulator)
	events := w.consumeConnectionEvents()
	w.connect("pat", "whoop", "pat")
	res, err := http.Post(w.s.Emulator.BaseURL()+"/_admin/grants/revoke", "application/json",
		bytes.NewReader(mustJSON(t, map[string]string{"vendor": "whoop", "user": "pat"})))
	require.NoError(t, err)
	require.NoError(t, res.Body.Close())
	require.Equal(t, http.StatusOK, res.StatusCode)

	w.workouts("pat", 4)
	end := time.Now().UTC().Add(-3 * time.Hour)
	_, err = w.s.Emulator.CreateRecord(context.Background(), emulator.RecordSpec{User: "pat", Vendor: emulator.Whoop, Type: "sleep",
		Start: end.Add(-8 * time.Hour), End: end})
	require.NoError(t, err)
	want := vendorrecords.Expected(w.s.Emulator, "pat")
	require.GreaterOrEqual(t, len(want), 5)

	var parked *ingestv1.ListJobsResponse
	require.Eventually(t, func() bool {
		parked, err = w.ingest.ListJobs(w.svc(), &ingestv1.ListJobsRequest{State: ingestv1.JobState_JOB_STATE_PARKED})
		require.NoError(t, err)
		return len(parked.GetJobs()) == len(want)
	}, 30*time.Second, 100*time.Millisecond, "jobs never parked")
	for _, j := range parked.GetJobs() {
		assert.True(t, strings.HasPrefix(j.GetLastError(), "connection_broken"), "reason shown: %q", j.GetLastError())
	}
	states, _ := w.jobStates()
	assert.Zero(t, states[4], "no job dead")
	assert.Equal(t, "CONNECTION_STATUS_BROKEN", w.connections("pat")["whoop"].Status)
	refreshFailed := biometricsv1.ConnectionEventType_CONNECTION_EVENT_TYPE_REFRESH_FAILED
	require.Eventually(t, func() bool { return count(events.types("pat", "whoop"), refreshFailed) == 1 }, 20*time.Second, 50*time.Millisecond,
		"no refresh_failed event; saw %v", events.types("pat", "whoop"))
	stored, _ := w.stored("pat")
	require.Empty(t, stored)

	// The user reconnects: a new generation of the connection.
	w.connect("pat", "whoop", "pat")
	require.Eventually(t, func() bool {
		got, _ := w.stored("pat")
		return len(got) == len(want)
	}, 30*time.Second, 100*time.Millisecond)
	got, _ := w.stored("pat")
	require.Equal(t, want, got, "every parked record arrived")
	require.Eventually(t, func() bool { st, _ := w.jobStates(); return st[3] == len(want) }, 20*time.Second, 50*time.Millisecond)
	states, _ = w.jobStates()
	assert.Equal(t, map[int]int{3: len(want)}, states)
	assert.Equal(t, "CONNECTION_STATUS_ACTIVE", w.connections("pat")["whoop"].Status)
	assert.Zero(t, w.s.Emulator.Counters().Whoop.RefreshTokenReuseViolations)
}
