package webhook

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/biobridge/bridge/pkg/apperr"
)

// The fuzz targets take their seeds from f.Add below and from the files in
// testdata/fuzz/<target>/.

// FuzzParseWhoop: whatever WHOOP (or an attacker with the secret) sends, the
// parser never panics, rejects only with a 400, and what it accepts survives
// a round trip through the job payload unchanged.
func FuzzParseWhoop(f *testing.F) {
	f.Add(whoopBody)
	f.Add([]byte(`{"user_id":"42","id":"x","type":"recovery.deleted"}`))
	f.Add([]byte(`{"user_id":9223372036854775807,"id":"x","type":"a.b","trace_id":""}`))
	f.Add([]byte(`{"user_id":-1}`))
	f.Add([]byte(`{"user_id":1e3,"id":"x","type":"sleep.updated"}`))
	f.Add([]byte("{\"user_id\":1,\"id\":\"\xff\",\"type\":\"sleep.updated\"}"))
	f.Add([]byte(` {} `))
	f.Fuzz(func(t *testing.T, body []byte) {
		ev, err := ParseWhoop(body)
		if err != nil {
			checkMalformed(t, err)
			return
		}
		if ev.UserID <= 0 || ev.ID == "" || ev.Resource() == "" || ev.Action() == "" || ev.DeliveryID("0") == "" {
			t.Fatalf("accepted an incomplete event: %+v", ev)
		}
		payload, err := json.Marshal(ev)
		if err != nil {
			t.Fatalf("marshal payload: %v", err)
		}
		back, err := ParseWhoop(payload)
		if err != nil || back != ev {
			t.Fatalf("payload round trip: %+v -> %+v (%v)", ev, back, err)
		}
	})
}

// FuzzParseOura is FuzzParseWhoop for Oura bodies.
func FuzzParseOura(f *testing.F) {
	f.Add(ouraBody)
	f.Add([]byte(`{"event_type":"delete","data_type":"daily_spo2","object_id":"o","event_time":"2026-11-20T07:59:00.5Z","user_id":"u"}`))
	f.Add([]byte(`{"event_type":"create","data_type":"","object_id":"o","event_time":"2026-11-20T07:59:00Z","user_id":"u"}`))
	f.Add([]byte(`{"event_type":null}`))
	f.Add([]byte(`{"event_type":"update","data_type":"sleep","object_id":"o","event_time":"9999-12-31T23:59:59+14:00","user_id":"u"}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		ev, err := ParseOura(body)
		if err != nil {
			checkMalformed(t, err)
			return
		}
		if ev.Time().IsZero() || ev.DeliveryID() == "" {
			t.Fatalf("accepted an event without time or identity: %+v", ev)
		}
		payload, err := json.Marshal(ev)
		if err != nil {
			t.Fatalf("marshal payload: %v", err)
		}
		back, err := ParseOura(payload)
		if err != nil || back != ev || back.DeliveryID() != ev.DeliveryID() {
			t.Fatalf("payload round trip: %+v -> %+v (%v)", ev, back, err)
		}
	})
}

// FuzzWhoopVerifier: a signature made the documented way always verifies
// while fresh; any other signature string never does; nothing panics.
func FuzzWhoopVerifier(f *testing.F) {
	f.Add(whoopBody, int64(-30_000), "", "")
	f.Add([]byte(`{}`), int64(400_000), "AAAA", "")
	f.Add([]byte{}, int64(0), "", "1")
	f.Add(whoopBody, int64(1), "====", "-1")
	f.Fuzz(func(t *testing.T, body []byte, offsetMS int64, otherSig, otherTS string) {
		v := NewWhoopVerifier(testSecret, Options{Now: func() time.Time { return testNow }})
		at := testNow.Add(time.Duration(offsetMS%int64(time.Hour/time.Millisecond)) * time.Millisecond)
		ts := strconv.FormatInt(at.UnixMilli(), 10)
		good := WhoopSignature(testSecret, ts, body)
		err := v.Verify(body, good, ts)
		fresh := at.Sub(testNow).Abs() <= DefaultTolerance
		if fresh && err != nil {
			t.Fatalf("genuine fresh signature rejected: %v", err)
		}
		if !fresh && apperr.ReasonOf(err) != ReasonStaleTimestamp {
			t.Fatalf("genuine stale signature: got %v", err)
		}
		if err := v.Verify(body, otherSig, ts); err == nil {
			if d, ok := decodeBase64(strings.TrimSpace(otherSig)); !ok || !bytes.Equal(d, mac(testSecret, whoopMessage(ts, body))) {
				t.Fatalf("forged signature %q accepted", otherSig)
			}
		}
		if strings.TrimSpace(otherTS) != ts {
			if err := v.Verify(body, good, otherTS); err == nil {
				t.Fatalf("signature accepted with timestamp %q it was not made for", otherTS)
			}
		}
	})
}

// FuzzOuraVerifier is FuzzWhoopVerifier for Oura.
func FuzzOuraVerifier(f *testing.F) {
	f.Add(ouraBody, int64(-10), "", "")
	f.Add([]byte(`{}`), int64(301), "ABCDEF", "")
	f.Add([]byte{}, int64(0), "zz", "0")
	f.Fuzz(func(t *testing.T, body []byte, offsetS int64, otherSig, otherTS string) {
		v := NewOuraVerifier(testSecret, Options{Now: func() time.Time { return testNow }})
		at := testNow.Add(time.Duration(offsetS%3600) * time.Second)
		ts := strconv.FormatInt(at.Unix(), 10)
		good := OuraSignature(testSecret, ts, body)
		err := v.Verify(body, good, ts)
		fresh := at.Sub(testNow).Abs() <= DefaultTolerance
		if fresh && err != nil {
			t.Fatalf("genuine fresh signature rejected: %v", err)
		}
		if !fresh && apperr.ReasonOf(err) != ReasonStaleTimestamp {
			t.Fatalf("genuine stale signature: got %v", err)
		}
		if err := v.Verify(body, otherSig, ts); err == nil {
			if d, ok := decodeHex(strings.TrimSpace(otherSig)); !ok || !bytes.Equal(d, mac(testSecret, ouraMessage(ts, body))) {
				t.Fatalf("forged signature %q accepted", otherSig)
			}
		}
		if strings.TrimSpace(otherTS) != ts {
			if err := v.Verify(body, good, otherTS); err == nil {
				t.Fatalf("signature accepted with timestamp %q it was not made for", otherTS)
			}
		}
	})
}

func checkMalformed(t *testing.T, err error) {
	t.Helper()
	if apperr.CodeOf(err) != apperr.Invalid || apperr.ReasonOf(err) != ReasonMalformedBody {
		t.Fatalf("rejection is not a 400 malformed_body: %v", err)
	}
}
