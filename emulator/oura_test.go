package emulator_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/emulator"
)

type ouraPage[T any] struct {
	Data      []T     `json:"data"`
	NextToken *string `json:"next_token"`
}

type ouraReadinessDoc struct {
	ID                   string  `json:"id"`
	Day                  string  `json:"day"`
	Score                int     `json:"score"`
	TemperatureDeviation float64 `json:"temperature_deviation"`
	Timestamp            string  `json:"timestamp"`
}

type ouraSleepDoc struct {
	ID                 string  `json:"id"`
	Day                string  `json:"day"`
	AverageHrv         int     `json:"average_hrv"`
	AverageHeartRate   float64 `json:"average_heart_rate"`
	TotalSleepDuration int     `json:"total_sleep_duration"`
	DeepSleepDuration  int     `json:"deep_sleep_duration"`
	LightSleepDuration int     `json:"light_sleep_duration"`
	RemSleepDuration   int     `json:"rem_sleep_duration"`
	AwakeTime          int     `json:"awake_time"`
	TimeInBed          int     `json:"time_in_bed"`
	Efficiency         int     `json:"efficiency"`
	Readiness          struct {
		Score                int     `json:"score"`
		TemperatureDeviation float64 `json:"temperature_deviation"`
	} `json:"readiness"`
}

type ouraHR struct {
	BPM       int    `json:"bpm"`
	Source    string `json:"source"`
	Timestamp string `json:"timestamp"`
}

func TestOuraCollectionsAndDocuments(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	emu, base := startEmu(t, emulator.Config{Now: clock.Now, OuraPageSize: 4, OuraHeartRatePageSize: 100})
	tk := connect(t, base, emulator.Oura, "alice")
	res, err := emu.GenerateHistory(context.Background(), emulator.HistorySpec{User: "alice", Days: 10})
	require.NoError(t, err)
	require.Equal(t, 10, res.Records["oura/daily_readiness"])
	coll := base + "/oura/v2/usercollection/"

	t.Run("documented inclusive date range, paged", func(t *testing.T) {
		var days []string
		token := ""
		for {
			q := url.Values{"start_date": {"2026-11-14"}, "end_date": {"2026-11-18"}}
			if token != "" {
				q.Set("next_token", token)
			}
			resp, b := apiGet(t, coll+"daily_readiness?"+q.Encode(), tk.AccessToken)
			require.Equal(t, http.StatusOK, resp.StatusCode, string(b))
			page := decode[ouraPage[ouraReadinessDoc]](t, b)
			require.LessOrEqual(t, len(page.Data), 4)
			for _, d := range page.Data {
				days = append(days, d.Day)
				require.True(t, d.Score >= 1 && d.Score <= 100)
				require.Equal(t, d.Day+"T00:00:00+00:00", d.Timestamp)
			}
			if page.NextToken == nil {
				break
			}
			token = *page.NextToken
		}
		require.Equal(t, []string{"2026-11-14", "2026-11-15", "2026-11-16", "2026-11-17", "2026-11-18"}, days)
	})

	t.Run("document by id and plausible sleep", func(t *testing.T) {
		resp, b := apiGet(t, coll+"sleep?start_date=2026-11-20&end_date=2026-11-20", tk.AccessToken)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		page := decode[ouraPage[ouraSleepDoc]](t, b)
		require.Len(t, page.Data, 1)
		s := page.Data[0]
		require.Equal(t, s.TotalSleepDuration, s.DeepSleepDuration+s.LightSleepDuration+s.RemSleepDuration)
		require.Equal(t, s.TimeInBed, s.TotalSleepDuration+s.AwakeTime)
		require.True(t, s.AverageHrv >= 8 && s.AverageHrv <= 200)
		require.True(t, s.Efficiency >= 50 && s.Efficiency <= 100)
		require.True(t, s.TimeInBed >= 4*3600 && s.TimeInBed <= 11*3600)

		resp, b = apiGet(t, coll+"sleep/"+s.ID, tk.AccessToken)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, s, decode[ouraSleepDoc](t, b))
		resp, _ = apiGet(t, coll+"sleep/nope", tk.AccessToken)
		require.Equal(t, http.StatusNotFound, resp.StatusCode)
	})

	t.Run("heartrate by datetime, paged", func(t *testing.T) {
		samples := heartRateSamples(t, base, tk.AccessToken, clock.Now().Add(-24*time.Hour), clock.Now())
		require.Len(t, samples, 288, "every 5 minutes for 24h")
		var rest int
		for _, s := range samples {
			require.True(t, s.BPM >= 35 && s.BPM <= 180, "bpm %d", s.BPM)
			if s.Source == "rest" {
				rest++
			}
		}
		require.Greater(t, rest, 40, "the night is in there")

		q := url.Values{"start_datetime": {clock.Now().Add(-31 * 24 * time.Hour).Format(time.RFC3339)}, "end_datetime": {clock.Now().Format(time.RFC3339)}}
		resp, _ := apiGet(t, coll+"heartrate?"+q.Encode(), tk.AccessToken)
		require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	})

	t.Run("unstored data types answer empty, unknown ones 404", func(t *testing.T) {
		resp, b := apiGet(t, coll+"daily_activity", tk.AccessToken)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Empty(t, decode[ouraPage[any]](t, b).Data)
		resp, _ = apiGet(t, coll+"made_up", tk.AccessToken)
		require.Equal(t, http.StatusNotFound, resp.StatusCode)
	})

	t.Run("personal info names the webhook user id", func(t *testing.T) {
		resp, b := apiGet(t, coll+"personal_info", tk.AccessToken)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		info := decode[map[string]any](t, b)
		require.Equal(t, emu.Users()[0].OuraUserID, info["id"])
	})
}

func TestOuraDateRangeQuirk(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	emu, base := startEmu(t, emulator.Config{Now: clock.Now, OuraDateRangeQuirk: true})
	tk := connect(t, base, emulator.Oura, "alice")
	_, err := emu.GenerateHistory(context.Background(), emulator.HistorySpec{User: "alice", Days: 5, Vendors: []emulator.Vendor{emulator.Oura}})
	require.NoError(t, err)
	for _, tc := range []struct {
		dataType string
		want     []string
	}{
		{"sleep", []string{"2026-11-18", "2026-11-19"}},           // start exclusive
		{"daily_readiness", []string{"2026-11-17", "2026-11-18"}}, // end exclusive
	} {
		resp, b := apiGet(t, base+"/oura/v2/usercollection/"+tc.dataType+"?start_date=2026-11-17&end_date=2026-11-19", tk.AccessToken)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		var days []string
		for _, d := range decode[ouraPage[ouraReadinessDoc]](t, b).Data {
			days = append(days, d.Day)
		}
		require.Equal(t, tc.want, days, tc.dataType)
	}
}

func TestOuraRateLimitPerConnection(t *testing.T) {
	t.Parallel()
	emu, base := startEmu(t, emulator.Config{OuraRateLimit: 2})
	alice := connect(t, base, emulator.Oura, "alice")
	bob := connect(t, base, emulator.Oura, "bob")
	info := base + "/oura/v2/usercollection/personal_info"
	for range 2 {
		resp, _ := apiGet(t, info, alice.AccessToken)
		require.Equal(t, http.StatusOK, resp.StatusCode)
	}
	resp, _ := apiGet(t, info, alice.AccessToken)
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	retry, err := strconv.Atoi(resp.Header.Get("Retry-After"))
	require.NoError(t, err)
	require.True(t, retry >= 1 && retry <= 300, "retry-after %d", retry)

	// A refreshed token does not get a fresh budget; another user does.
	status, fresh := refresh(t, base, emulator.Oura, alice.RefreshToken)
	require.Equal(t, http.StatusOK, status)
	resp, _ = apiGet(t, info, fresh.AccessToken)
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	resp, _ = apiGet(t, info, bob.AccessToken)
	require.Equal(t, http.StatusOK, resp.StatusCode)

	c := emu.Counters().Oura
	require.EqualValues(t, 2, c.RateLimited)
	require.EqualValues(t, 4, c.MaxRequestsInWindow)
}

func subRequest(t *testing.T, method, rawURL string, body any, clientSecret string) (int, []byte) {
	t.Helper()
	var rd io.Reader = http.NoBody
	if body != nil {
		b, err := json.Marshal(body)
		require.NoError(t, err)
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, rawURL, rd)
	require.NoError(t, err)
	req.Header.Set("x-client-id", emulator.DefaultOuraClientID)
	req.Header.Set("x-client-secret", clientSecret)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.NoError(t, resp.Body.Close())
	return resp.StatusCode, b
}

type subDoc struct {
	ID             string    `json:"id"`
	CallbackURL    string    `json:"callback_url"`
	EventType      string    `json:"event_type"`
	DataType       string    `json:"data_type"`
	ExpirationTime time.Time `json:"expiration_time"`
}

func TestOuraSubscriptionsHandshakeExpiryRenewAnd410(t *testing.T) {
	t.Parallel()
	clock := newFakeClock()
	rcv := newReceiver(t)
	emu, base := startEmu(t, emulator.Config{Now: clock.Now, OuraSubscriptionTTL: 24 * time.Hour})
	_, err := emu.AddUser(emulator.UserSpec{Name: "alice"})
	require.NoError(t, err)
	subs := base + "/oura/v2/webhook/subscription"
	create := map[string]string{
		"callback_url": rcv.srv.URL + "/v1/webhooks/oura", "verification_token": rcv.verifyToken,
		"event_type": "create", "data_type": "daily_readiness",
	}

	status, _ := subRequest(t, http.MethodPost, subs, create, "wrong-secret")
	require.Equal(t, http.StatusUnauthorized, status)

	bad := map[string]string{}
	for k, v := range create {
		bad[k] = v
	}
	bad["verification_token"] = "not-what-the-callback-expects"
	status, _ = subRequest(t, http.MethodPost, subs, bad, emulator.DefaultOuraClientSecret)
	require.Equal(t, http.StatusBadRequest, status, "the callback refused the handshake")

	status, b := subRequest(t, http.MethodPost, subs, create, emulator.DefaultOuraClientSecret)
	require.Equal(t, http.StatusCreated, status, string(b))
	sub := decode[subDoc](t, b)
	require.Equal(t, clock.Now().Add(24*time.Hour), sub.ExpirationTime.UTC())
	gets := rcv.gets()
	require.Len(t, gets, 2)
	require.Equal(t, rcv.verifyToken, gets[1].query.Get("verification_token"))
	require.NotEmpty(t, gets[1].query.Get("challenge"))

	status, _ = subRequest(t, http.MethodPost, subs, create, emulator.DefaultOuraClientSecret)
	require.Equal(t, http.StatusConflict, status, "one subscription per (event_type, data_type)")

	mk := func() {
		_, err := emu.CreateRecord(context.Background(), emulator.RecordSpec{User: "alice", Vendor: emulator.Oura, Type: "daily_readiness"})
		require.NoError(t, err)
		waitHooks(t, emu)
	}
	mk()
	require.Len(t, rcv.posts(), 1)
	require.True(t, verifyOura(emulator.DefaultOuraClientSecret, rcv.posts()[0].header, rcv.posts()[0].body, clock.Now()), "signed with the emulated clock")

	// Expired: nothing is delivered until it is renewed.
	clock.Advance(25 * time.Hour)
	mk()
	require.Len(t, rcv.posts(), 1)
	require.EqualValues(t, 1, emu.Counters().Oura.WebhooksUnrouted)
	status, b = subRequest(t, http.MethodPut, subs+"/renew/"+sub.ID, nil, emulator.DefaultOuraClientSecret)
	require.Equal(t, http.StatusOK, status)
	require.True(t, decode[subDoc](t, b).ExpirationTime.After(clock.Now()))
	mk()
	require.Len(t, rcv.posts(), 2)

	// Answering 410 cancels the subscription.
	rcv.mu.Lock()
	rcv.status = func(int) int { return http.StatusGone }
	rcv.mu.Unlock()
	mk()
	require.Len(t, rcv.posts(), 3, "410 is not retried")
	status, _ = subRequest(t, http.MethodGet, subs+"/"+sub.ID, nil, emulator.DefaultOuraClientSecret)
	require.Equal(t, http.StatusNotFound, status)
	status, b = subRequest(t, http.MethodGet, subs, nil, emulator.DefaultOuraClientSecret)
	require.Equal(t, http.StatusOK, status)
	require.Empty(t, decode[[]subDoc](t, b))
	require.EqualValues(t, 1, emu.Counters().Oura.SubscriptionsGone)
}

func TestOuraImplicitSubscriptionAndVerify(t *testing.T) {
	t.Parallel()
	rcv := newReceiver(t)
	emu, _ := startEmu(t, emulator.Config{OuraWebhookURL: rcv.srv.URL})
	_, err := emu.AddUser(emulator.UserSpec{Name: "alice"})
	require.NoError(t, err)
	recs, err := emu.CreateRecord(context.Background(), emulator.RecordSpec{
		User: "alice", Vendor: emulator.Oura, Type: "sleep", Values: map[string]float64{"average_hrv": 55},
	})
	require.NoError(t, err)
	_, err = emu.UpdateRecord(context.Background(), emulator.Oura, "sleep", recs[0].ID, map[string]float64{"average_hrv": 60})
	require.NoError(t, err)
	require.NoError(t, emu.DeleteRecord(context.Background(), emulator.Oura, "sleep", recs[0].ID))
	waitHooks(t, emu)
	var events []string
	times := map[string]string{}
	for _, p := range rcv.posts() {
		h := decode[ouraHook](t, p.body)
		require.Equal(t, recs[0].ID, h.ObjectID)
		require.Equal(t, "sleep", h.DataType)
		events = append(events, h.EventType)
		times[h.EventType] = h.EventTime
	}
	require.ElementsMatch(t, []string{"create", "update", "delete"}, events)
	// Each change has its own event_time, in order, even when they happen
	// within the same instant.
	require.Less(t, times["create"], times["update"])
	require.Less(t, times["update"], times["delete"])

	require.NoError(t, emu.VerifyOuraCallback(context.Background(), "", ""))
	require.Error(t, emu.VerifyOuraCallback(context.Background(), "", "wrong-token"))
	c := emu.Counters().Oura
	require.EqualValues(t, 2, c.Handshakes)
	require.EqualValues(t, 1, c.HandshakesPassed)
}

// The generated heart-rate series runs around the clock, every five
// minutes with no gap and no sample twice, and the history's count is the
// number of samples the collection serves. Each seed draws its own wake-up
// times; days where the user woke earlier than the day before used to
// overlap and be counted twice.
func TestOuraHeartRateHistoryIsOneSeries(t *testing.T) {
	t.Parallel()
	for seed := uint64(1); seed <= 12; seed++ {
		clock := newFakeClock()
		clock.Advance(9 * time.Hour) // late in the day: today's night is in the history
		emu, base := startEmu(t, emulator.Config{Now: clock.Now, Seed: seed})
		tk := connect(t, base, emulator.Oura, "alice")
		res, err := emu.GenerateHistory(context.Background(), emulator.HistorySpec{User: "alice", Days: 4, Vendors: []emulator.Vendor{emulator.Oura}})
		require.NoError(t, err)

		samples := heartRateSamples(t, base, tk.AccessToken, clock.Now().Add(-10*24*time.Hour), clock.Now())
		require.Equal(t, res.Records["oura/heartrate"], len(samples), "seed %d: the count is what the collection serves", seed)
		for i := 1; i < len(samples); i++ {
			prev, err := time.Parse(time.RFC3339, samples[i-1].Timestamp)
			require.NoError(t, err)
			cur, err := time.Parse(time.RFC3339, samples[i].Timestamp)
			require.NoError(t, err)
			require.Equal(t, 5*time.Minute, cur.Sub(prev), "seed %d: samples %d and %d", seed, i-1, i)
		}
	}
}

// heartRateSamples reads the heart-rate collection over [start, end),
// following its pages.
func heartRateSamples(t *testing.T, base, token string, start, end time.Time) []ouraHR {
	t.Helper()
	q := url.Values{"start_datetime": {start.Format(time.RFC3339)}, "end_datetime": {end.Format(time.RFC3339)}}
	var samples []ouraHR
	for {
		resp, b := apiGet(t, base+"/oura/v2/usercollection/heartrate?"+q.Encode(), token)
		require.Equal(t, http.StatusOK, resp.StatusCode, string(b))
		page := decode[ouraPage[ouraHR]](t, b)
		samples = append(samples, page.Data...)
		if page.NextToken == nil {
			return samples
		}
		q.Set("next_token", *page.NextToken)
	}
}
