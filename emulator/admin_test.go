package emulator_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/emulator"
)

func TestAdminAPI(t *testing.T) {
	t.Parallel()
	rcv := newReceiver(t)
	emu, base := startEmu(t, emulator.Config{WhoopWebhookURL: rcv.srv.URL})
	admin := base + "/_admin"

	status, b := adminDo(t, http.MethodPost, admin+"/users", `{"name":"carol","utc_offset_minutes":60}`)
	require.Equal(t, http.StatusCreated, status, string(b))
	user := decode[emulator.User](t, b)
	require.Equal(t, "+01:00", user.UTCOffset)
	require.NotZero(t, user.WhoopUserID)

	status, b = adminDo(t, http.MethodPost, admin+"/records",
		`{"user":"carol","vendor":"whoop","type":"sleep","score_state":"PENDING_SCORE","values":{"recovery_score":77}}`)
	require.Equal(t, http.StatusCreated, status, string(b))
	recs := decode[[]emulator.Record](t, b)
	require.Len(t, recs, 3)
	sleepID := recs[0].ID

	for _, tc := range []struct {
		name, method, path, body string
		want                     int
	}{
		{"unknown user", http.MethodPost, "/records", `{"user":"nobody","vendor":"whoop","type":"sleep"}`, http.StatusNotFound},
		{"unknown field is a typo", http.MethodPost, "/records", `{"user":"carol","vendor":"whoop","typ":"sleep"}`, http.StatusBadRequest},
		{"unknown value", http.MethodPost, "/records", `{"user":"carol","vendor":"whoop","type":"sleep","values":{"recovery":1}}`, http.StatusBadRequest},
		{"unknown type", http.MethodPost, "/records", `{"user":"carol","vendor":"oura","type":"steps"}`, http.StatusBadRequest},
		{"bad user name", http.MethodPost, "/users", `{"name":"a b"}`, http.StatusBadRequest},
		{"bad fault", http.MethodPut, "/faults", `{"error_rate":1.5}`, http.StatusBadRequest},
		{"score", http.MethodPost, "/records/whoop/recovery/" + sleepID + "/score", ``, http.StatusOK},
		{"update", http.MethodPatch, "/records/whoop/recovery/" + sleepID, `{"values":{"recovery_score":80}}`, http.StatusOK},
		{"update unknown record", http.MethodPatch, "/records/whoop/sleep/nope", `{"values":{}}`, http.StatusNotFound},
		{"history", http.MethodPost, "/history", `{"user":"carol","days":3,"vendors":["oura"]}`, http.StatusOK},
		{"history days", http.MethodPost, "/history", `{"user":"carol","days":0}`, http.StatusBadRequest},
		{"expire tokens", http.MethodPost, "/tokens/expire", `{"vendor":"whoop"}`, http.StatusOK},
		{"revoke grants", http.MethodPost, "/grants/revoke", `{}`, http.StatusOK},
		{"wait", http.MethodPost, "/webhooks/wait", `{"timeout":"5s"}`, http.StatusNoContent},
		{"demo tick", http.MethodPost, "/demo/tick", ``, http.StatusOK},
		{"verify without url", http.MethodPost, "/oura/verify", `{}`, http.StatusBadRequest},
		{"no such route", http.MethodGet, "/nope", ``, http.StatusNotFound},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, b := adminDo(t, tc.method, admin+tc.path, tc.body)
			require.Equal(t, tc.want, status, string(b))
		})
	}

	status, b = adminDo(t, http.MethodPut, admin+"/faults", `{"latency":"5ms","webhook_duplicate_rate":0.25}`)
	require.Equal(t, http.StatusOK, status, string(b))
	require.Equal(t, emulator.Faults{Latency: 5 * time.Millisecond, WebhookDuplicateRate: 0.25}, emu.Faults())
	status, b = adminDo(t, http.MethodGet, admin+"/faults", ``)
	require.Equal(t, http.StatusOK, status)
	require.Contains(t, string(b), `"latency":"5ms"`)
	require.NoError(t, emu.SetFaults(emulator.Faults{}))

	status, b = adminDo(t, http.MethodGet, admin+"/records?"+url.Values{"user": {"carol"}, "type": {"recovery"}}.Encode(), ``)
	require.Equal(t, http.StatusOK, status)
	listed := decode[[]emulator.Record](t, b)
	require.Len(t, listed, 1)
	var rec struct {
		ScoreState string `json:"score_state"`
		Score      struct {
			RecoveryScore float64 `json:"recovery_score"`
		} `json:"score"`
	}
	require.NoError(t, json.Unmarshal(listed[0].Data, &rec))
	require.Equal(t, emulator.ScoreStateScored, rec.ScoreState)
	require.InDelta(t, 80, rec.Score.RecoveryScore, 0)

	status, _ = adminDo(t, http.MethodDelete, admin+"/records/whoop/sleep/"+sleepID, ``)
	require.Equal(t, http.StatusNoContent, status)
	status, _ = adminDo(t, http.MethodPost, admin+"/webhooks/wait", ``)
	require.Equal(t, http.StatusNoContent, status)

	status, b = adminDo(t, http.MethodGet, admin+"/counters", ``)
	require.Equal(t, http.StatusOK, status)
	c := decode[emulator.Counters](t, b)
	// created (2) + scored (2) + updated (1) + deleted (2)
	require.EqualValues(t, 7, c.Whoop.WebhooksDelivered)
	require.Len(t, rcv.posts(), 7)

	status, _ = adminDo(t, http.MethodPost, admin+"/counters/reset", ``)
	require.Equal(t, http.StatusNoContent, status)
	require.Zero(t, emu.Counters().Whoop.WebhooksDelivered)

	status, b = adminDo(t, http.MethodGet, admin+"/health", ``)
	require.Equal(t, http.StatusOK, status)
	require.Contains(t, string(b), `"seed":1`)
}

func TestCountersCountEveryCallByEndpoint(t *testing.T) {
	t.Parallel()
	emu, base := startEmu(t, emulator.Config{})
	tk := connect(t, base, emulator.Whoop, "alice")
	otk := connect(t, base, emulator.Oura, "alice")
	recs, err := emu.CreateRecord(context.Background(), emulator.RecordSpec{User: "alice", Vendor: emulator.Whoop, Type: "sleep"})
	require.NoError(t, err)
	w := base + "/whoop/developer/v2"
	for range 3 {
		apiGet(t, w+"/activity/sleep/"+recs[0].ID, tk.AccessToken)
	}
	apiGet(t, w+"/activity/sleep/"+recs[0].ID, "bogus")
	apiGet(t, w+"/cycle/"+recs[2].ID+"/recovery", tk.AccessToken)
	apiGet(t, w+"/cycle", tk.AccessToken)
	for range 2 {
		apiGet(t, base+"/oura/v2/usercollection/daily_readiness", otk.AccessToken)
	}
	status, _ := refresh(t, base, emulator.Whoop, tk.RefreshToken)
	require.Equal(t, http.StatusOK, status)

	c := emu.Counters()
	require.Equal(t, map[string]int64{
		"GET /v2/activity/sleep/{id}": 4,
		"GET /v2/cycle/{id}/recovery": 1,
		"GET /v2/cycle":               1,
	}, c.Whoop.APICalls)
	require.EqualValues(t, 6, c.Whoop.APICallsTotal)
	require.EqualValues(t, 1, c.Whoop.Unauthorized)
	require.Equal(t, map[string]int64{"GET /v2/usercollection/{data_type}": 2}, c.Oura.APICalls)
	require.EqualValues(t, 1, c.Whoop.TokensIssued)
	require.EqualValues(t, 1, c.Whoop.TokenRefreshes)
	require.EqualValues(t, 2, c.Whoop.TokenRequests)
	require.EqualValues(t, 1, c.Oura.TokensIssued)
	require.EqualValues(t, 6, c.Whoop.MaxRequestsInWindow)
	require.EqualValues(t, 2, c.Oura.MaxRequestsInWindow)
}

// snapshot runs the same script against an emulator and returns everything
// observable: the tokens it issued and every record it served.
func snapshot(t *testing.T, seed uint64) string {
	t.Helper()
	clock := newFakeClock()
	emu, base := startEmu(t, emulator.Config{Seed: seed, Now: clock.Now, Faults: emulator.Faults{ErrorRate: 0.3}})
	var out strings.Builder
	for _, name := range []string{"alice", "bob"} {
		_, err := emu.AddUser(emulator.UserSpec{Name: name})
		require.NoError(t, err)
		_, err = emu.GenerateHistory(context.Background(), emulator.HistorySpec{User: name, Days: 7})
		require.NoError(t, err)
		tk := connect(t, base, emulator.Whoop, name)
		fmt.Fprintln(&out, tk.AccessToken, tk.RefreshToken)
		for range 20 {
			resp, _ := apiGet(t, base+"/whoop/developer/v2/cycle?limit=1", tk.AccessToken)
			fmt.Fprint(&out, resp.StatusCode, " ")
		}
	}
	_, err := emu.CreateRecord(context.Background(), emulator.RecordSpec{User: "bob", Vendor: emulator.Whoop, Type: "workout"})
	require.NoError(t, err)
	b, err := json.Marshal(emu.ListRecords(emulator.RecordFilter{}))
	require.NoError(t, err)
	out.Write(b)
	b, err = json.Marshal(emu.Users())
	require.NoError(t, err)
	out.Write(b)
	return out.String()
}

func TestSameSeedSameRun(t *testing.T) {
	t.Parallel()
	a, b, other := snapshot(t, 42), snapshot(t, 42), snapshot(t, 43)
	require.Equal(t, a, b)
	require.NotEqual(t, a, other)
	require.Contains(t, a, "500", "the injected errors are part of the replay")
}

func TestRandomSeedIsReported(t *testing.T) {
	t.Parallel()
	emu, err := emulator.New(emulator.Config{}, nil)
	require.NoError(t, err)
	t.Cleanup(func() { require.NoError(t, emu.Close(context.Background())) })
	require.NotZero(t, emu.Seed())
}

func TestDemoProducesDataForConnectedUsersOnly(t *testing.T) {
	t.Parallel()
	rcv := newReceiver(t)
	emu, base := startEmu(t, emulator.Config{WhoopWebhookURL: rcv.srv.URL, OuraWebhookURL: rcv.srv.URL})
	_, err := emu.AddUser(emulator.UserSpec{Name: "idle"})
	require.NoError(t, err)
	connect(t, base, emulator.Whoop, "alice")
	connect(t, base, emulator.Oura, "alice")

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- emu.RunDemo(ctx, 20*time.Millisecond) }()
	require.Eventually(t, func() bool {
		return len(emu.ListRecords(emulator.RecordFilter{User: "alice", Type: "daily_readiness"})) == 1 &&
			emu.Counters().Oura.WebhooksDelivered >= 8 // 4 creates, then updates
	}, 10*time.Second, 10*time.Millisecond)
	cancel()
	require.NoError(t, <-done)
	require.Empty(t, emu.ListRecords(emulator.RecordFilter{User: "idle"}))
	require.NotEmpty(t, emu.ListRecords(emulator.RecordFilter{User: "alice", Vendor: emulator.Whoop, Type: "recovery"}))
	waitHooks(t, emu)
	var updates int
	for _, p := range rcv.posts() {
		if p.header.Get("x-oura-signature") != "" && decode[ouraHook](t, p.body).EventType == "update" {
			updates++
		}
	}
	require.Positive(t, updates, "later rounds update today's documents")
}

func TestConfigValidationReportsEveryProblem(t *testing.T) {
	t.Parallel()
	_, err := emulator.New(emulator.Config{
		WhoopWebhookURL: "not a url", AccessTokenTTL: -time.Second, Faults: emulator.Faults{ErrorRate: 3},
	}, nil)
	require.Error(t, err)
	for _, want := range []string{"WhoopWebhookURL", "AccessTokenTTL", "ErrorRate"} {
		require.ErrorContains(t, err, want)
	}

	env := map[string]string{
		"VENDOREMU_SEED": "x", "VENDOREMU_ACCESS_TOKEN_TTL": "soon", "VENDOREMU_OURA_WEBHOOK_URL": "ftp://x",
	}
	_, err = emulator.ConfigFromEnv(func(k string) string { return env[k] })
	for _, want := range []string{"VENDOREMU_SEED", "VENDOREMU_ACCESS_TOKEN_TTL", "VENDOREMU_OURA_WEBHOOK_URL"} {
		require.ErrorContains(t, err, want)
	}

	env = map[string]string{"PUBLIC_BASE_URL": "http://127.0.0.1:8080/", "WHOOP_CLIENT_ID": "id", "VENDOREMU_WEBHOOK_RETRY_DELAYS": "1s, 2s"}
	cfg, err := emulator.ConfigFromEnv(func(k string) string { return env[k] })
	require.NoError(t, err)
	require.Equal(t, "http://127.0.0.1:8080/v1/webhooks/whoop", cfg.WhoopWebhookURL)
	require.Equal(t, "http://127.0.0.1:8080/v1/webhooks/oura", cfg.OuraWebhookURL)
	require.Equal(t, "id", cfg.WhoopClientID)
	require.Equal(t, []time.Duration{time.Second, 2 * time.Second}, cfg.WebhookRetryDelays)
}

func TestStartServesOnARealPort(t *testing.T) {
	t.Parallel()
	emu, err := emulator.New(emulator.Config{Seed: 1}, nil)
	require.NoError(t, err)
	require.NoError(t, emu.Start("127.0.0.1:0"))
	t.Cleanup(func() { require.NoError(t, emu.Close(context.Background())) })
	require.True(t, strings.HasPrefix(emu.WhoopURL(), "http://127.0.0.1:"))
	status, _ := adminDo(t, http.MethodGet, emu.BaseURL()+"/_admin/health", ``)
	require.Equal(t, http.StatusOK, status)
	code, err := emu.Authorize(context.Background(), emulator.Oura, "dave", "http://app.test/cb", "daily personal", "s")
	require.NoError(t, err)
	form := creds(emulator.Oura)
	form.Set("grant_type", "authorization_code")
	form.Set("code", code)
	form.Set("redirect_uri", "http://app.test/cb")
	status, tk := postToken(t, emu.BaseURL(), emulator.Oura, form)
	require.Equal(t, http.StatusOK, status, tk.Error)
	require.Equal(t, "daily personal", tk.Scope)
}

// TestCloseDoesNotWaitForSilentConnections: a connection that never sent a
// request (a client transport's spare dial) does not hold Close. net/http's
// Shutdown treats such a connection as busy for 5 s, which made stack
// shutdowns in tests miss their deadline.
func TestCloseDoesNotWaitForSilentConnections(t *testing.T) {
	t.Parallel()
	emu, err := emulator.New(emulator.Config{Seed: 1}, nil)
	require.NoError(t, err)
	require.NoError(t, emu.Start("127.0.0.1:0"))
	conn, err := net.Dial("tcp", emu.Addr())
	require.NoError(t, err)
	t.Cleanup(func() { _ = conn.Close() })
	// A request on another connection proves the silent one was accepted.
	status, _ := adminDo(t, http.MethodGet, emu.BaseURL()+"/_admin/health", ``)
	require.Equal(t, http.StatusOK, status)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	require.NoError(t, emu.Close(ctx))
}
