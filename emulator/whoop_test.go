package emulator_test

import (
	"context"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/emulator"
)

type whoopSleepDoc struct {
	ID         string `json:"id"`
	CycleID    int64  `json:"cycle_id"`
	UserID     int64  `json:"user_id"`
	Nap        bool   `json:"nap"`
	ScoreState string `json:"score_state"`
	Score      *struct {
		StageSummary struct {
			TotalInBedTimeMilli int64 `json:"total_in_bed_time_milli"`
		} `json:"stage_summary"`
		RespiratoryRate float64 `json:"respiratory_rate"`
	} `json:"score"`
}

type whoopRecoveryDoc struct {
	CycleID    int64  `json:"cycle_id"`
	SleepID    string `json:"sleep_id"`
	UserID     int64  `json:"user_id"`
	ScoreState string `json:"score_state"`
	Score      *struct {
		RecoveryScore    float64 `json:"recovery_score"`
		RestingHeartRate float64 `json:"resting_heart_rate"`
		HrvRmssdMilli    float64 `json:"hrv_rmssd_milli"`
		Spo2Percentage   float64 `json:"spo2_percentage"`
		SkinTempCelsius  float64 `json:"skin_temp_celsius"`
	} `json:"score"`
}

type whoopPage[T any] struct {
	Records   []T     `json:"records"`
	NextToken *string `json:"next_token"`
}

// followRecovery does what ingest must do for recovery.updated: the id is a
// sleep; the sleep names the cycle; the cycle has the recovery.
func followRecovery(t *testing.T, base, token, sleepID string) (int, whoopRecoveryDoc) {
	t.Helper()
	resp, b := apiGet(t, base+"/whoop/developer/v2/activity/sleep/"+sleepID, token)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(b))
	sleep := decode[whoopSleepDoc](t, b)
	resp, b = apiGet(t, fmt.Sprintf("%s/whoop/developer/v2/cycle/%d/recovery", base, sleep.CycleID), token)
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, whoopRecoveryDoc{}
	}
	return resp.StatusCode, decode[whoopRecoveryDoc](t, b)
}

func TestRecoveryWebhookCarriesTheSleepID(t *testing.T) {
	t.Parallel()
	rcv := newReceiver(t)
	emu, base := startEmu(t, emulator.Config{WhoopWebhookURL: rcv.srv.URL})
	tk := connect(t, base, emulator.Whoop, "alice")
	recs, err := emu.CreateRecord(context.Background(), emulator.RecordSpec{
		User: "alice", Vendor: emulator.Whoop, Type: "sleep",
		Values: map[string]float64{"recovery_score": 87, "hrv_rmssd_milli": 61.5, "respiratory_rate": 15.2},
	})
	require.NoError(t, err)
	require.Len(t, recs, 3)
	sleepID := recs[0].ID
	waitHooks(t, emu)

	hooks := map[string]whoopHook{}
	for _, p := range rcv.posts() {
		h := decode[whoopHook](t, p.body)
		hooks[h.Type] = h
	}
	require.Equal(t, sleepID, hooks["sleep.updated"].ID)
	require.Equal(t, sleepID, hooks["recovery.updated"].ID, "v2 quirk: recovery webhooks carry the sleep id")
	require.NotEqual(t, hooks["sleep.updated"].TraceID, hooks["recovery.updated"].TraceID)

	status, rec := followRecovery(t, base, tk.AccessToken, sleepID)
	require.Equal(t, http.StatusOK, status)
	require.Equal(t, sleepID, rec.SleepID)
	require.Equal(t, emulator.ScoreStateScored, rec.ScoreState)
	require.InDelta(t, 87, rec.Score.RecoveryScore, 0)
	require.InDelta(t, 61.5, rec.Score.HrvRmssdMilli, 0)

	// There is no recovery-by-id endpoint.
	resp, _ := apiGet(t, base+"/whoop/developer/v2/recovery/"+sleepID, tk.AccessToken)
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
}

func TestPendingScoreBecomesScored(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name       string
		scoreDelay time.Duration
	}{
		{"by ScoreRecord", 0},
		{"after ScoreDelay", 30 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rcv := newReceiver(t)
			emu, base := startEmu(t, emulator.Config{WhoopWebhookURL: rcv.srv.URL, ScoreDelay: tc.scoreDelay})
			tk := connect(t, base, emulator.Whoop, "alice")
			recs, err := emu.CreateRecord(context.Background(), emulator.RecordSpec{
				User: "alice", Vendor: emulator.Whoop, Type: "sleep", ScoreState: emulator.ScoreStatePending,
				Values: map[string]float64{"recovery_score": 42},
			})
			require.NoError(t, err)
			sleepID := recs[0].ID

			if tc.scoreDelay == 0 {
				waitHooks(t, emu)
				status, rec := followRecovery(t, base, tk.AccessToken, sleepID)
				require.Equal(t, http.StatusOK, status)
				require.Equal(t, emulator.ScoreStatePending, rec.ScoreState)
				require.Nil(t, rec.Score, "pending records are served without a score")
				_, err := emu.ScoreRecord(context.Background(), "recovery", sleepID)
				require.NoError(t, err)
			}
			require.Eventually(t, func() bool {
				_, rec := followRecovery(t, base, tk.AccessToken, sleepID)
				return rec.ScoreState == emulator.ScoreStateScored
			}, 5*time.Second, 10*time.Millisecond)
			waitHooks(t, emu)

			_, rec := followRecovery(t, base, tk.AccessToken, sleepID)
			require.NotNil(t, rec.Score)
			require.InDelta(t, 42, rec.Score.RecoveryScore, 0)
			var recoveryHooks int
			for _, p := range rcv.posts() {
				if h := decode[whoopHook](t, p.body); h.Type == "recovery.updated" {
					require.Equal(t, sleepID, h.ID)
					recoveryHooks++
				}
			}
			require.Equal(t, 2, recoveryHooks, "one when created pending, one when scored")

			// Scoring again is a no-op without a webhook.
			_, err = emu.ScoreRecord(context.Background(), "sleep", sleepID)
			require.NoError(t, err)
			waitHooks(t, emu)
			require.Len(t, rcv.posts(), 4)
		})
	}
}

func TestWhoopCollectionsPageNewestFirst(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	emu, base := startEmu(t, emulator.Config{Now: clock.Now})
	tk := connect(t, base, emulator.Whoop, "alice")
	res, err := emu.GenerateHistory(context.Background(), emulator.HistorySpec{User: "alice", Days: 30, Vendors: []emulator.Vendor{emulator.Whoop}})
	require.NoError(t, err)
	require.Equal(t, 30, res.Records["whoop/sleep"])

	for _, tc := range []struct {
		path string
		want int
	}{
		{"/cycle", res.Records["whoop/cycle"]},
		{"/recovery", res.Records["whoop/recovery"]},
		{"/activity/sleep", res.Records["whoop/sleep"]},
		{"/activity/workout", res.Records["whoop/workout"]},
	} {
		t.Run(tc.path, func(t *testing.T) {
			seen := map[string]bool{}
			token := ""
			pages := 0
			var prevStart time.Time
			for {
				q := url.Values{"limit": {"7"}}
				if token != "" {
					q.Set("nextToken", token)
				}
				resp, b := apiGet(t, base+"/whoop/developer/v2"+tc.path+"?"+q.Encode(), tk.AccessToken)
				require.Equal(t, http.StatusOK, resp.StatusCode, string(b))
				page := decode[whoopPage[map[string]any]](t, b)
				require.LessOrEqual(t, len(page.Records), 7)
				for _, r := range page.Records {
					key := fmt.Sprint(r["id"], r["cycle_id"])
					require.False(t, seen[key], "record served twice")
					seen[key] = true
					if s, ok := r["start"].(string); ok {
						st, err := time.Parse(time.RFC3339Nano, s)
						require.NoError(t, err)
						if !prevStart.IsZero() {
							require.False(t, st.After(prevStart), "newest first")
						}
						prevStart = st
					}
				}
				pages++
				if page.NextToken == nil {
					break
				}
				token = *page.NextToken
			}
			require.Len(t, seen, tc.want)
			require.Equal(t, (tc.want+6)/7, max(pages, 1))
		})
	}

	t.Run("start and end bound the range", func(t *testing.T) {
		start := clock.Now().Add(-72 * time.Hour).Format(time.RFC3339)
		resp, b := apiGet(t, base+"/whoop/developer/v2/activity/sleep?limit=25&start="+url.QueryEscape(start), tk.AccessToken)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		page := decode[whoopPage[whoopSleepDoc]](t, b)
		require.Len(t, page.Records, 3, "the last three nights")
	})
	t.Run("limit above 25 is rejected", func(t *testing.T) {
		resp, _ := apiGet(t, base+"/whoop/developer/v2/cycle?limit=26", tk.AccessToken)
		require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	})
	t.Run("another user's record is not found", func(t *testing.T) {
		bob := connect(t, base, emulator.Whoop, "bob")
		recs := emu.ListRecords(emulator.RecordFilter{User: "alice", Vendor: emulator.Whoop, Type: "sleep"})
		resp, _ := apiGet(t, base+"/whoop/developer/v2/activity/sleep/"+recs[0].ID, bob.AccessToken)
		require.Equal(t, http.StatusNotFound, resp.StatusCode)
	})
}

func TestWhoopCyclesChain(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	emu, base := startEmu(t, emulator.Config{Now: clock.Now})
	tk := connect(t, base, emulator.Whoop, "alice")
	_, err := emu.GenerateHistory(context.Background(), emulator.HistorySpec{User: "alice", Days: 5, Vendors: []emulator.Vendor{emulator.Whoop}})
	require.NoError(t, err)
	resp, b := apiGet(t, base+"/whoop/developer/v2/cycle?limit=25", tk.AccessToken)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	type cycle struct {
		ID    int64      `json:"id"`
		Start time.Time  `json:"start"`
		End   *time.Time `json:"end"`
	}
	cycles := decode[whoopPage[cycle]](t, b).Records
	require.Len(t, cycles, 5)
	require.Nil(t, cycles[0].End, "the current cycle is open")
	for i := 1; i < len(cycles); i++ {
		require.NotNil(t, cycles[i].End)
		require.True(t, cycles[i].End.Equal(cycles[i-1].Start), "a cycle ends when the next begins")
	}
	// Each cycle's sleep and recovery agree on ids.
	for _, c := range cycles {
		resp, b := apiGet(t, base+"/whoop/developer/v2/cycle/"+strconv.FormatInt(c.ID, 10)+"/sleep", tk.AccessToken)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		s := decode[whoopSleepDoc](t, b)
		require.Equal(t, c.ID, s.CycleID)
		status, rec := followRecovery(t, base, tk.AccessToken, s.ID)
		require.Equal(t, http.StatusOK, status)
		require.Equal(t, s.ID, rec.SleepID)
	}
}

func TestWhoopDeleteSendsDeleteWebhooks(t *testing.T) {
	t.Parallel()
	rcv := newReceiver(t)
	emu, base := startEmu(t, emulator.Config{WhoopWebhookURL: rcv.srv.URL})
	tk := connect(t, base, emulator.Whoop, "alice")
	recs, err := emu.CreateRecord(context.Background(), emulator.RecordSpec{User: "alice", Vendor: emulator.Whoop, Type: "sleep"})
	require.NoError(t, err)
	sleepID := recs[0].ID
	require.NoError(t, emu.DeleteRecord(context.Background(), emulator.Whoop, "sleep", sleepID))
	waitHooks(t, emu)
	var types []string
	for _, p := range rcv.posts() {
		h := decode[whoopHook](t, p.body)
		require.Equal(t, sleepID, h.ID)
		types = append(types, h.Type)
	}
	require.ElementsMatch(t, []string{"sleep.updated", "recovery.updated", "sleep.deleted", "recovery.deleted"}, types)
	resp, _ := apiGet(t, base+"/whoop/developer/v2/activity/sleep/"+sleepID, tk.AccessToken)
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	require.ErrorIs(t, emu.DeleteRecord(context.Background(), emulator.Whoop, "sleep", sleepID), emulator.ErrNotFound)
}

func TestWhoopRateLimitSends429WithVendorHeaders(t *testing.T) {
	t.Parallel()
	emu, base := startEmu(t, emulator.Config{WhoopRateLimit: 3})
	tk := connect(t, base, emulator.Whoop, "alice")
	profile := base + "/whoop/developer/v2/user/profile/basic"
	for i := range 3 {
		resp, _ := apiGet(t, profile, tk.AccessToken)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, "3, 3;window=60, 10000;window=86400", resp.Header.Get("X-RateLimit-Limit"))
		require.Equal(t, strconv.Itoa(2-i), resp.Header.Get("X-RateLimit-Remaining"))
	}
	resp, _ := apiGet(t, profile, tk.AccessToken)
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	require.Equal(t, "0", resp.Header.Get("X-RateLimit-Remaining"))
	reset, err := strconv.Atoi(resp.Header.Get("X-RateLimit-Reset"))
	require.NoError(t, err)
	require.True(t, reset >= 1 && reset <= 60, "reset %d", reset)

	// The limit is per app: another user's token is throttled too.
	bob := connect(t, base, emulator.Whoop, "bob")
	resp, _ = apiGet(t, profile, bob.AccessToken)
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)

	c := emu.Counters().Whoop
	require.EqualValues(t, 2, c.RateLimited)
	require.EqualValues(t, 5, c.MaxRequestsInWindow)
	require.EqualValues(t, 5, c.APICalls["GET /v2/user/profile/basic"])

	// Raising the budget at runtime lets requests through again.
	require.NoError(t, emu.SetFaults(emulator.Faults{WhoopRateLimit: 10}))
	resp, _ = apiGet(t, profile, tk.AccessToken)
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "10, 10;window=60, 10000;window=86400", resp.Header.Get("X-RateLimit-Limit"))
}

func TestInjectedFaults(t *testing.T) {
	t.Parallel()
	emu, base := startEmu(t, emulator.Config{})
	tk := connect(t, base, emulator.Whoop, "alice")
	otk := connect(t, base, emulator.Oura, "alice")
	whoopURL := base + "/whoop/developer/v2/user/profile/basic"
	ouraURL := base + "/oura/v2/usercollection/personal_info"

	require.NoError(t, emu.SetFaults(emulator.Faults{RateLimitRate: 1}))
	resp, _ := apiGet(t, whoopURL, tk.AccessToken)
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	require.NotEmpty(t, resp.Header.Get("X-RateLimit-Limit"))
	require.Equal(t, "0", resp.Header.Get("X-RateLimit-Remaining"))
	require.NotEmpty(t, resp.Header.Get("X-RateLimit-Reset"))
	resp, _ = apiGet(t, ouraURL, otk.AccessToken)
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	require.NotEmpty(t, resp.Header.Get("Retry-After"))

	require.NoError(t, emu.SetFaults(emulator.Faults{ErrorRate: 1}))
	resp, _ = apiGet(t, whoopURL, tk.AccessToken)
	require.Equal(t, http.StatusInternalServerError, resp.StatusCode)

	// Half the requests fail, reproducibly for a seed.
	require.NoError(t, emu.SetFaults(emulator.Faults{ErrorRate: 0.5}))
	var fails int
	for range 200 {
		resp, _ := apiGet(t, ouraURL, otk.AccessToken)
		if resp.StatusCode == http.StatusInternalServerError {
			fails++
		}
	}
	require.InDelta(t, 100, fails, 30)

	// The next two fail whatever the rates say, then the rates apply
	// again (none here).
	require.NoError(t, emu.SetFaults(emulator.Faults{ErrorsNext: 2}))
	for i, want := range []int{http.StatusInternalServerError, http.StatusInternalServerError, http.StatusOK, http.StatusOK} {
		resp, _ := apiGet(t, whoopURL, tk.AccessToken)
		require.Equal(t, want, resp.StatusCode, "request %d", i)
	}
	require.Zero(t, emu.Faults().ErrorsNext, "counted down")

	require.NoError(t, emu.SetFaults(emulator.Faults{}))
	c := emu.Counters()
	require.EqualValues(t, 1, c.Whoop.InjectedRateLimited)
	require.EqualValues(t, 1, c.Oura.InjectedRateLimited)
	require.EqualValues(t, 3, c.Whoop.InjectedErrors)
	require.EqualValues(t, fails, c.Oura.InjectedErrors)
	require.ErrorIs(t, emu.SetFaults(emulator.Faults{ErrorsNext: -1}), emulator.ErrInvalid)
	require.ErrorIs(t, emu.SetFaults(emulator.Faults{ErrorRate: 2}), emulator.ErrInvalid)
}

func TestWhoopRevokeEndsAccess(t *testing.T) {
	t.Parallel()
	emu, base := startEmu(t, emulator.Config{})
	tk := connect(t, base, emulator.Whoop, "alice")
	require.True(t, emu.Users()[0].WhoopConnected)
	req, err := http.NewRequest(http.MethodDelete, base+"/whoop/developer/v2/user/access", nil)
	require.NoError(t, err)
	req.Header.Set("Authorization", "Bearer "+tk.AccessToken)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	require.Equal(t, http.StatusNoContent, resp.StatusCode)
	resp, _ = apiGet(t, base+"/whoop/developer/v2/user/profile/basic", tk.AccessToken)
	require.Equal(t, http.StatusUnauthorized, resp.StatusCode)
	status, _ := refresh(t, base, emulator.Whoop, tk.RefreshToken)
	require.Equal(t, http.StatusBadRequest, status)
	require.False(t, emu.Users()[0].WhoopConnected)
}
