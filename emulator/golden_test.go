package emulator_test

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"slices"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/emulator"
)

// TestSeededRunGolden pins what one seed produces: every random draw (user
// baselines, OAuth codes and tokens, record ids and values, webhook fault
// decisions) happens in a fixed order, so a refactoring that reorders draws
// changes these hashes.
func TestSeededRunGolden(t *testing.T) {
	ctx := context.Background()
	rcv := newReceiver(t)
	clock := newFakeClock()
	emu, base := startEmu(t, emulator.Config{
		Seed: 42, Now: clock.Now,
		WhoopWebhookURL: rcv.srv.URL + "/whoop", OuraWebhookURL: rcv.srv.URL + "/oura",
	})
	h := sha256.New()
	put := func(v any) {
		b, err := json.Marshal(v)
		require.NoError(t, err)
		h.Write(b)
		h.Write([]byte{'\n'})
	}
	sum := func() string { s := hex.EncodeToString(h.Sum(nil)); h.Reset(); return s }

	_, err := emu.AddUser(emulator.UserSpec{Name: "ada.lovelace", UTCOffsetMinutes: 60})
	require.NoError(t, err)
	wt := connect(t, base, emulator.Whoop, "ada.lovelace")
	ot := connect(t, base, emulator.Oura, "grace.hopper")
	status, rt := refresh(t, base, emulator.Whoop, wt.RefreshToken)
	require.Equal(t, http.StatusOK, status)
	put([]string{wt.AccessToken, wt.RefreshToken, ot.AccessToken, ot.RefreshToken, rt.AccessToken, rt.RefreshToken})
	oauthHash := sum()

	_, err = emu.GenerateHistory(ctx, emulator.HistorySpec{User: "ada.lovelace", Days: 5, Webhooks: true})
	require.NoError(t, err)
	require.NoError(t, emu.SetFaults(emulator.Faults{WebhookDropRate: 0.3, WebhookDuplicateRate: 0.3}))
	for _, spec := range []emulator.RecordSpec{
		{Vendor: emulator.Whoop, Type: "sleep", User: "ada.lovelace"},
		{Vendor: emulator.Whoop, Type: "workout", User: "ada.lovelace", SportName: "running"},
		{Vendor: emulator.Oura, Type: "daily_readiness", User: "grace.hopper"},
	} {
		_, err := emu.CreateRecord(ctx, spec)
		require.NoError(t, err)
	}
	waitHooks(t, emu)
	for _, path := range []string{"/whoop/developer/v2/cycle?limit=25", "/whoop/developer/v2/activity/sleep?limit=25"} {
		resp, body := apiGet(t, base+path, rt.AccessToken)
		require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
		put(string(body))
	}
	resp, body := apiGet(t, base+"/oura/v2/usercollection/daily_readiness?start_date=2026-11-01&end_date=2026-11-30", ot.AccessToken)
	require.Equal(t, http.StatusOK, resp.StatusCode, string(body))
	put(string(body))
	put(emu.ListRecords(emulator.RecordFilter{}))
	recordsHash := sum()

	c := emu.Counters()
	put(c)
	var bodies []string
	for _, d := range rcv.posts() {
		bodies = append(bodies, string(d.body))
	}
	slices.Sort(bodies)
	put(bodies)
	countersHash := sum()

	require.Len(t, bodies, 35)
	require.Equal(t, "27fbf2f3e592e87187dbd5654a3ca6a50cae77b1aa76f655d6d82048c7ba462a", oauthHash, "OAuth codes and tokens")
	require.Equal(t, "c4d5c867ccadc904086ec67ef1cb3e72965e5da4df7493d8bd10ac6f2d989fa0", recordsHash, "records and API answers")
	require.Equal(t, "2ab35fc892f7c4892996d1f10e632fc3f712b49281eeee76b6742bc95749fc9b", countersHash, "counters and webhook bodies")
}
