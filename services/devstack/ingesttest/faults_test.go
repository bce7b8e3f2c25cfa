package ingesttest

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/emulator"
	"github.com/biobridge/bridge/services/ingest/server"
)

// With the vendor answering 429 or 500 to a fifth of the calls and every
// call 300 ms slow, every record still arrives exactly once, webhooks are
// still acknowledged at the first attempt, and the vendor never sees more
// requests in a window than its limit: the shared budget held, and every
// 429 the vendor sent was an injected one, not a real one.
func TestVendorFaults(t *testing.T) {
	t.Parallel()
	// The vendor allows 10 per window; ingest's budget is 8 so the token
	// broker's own calls (the profile read when a user connects) fit too.
	const limit, budget, window = 10, 8, 3 * time.Second
	e := newEnv(t, options{
		emu: func(c *emulator.Config) {
			c.WhoopRateLimit, c.WhoopRateWindow = limit, window
		},
		ingest: func(c *server.Config) {
			c.WhoopRateLimit, c.WhoopRateWindow, c.Workers = budget, window, 8
		},
	})
	ctx := context.Background()
	users := []string{"fay", "finn"}
	for i, u := range users {
		e.connect(fmt.Sprint("user-f", i), "whoop", u)
	}
	e.connect("user-fo", "oura", "fiona")
	// injected 429: 10%; injected 500: 90% × 1/9 = 10%, after two 500s
	// up front so the run sees faults however few requests it makes.
	require.NoError(t, e.emu.SetFaults(emulator.Faults{ErrorsNext: 2, RateLimitRate: 0.1, ErrorRate: 1.0 / 9, Latency: 300 * time.Millisecond}))

	want := map[string]map[string]float64{}
	records := 0
	for i, u := range users {
		user := fmt.Sprint("user-f", i)
		for n := range 2 {
			start, end := night(30 - 24*n)
			_, err := e.emu.CreateRecord(ctx, emulator.RecordSpec{User: u, Vendor: emulator.Whoop, Type: "sleep", Start: start, End: end,
				Values: map[string]float64{"recovery_score": float64(40 + 10*i + n), "hrv_rmssd_milli": float64(30 + i + n)}})
			require.NoError(t, err)
			records += 2
		}
		end := time.Now().UTC().Add(-time.Hour).Truncate(time.Second)
		_, err := e.emu.CreateRecord(ctx, emulator.RecordSpec{User: u, Vendor: emulator.Whoop, Type: "workout", Start: end.Add(-time.Hour), End: end,
			Values: map[string]float64{"strain": float64(10 + i)}})
		require.NoError(t, err)
		records++
		want[user] = map[string]float64{"recovery_score": float64(41 + 10*i), "hrv_rmssd_ms": float64(31 + i), "strain": float64(10 + i)}
	}
	start, end := night(8)
	for _, typ := range []string{"sleep", "daily_readiness", "daily_spo2"} {
		_, err := e.emu.CreateRecord(ctx, emulator.RecordSpec{User: "fiona", Vendor: emulator.Oura, Type: typ, Start: start, End: end,
			Values: map[string]float64{map[string]string{"sleep": "average_hrv", "daily_readiness": "score", "daily_spo2": "spo2_percentage"}[typ]: 90}})
		require.NoError(t, err)
		records++
	}
	want["user-fo"] = map[string]float64{"hrv_rmssd_ms": 90, "readiness_score": 90, "spo2_pct": 90}

	for user, w := range want {
		e.waitLatest(user, w, 90*time.Second)
	}
	e.waitWebhooks()
	e.waitJobsSettled(30 * time.Second)
	assert.Equal(t, map[string]int{"done": records}, e.jobCounts(), "nothing died")
	assertOneVersionPerRecord(t, e, records)

	c := e.emu.Counters()
	t.Logf("whoop: calls=%d max_in_window=%d 429=%d (injected %d) 500=%d; oura: calls=%d 429=%d 500=%d",
		c.Whoop.APICallsTotal, c.Whoop.MaxRequestsInWindow, c.Whoop.RateLimited, c.Whoop.InjectedRateLimited, c.Whoop.InjectedErrors,
		c.Oura.APICallsTotal, c.Oura.RateLimited, c.Oura.InjectedErrors)
	assert.LessOrEqual(t, c.Whoop.MaxRequestsInWindow, int64(limit), "the app-wide WHOOP budget was never exceeded")
	assert.Equal(t, c.Whoop.InjectedRateLimited, c.Whoop.RateLimited, "every 429 was an injected one: the real limit was never hit")
	assert.Greater(t, c.Whoop.APICallsTotal, int64(limit), "the run needed more than one window of budget")
	assert.GreaterOrEqual(t, c.Whoop.InjectedErrors+c.Oura.InjectedErrors, int64(2), "faults were injected")
	assert.Zero(t, c.Whoop.WebhookRetries+c.Oura.WebhookRetries, "every webhook was acknowledged at the first attempt, within the vendor's timeout")
	assert.Zero(t, c.Whoop.WebhooksFailed+c.Oura.WebhooksFailed)
}
