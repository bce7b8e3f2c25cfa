package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/emulator"
	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	"github.com/biobridge/bridge/services/devstack/internal/vendorrecords"
)

// Three users connect WHOOP (one Oura too) with 30 days of history each
// while a fourth user's live webhooks keep coming. Every historical record
// arrives, once; the vendor never sees more requests in any window than
// its limit (and so never answers 429); and the live records keep arriving
// within seconds while the backfills run.
func TestBackfillWithinBudgetWhileLiveWebhooksFlow(t *testing.T) {
	const vendorLimit, window = 20, 3 * time.Second
	w := startWorld(t, map[string]string{
		"INGEST_BACKFILL_DAYS":            "30",
		"INGEST_CONNECTION_SYNC_INTERVAL": "200ms",
		"INGEST_RECONCILE_INTERVAL":       "0",
		// Ingest's share of the app's budget; the rest is the token
		// broker's (its profile read when a user connects).
		"WHOOP_RATE_LIMIT":  "16",
		"WHOOP_RATE_WINDOW": window.String(),
	}, emulator.Config{Seed: 7, WhoopRateLimit: vendorLimit, WhoopRateWindow: window})
	emu := w.s.Emulator
	ctx := context.Background()

	w.connect("live-user", "whoop", "lena")
	history := []string{"hugo", "hedda", "henrik"}
	for i, name := range history {
		_, err := emu.AddUser(emulator.UserSpec{Name: name})
		require.NoError(t, err)
		vendors := []emulator.Vendor{emulator.Whoop}
		if i == 0 {
			vendors = append(vendors, emulator.Oura)
		}
		_, err = emu.GenerateHistory(ctx, emulator.HistorySpec{User: name, Days: 30, Vendors: vendors})
		require.NoError(t, err)
	}
	emu.ResetCounters()
	start := time.Now()
	for i, name := range history {
		w.connect(fmt.Sprint("hist-", i), "whoop", name)
	}
	w.connect("hist-0", "oura", "hugo")

	// Live: a new night for lena every three seconds until the backfills
	// are done; each must be stored within seconds.
	var worst time.Duration
	live, liveDuring := 0, 0
	var doneAfter time.Duration
	allDone := func() bool {
		if doneAfter > 0 {
			return true
		}
		if w.backfillsCompleted("hist-0") == 2 && w.backfillsCompleted("hist-1") == 1 && w.backfillsCompleted("hist-2") == 1 {
			doneAfter = time.Since(start)
		}
		return doneAfter > 0
	}
	for live < 4 || !allDone() {
		if !allDone() {
			liveDuring++
		}
		require.Less(t, time.Since(start), 50*time.Second, "backfills did not finish: %v %v %v",
			w.backfills("hist-0"), w.backfills("hist-1"), w.backfills("hist-2"))
		s, e := time.Now().UTC().Add(-8*time.Hour-time.Duration(live)*time.Minute), time.Now().UTC().Add(-time.Duration(live)*time.Minute)
		recs, err := emu.CreateRecord(ctx, emulator.RecordSpec{User: "lena", Vendor: emulator.Whoop, Type: "sleep", Start: s, End: e})
		require.NoError(t, err)
		created := time.Now()
		want := map[string]bool{"whoop/" + recs[0].ID: true, "whoop/recovery:" + recs[0].ID: true}
		require.Eventually(t, func() bool {
			got, _ := w.stored("live-user")
			n := 0
			for _, id := range got {
				if want[id] {
					n++
				}
			}
			return n == 2
		}, 10*time.Second, 20*time.Millisecond, "live record %d never arrived", live)
		worst = max(worst, time.Since(created))
		live++
		time.Sleep(max(0, 3*time.Second-time.Since(created)))
	}

	total := 0
	for i, name := range history {
		want := vendorrecords.Expected(emu, name)
		got, top := w.stored(fmt.Sprint("hist-", i))
		assert.Equal(t, want, got, "every record of %s's history", name)
		assert.Equal(t, 1, top, "nothing stored twice")
		total += len(got)
	}
	c := emu.Counters()
	t.Logf("backfilled %d records of 3 users in %s with %d WHOOP requests (busiest %s window: %d of %d); %d live nights (%d during the backfill) each stored within %s",
		total, doneAfter.Round(time.Millisecond), c.Whoop.APICallsTotal, window, c.Whoop.MaxRequestsInWindow, vendorLimit, live, liveDuring,
		worst.Round(time.Millisecond))
	assert.Positive(t, liveDuring, "live webhooks arrived while the backfill ran")
	assert.LessOrEqual(t, c.Whoop.MaxRequestsInWindow, int64(vendorLimit), "the vendor's limit held in every window")
	assert.Zero(t, c.Whoop.RateLimited, "the vendor never had to say 429")
	assert.Greater(t, c.Whoop.APICallsTotal, int64(vendorLimit), "the backfill needed more than one window of budget")
	assert.Less(t, worst, 5*time.Second, "live webhooks kept being processed within seconds")
	// The event follows the completion through ingest's queue.
	assert.Eventually(t, func() bool {
		var n int
		require.NoError(t, w.db.QueryRow(ctx, `SELECT count(*) FROM biometrics.connection_events WHERE type = $1`,
			int(biometricsv1.ConnectionEventType_CONNECTION_EVENT_TYPE_BACKFILL_COMPLETED)).Scan(&n))
		return n == 5
	}, 10*time.Second, 50*time.Millisecond, "a backfill_completed event per connection")
}

// With the vendor dropping 30% of webhooks, every record of a connection
// that reconciliation knows arrives within one reconciliation interval.
func TestReconciliationRecoversDroppedWebhooks(t *testing.T) {
	const interval = 4 * time.Second
	w := startWorld(t, map[string]string{
		"INGEST_BACKFILL_DAYS":      "0",
		"INGEST_RECONCILE_INTERVAL": interval.String(),
		"INGEST_RECONCILE_WINDOW":   "72h",
	}, emulator.Config{Seed: 11})
	emu := w.s.Emulator
	ctx := context.Background()
	w.connect("rex", "whoop", "rex")
	w.connect("rex", "oura", "rex")
	// Wait until a round includes the connections: from then on each is
	// read once per interval.
	require.Eventually(t, func() bool {
		var n int
		require.NoError(t, w.db.QueryRow(ctx, `SELECT count(DISTINCT vendor) FROM ingest.jobs WHERE kind = 'reconcile' AND payload->>'user_id' = 'rex'`).Scan(&n))
		return n == 2
	}, 3*interval, 50*time.Millisecond)

	require.NoError(t, emu.SetFaults(emulator.Faults{WebhookDropRate: 0.3}))
	for i := range 8 {
		end := time.Now().UTC().Add(-time.Duration(6*i+1) * time.Hour)
		_, err := emu.CreateRecord(ctx, emulator.RecordSpec{User: "rex", Vendor: emulator.Whoop, Type: "sleep", Start: end.Add(-7 * time.Hour), End: end})
		require.NoError(t, err)
	}
	for i := range 3 {
		day := time.Now().UTC().AddDate(0, 0, -i).Format(time.DateOnly)
		for _, typ := range []string{"daily_sleep", "daily_readiness", "daily_spo2"} {
			_, err := emu.CreateRecord(ctx, emulator.RecordSpec{User: "rex", Vendor: emulator.Oura, Type: typ, Day: day})
			require.NoError(t, err)
		}
	}
	created := time.Now()
	wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	require.NoError(t, emu.WaitWebhooks(wctx))
	c := emu.Counters()
	dropped := c.Whoop.WebhooksDropped + c.Oura.WebhooksDropped
	require.Positive(t, dropped, "the vendor dropped webhooks")
	want := vendorrecords.Expected(emu, "rex")
	require.Len(t, want, 8*2+3*3)

	require.Eventually(t, func() bool {
		got, _ := w.stored("rex")
		return fmt.Sprint(got) == fmt.Sprint(want)
	}, interval+10*time.Second, 50*time.Millisecond, "not every record arrived")
	took := time.Since(created)
	delivered := c.Whoop.WebhooksDelivered + c.Oura.WebhooksDelivered
	t.Logf("%d of %d webhooks dropped; all %d records stored %s after they were created (interval %s)",
		dropped, dropped+delivered, len(want), took.Round(time.Millisecond), interval)
	// One interval, plus up to a poll interval (1s) before an idle worker
	// sees the due job, plus the fetches.
	assert.LessOrEqual(t, took, interval+3*time.Second, "within one reconciliation interval")
	_, top := w.stored("rex")
	assert.Equal(t, 1, top)
}

// Ingest subscribes to every Oura (event type, data type) it reads at the
// public callback, renews each before it expires and recreates one that
// was deleted.
func TestOuraSubscriptionsAreKept(t *testing.T) {
	w := startWorld(t, map[string]string{
		"INGEST_OURA_SUBSCRIPTION_INTERVAL":     "300ms",
		"INGEST_OURA_SUBSCRIPTION_RENEW_BEFORE": "4s",
	}, emulator.Config{OuraSubscriptionTTL: 6 * time.Second})
	callback := w.s.Env("PUBLIC_BASE_URL") + "/v1/webhooks/oura"
	const pairs = 5 * 3
	var first []ouraSubscription
	require.Eventually(t, func() bool {
		first = w.ouraSubscriptions()
		return len(first) == pairs
	}, 20*time.Second, 50*time.Millisecond, "subscriptions were not created")
	for _, s := range first {
		assert.Equal(t, callback, s.CallbackURL)
	}
	assert.GreaterOrEqual(t, w.s.Emulator.Counters().Oura.HandshakesPassed, int64(pairs), "each passed Oura's handshake through the gateway")

	// Six seconds to live, renewed with less than four left.
	renewed := func(before []ouraSubscription) bool {
		now := w.ouraSubscriptions()
		if len(now) != pairs {
			return false
		}
		exp := map[string]time.Time{}
		for _, s := range before {
			exp[s.ID] = s.ExpirationTime
		}
		for _, s := range now {
			if !s.ExpirationTime.After(exp[s.ID]) {
				return false
			}
		}
		return true
	}
	require.Eventually(t, func() bool { return renewed(first) }, 10*time.Second, 100*time.Millisecond, "not every subscription was renewed")
	time.Sleep(6 * time.Second)
	for _, s := range w.ouraSubscriptions() {
		assert.True(t, s.ExpirationTime.After(time.Now()), "%s/%s lapsed", s.EventType, s.DataType)
	}

	gone := first[0]
	w.deleteOuraSubscription(gone.ID)
	require.Eventually(t, func() bool {
		for _, s := range w.ouraSubscriptions() {
			if s.EventType == gone.EventType && s.DataType == gone.DataType && s.ID != gone.ID && s.CallbackURL == callback {
				return true
			}
		}
		return false
	}, 10*time.Second, 50*time.Millisecond, "the deleted subscription was not recreated")
	assert.Len(t, w.ouraSubscriptions(), pairs)
}

// A connection without data past the threshold produces a stale event on
// biometrics.connections.v1 and shows as stale; when data comes again a
// fresh event follows and the connection shows when it last had data.
func TestStaleAndFreshConnectionEvents(t *testing.T) {
	w := startWorld(t, map[string]string{
		"INGEST_STALE_AFTER":              "3s",
		"INGEST_STALE_CHECK_INTERVAL":     "200ms",
		"INGEST_BACKFILL_DAYS":            "1",
		"INGEST_CONNECTION_SYNC_INTERVAL": "200ms",
		"TOKENBROKER_RELAY_INTERVAL":      "200ms",
	}, emulator.Config{})
	events := w.consumeConnectionEvents()
	w.connect("sam", "whoop", "sam")
	const (
		connected = biometricsv1.ConnectionEventType_CONNECTION_EVENT_TYPE_CONNECTED
		completed = biometricsv1.ConnectionEventType_CONNECTION_EVENT_TYPE_BACKFILL_COMPLETED
		stale     = biometricsv1.ConnectionEventType_CONNECTION_EVENT_TYPE_STALE
		fresh     = biometricsv1.ConnectionEventType_CONNECTION_EVENT_TYPE_FRESH
	)
	require.Eventually(t, func() bool { return count(events.types("sam", "whoop"), stale) == 1 }, 20*time.Second, 50*time.Millisecond,
		"no stale event; saw %v", events.types("sam", "whoop"))
	c := w.connections("sam")["whoop"]
	assert.True(t, c.Stale)
	assert.Empty(t, c.LastDataAt, "no data ever arrived")

	end := time.Now().UTC().Add(-time.Hour)
	_, err := w.s.Emulator.CreateRecord(context.Background(), emulator.RecordSpec{User: "sam", Vendor: emulator.Whoop, Type: "sleep",
		Start: end.Add(-8 * time.Hour), End: end})
	require.NoError(t, err)
	require.Eventually(t, func() bool { return count(events.types("sam", "whoop"), fresh) == 1 }, 20*time.Second, 50*time.Millisecond,
		"no fresh event; saw %v", events.types("sam", "whoop"))
	c = w.connections("sam")["whoop"]
	assert.False(t, c.Stale)
	assert.NotEmpty(t, c.LastDataAt)

	types := events.types("sam", "whoop")
	assert.Equal(t, 1, count(types, connected))
	assert.Equal(t, 1, count(types, completed))
	pos := map[biometricsv1.ConnectionEventType]int{}
	for i, typ := range types {
		pos[typ] = i
	}
	assert.Less(t, pos[connected], pos[stale])
	assert.Less(t, pos[stale], pos[fresh])
}
