package emulator_test

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/emulator"
)

// The verifiers below are written from docs/vendors.md, independently of the
// emulator's signing code, so a shared mistake cannot hide.

func verifyWhoop(secret string, h http.Header, body []byte, now time.Time) bool {
	ts := h.Get("X-WHOOP-Signature-Timestamp")
	ms, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || now.Sub(time.UnixMilli(ms)).Abs() > 5*time.Minute {
		return false
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(ts + string(body)))
	want := base64.StdEncoding.EncodeToString(mac.Sum(nil))
	return hmac.Equal([]byte(want), []byte(h.Get("X-WHOOP-Signature")))
}

func verifyOura(secret string, h http.Header, body []byte, now time.Time) bool {
	ts := h.Get("x-oura-timestamp")
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || now.Sub(time.Unix(sec, 0)).Abs() > 5*time.Minute {
		return false
	}
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(ts))
	mac.Write(body)
	want := strings.ToUpper(hex.EncodeToString(mac.Sum(nil)))
	return hmac.Equal([]byte(want), []byte(h.Get("x-oura-signature")))
}

func flipByte(b []byte, i int) []byte {
	out := append([]byte(nil), b...)
	out[i] ^= 0x01
	return out
}

func TestWebhookSignaturesVerifyAndBreakOnOneByte(t *testing.T) {
	t.Parallel()
	rcv := newReceiver(t)
	emu, _ := startEmu(t, emulator.Config{
		WhoopWebhookURL: rcv.srv.URL + "/whoop", OuraWebhookURL: rcv.srv.URL + "/oura",
		WhoopClientSecret: "whoop-secret-for-test", OuraClientSecret: "oura-secret-for-test",
	})
	u, err := emu.AddUser(emulator.UserSpec{Name: "alice"})
	require.NoError(t, err)
	ctx := context.Background()
	_, err = emu.CreateRecord(ctx, emulator.RecordSpec{User: "alice", Vendor: emulator.Whoop, Type: "workout"})
	require.NoError(t, err)
	recs, err := emu.CreateRecord(ctx, emulator.RecordSpec{User: "alice", Vendor: emulator.Oura, Type: "daily_readiness"})
	require.NoError(t, err)
	waitHooks(t, emu)

	posts := rcv.posts()
	require.Len(t, posts, 2)
	now := time.Now()
	var sawWhoop, sawOura bool
	for _, d := range posts {
		require.Equal(t, "application/json", d.header.Get("Content-Type"))
		if d.header.Get("X-WHOOP-Signature") != "" {
			sawWhoop = true
			require.True(t, verifyWhoop("whoop-secret-for-test", d.header, d.body, now))
			for _, i := range []int{0, len(d.body) / 2, len(d.body) - 1} {
				require.False(t, verifyWhoop("whoop-secret-for-test", d.header, flipByte(d.body, i), now), "byte %d", i)
			}
			require.False(t, verifyWhoop("other-secret", d.header, d.body, now))
			hook := decode[whoopHook](t, d.body)
			require.Equal(t, u.WhoopUserID, hook.UserID)
			require.Equal(t, "workout.updated", hook.Type)
			require.NotEmpty(t, hook.TraceID)
			require.Equal(t, `{"user_id":`, string(d.body[:11]), "user_id is a JSON number first")
			continue
		}
		sawOura = true
		require.True(t, verifyOura("oura-secret-for-test", d.header, d.body, now))
		require.Regexp(t, `^[0-9A-F]{64}$`, d.header.Get("x-oura-signature"))
		require.False(t, verifyOura("oura-secret-for-test", d.header, flipByte(d.body, len(d.body)/2), now))
		hook := decode[ouraHook](t, d.body)
		require.Equal(t, ouraHook{
			EventType: "create", DataType: "daily_readiness", ObjectID: recs[0].ID,
			EventTime: hook.EventTime, UserID: u.OuraUserID,
		}, hook)
		_, err := time.Parse(time.RFC3339, hook.EventTime)
		require.NoError(t, err)
	}
	require.True(t, sawWhoop && sawOura)
	c := emu.Counters()
	require.EqualValues(t, 1, c.Whoop.WebhooksDelivered)
	require.EqualValues(t, 1, c.Oura.WebhooksDelivered)
	require.Zero(t, c.WebhooksPending)
}

func TestExportedSignersMatchTheDocumentedAlgorithm(t *testing.T) {
	t.Parallel()
	body := []byte(`{"user_id":10129,"id":"x","type":"sleep.updated","trace_id":"t"}`)
	h := http.Header{}
	ts := strconv.FormatInt(time.Now().UnixMilli(), 10)
	h.Set("X-WHOOP-Signature-Timestamp", ts)
	h.Set("X-WHOOP-Signature", emulator.WhoopSignature("s", ts, body))
	require.True(t, verifyWhoop("s", h, body, time.Now()))
	h = http.Header{}
	ts = strconv.FormatInt(time.Now().Unix(), 10)
	h.Set("x-oura-timestamp", ts)
	h.Set("x-oura-signature", emulator.OuraSignature("s", ts, body))
	require.True(t, verifyOura("s", h, body, time.Now()))
}

func TestWebhookRetriesUntil2xxThenGivesUp(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name          string
		failFirst     int
		wantDelivered int64
		wantFailed    int64
		wantAttempts  int64
	}{
		{"succeeds on the third attempt", 2, 1, 0, 3},
		{"gives up after the schedule", 100, 0, 1, 3}, // 1 + two retry delays
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			rcv := newReceiver(t)
			rcv.status = func(n int) int {
				if n < tc.failFirst {
					return http.StatusServiceUnavailable
				}
				return http.StatusOK
			}
			emu, _ := startEmu(t, emulator.Config{WhoopWebhookURL: rcv.srv.URL})
			_, err := emu.AddUser(emulator.UserSpec{Name: "alice"})
			require.NoError(t, err)
			_, err = emu.CreateRecord(context.Background(), emulator.RecordSpec{User: "alice", Vendor: emulator.Whoop, Type: "workout"})
			require.NoError(t, err)
			waitHooks(t, emu)

			posts := rcv.posts()
			require.Len(t, posts, int(tc.wantAttempts))
			for _, p := range posts[1:] {
				require.Equal(t, string(posts[0].body), string(p.body), "every attempt carries the same body")
				require.True(t, verifyWhoop(emulator.DefaultWhoopClientSecret, p.header, p.body, time.Now()))
			}
			c := emu.Counters().Whoop
			require.Equal(t, tc.wantDelivered, c.WebhooksDelivered)
			require.Equal(t, tc.wantFailed, c.WebhooksFailed)
			require.Equal(t, tc.wantAttempts, c.WebhookAttempts)
			require.Equal(t, tc.wantAttempts-1, c.WebhookRetries)
		})
	}
}

func TestWebhookDropDuplicateAndReorder(t *testing.T) {
	t.Parallel()
	t.Run("drop", func(t *testing.T) {
		t.Parallel()
		rcv := newReceiver(t)
		emu, _ := startEmu(t, emulator.Config{WhoopWebhookURL: rcv.srv.URL, Faults: emulator.Faults{WebhookDropRate: 1}})
		_, err := emu.AddUser(emulator.UserSpec{Name: "alice"})
		require.NoError(t, err)
		_, err = emu.CreateRecord(context.Background(), emulator.RecordSpec{User: "alice", Vendor: emulator.Whoop, Type: "sleep"})
		require.NoError(t, err)
		waitHooks(t, emu)
		require.Empty(t, rcv.posts())
		require.EqualValues(t, 2, emu.Counters().Whoop.WebhooksDropped, "sleep.updated and recovery.updated")
	})
	t.Run("duplicate", func(t *testing.T) {
		t.Parallel()
		rcv := newReceiver(t)
		emu, _ := startEmu(t, emulator.Config{WhoopWebhookURL: rcv.srv.URL, Faults: emulator.Faults{WebhookDuplicateRate: 1}})
		_, err := emu.AddUser(emulator.UserSpec{Name: "alice"})
		require.NoError(t, err)
		_, err = emu.CreateRecord(context.Background(), emulator.RecordSpec{User: "alice", Vendor: emulator.Whoop, Type: "workout"})
		require.NoError(t, err)
		waitHooks(t, emu)
		posts := rcv.posts()
		require.Len(t, posts, 2)
		require.Equal(t, decode[whoopHook](t, posts[0].body), decode[whoopHook](t, posts[1].body), "same trace_id twice")
		c := emu.Counters().Whoop
		require.EqualValues(t, 1, c.WebhooksDuplicated)
		require.EqualValues(t, 2, c.WebhooksDelivered)
	})
	t.Run("reorder", func(t *testing.T) {
		t.Parallel()
		rcv := newReceiver(t)
		emu, _ := startEmu(t, emulator.Config{
			WhoopWebhookURL: rcv.srv.URL, WebhookWorkers: 1, ReorderWindow: 200 * time.Millisecond,
			Faults: emulator.Faults{WebhookReorder: true},
		})
		_, err := emu.AddUser(emulator.UserSpec{Name: "alice"})
		require.NoError(t, err)
		var created []string
		for range 4 {
			recs, err := emu.CreateRecord(context.Background(), emulator.RecordSpec{User: "alice", Vendor: emulator.Whoop, Type: "workout"})
			require.NoError(t, err)
			created = append(created, recs[0].ID)
		}
		waitHooks(t, emu)
		var got []string
		for _, p := range rcv.posts() {
			got = append(got, decode[whoopHook](t, p.body).ID)
		}
		require.ElementsMatch(t, created, got)
		require.NotEqual(t, created, got)
	})
}

func TestNoWebhookTargetCountsUnrouted(t *testing.T) {
	t.Parallel()
	emu, _ := startEmu(t, emulator.Config{})
	_, err := emu.AddUser(emulator.UserSpec{Name: "alice"})
	require.NoError(t, err)
	_, err = emu.CreateRecord(context.Background(), emulator.RecordSpec{User: "alice", Vendor: emulator.Oura, Type: "daily_spo2"})
	require.NoError(t, err)
	require.EqualValues(t, 1, emu.Counters().Oura.WebhooksUnrouted)
}
