package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/biobridge/bridge/pkg/apperr"
)

var (
	testSecret = []byte("whoop-test-secret")
	testNow    = time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)
	whoopBody  = []byte(`{"user_id":10235,"id":"ecfc6a15-4661-442f-a9a4-f160dd7afae8","type":"sleep.updated","trace_id":"e369c784-5100-49e8-8098-75d35c47b31b"}`)
	ouraBody   = []byte(`{"event_type":"create","data_type":"sleep","object_id":"8f9a5221-639e-4a85-81cb-4065ef23f979","event_time":"2026-11-20T07:59:00+01:00","user_id":"a1b2c3"}`)
)

// referenceMAC is written out independently of the code under test, from
// the vendors' documentation: HMAC-SHA256(secret, timestamp + raw body).
func referenceMAC(secret []byte, ts string, body []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts + string(body)))
	return m.Sum(nil)
}

func whoopTS(t time.Time) string { return strconv.FormatInt(t.UnixMilli(), 10) }
func ouraTS(t time.Time) string  { return strconv.FormatInt(t.Unix(), 10) }

func TestWhoopVerifier(t *testing.T) {
	t.Parallel()
	v := NewWhoopVerifier(testSecret, Options{Now: func() time.Time { return testNow }})
	sign := func(ts string, body []byte) string {
		return base64.StdEncoding.EncodeToString(referenceMAC(testSecret, ts, body))
	}
	fresh := whoopTS(testNow.Add(-30 * time.Second))
	tests := []struct {
		name      string
		body      []byte
		signature string
		timestamp string
		reason    string // "" = accepted
	}{
		{"valid", whoopBody, sign(fresh, whoopBody), fresh, ""},
		{"unpadded base64 accepted", whoopBody, strings.TrimRight(sign(fresh, whoopBody), "="), fresh, ""},
		{"surrounding spaces in headers", whoopBody, " " + sign(fresh, whoopBody) + " ", " " + fresh, ""},
		{"edge of the tolerance in the past", whoopBody, sign(whoopTS(testNow.Add(-5*time.Minute)), whoopBody), whoopTS(testNow.Add(-5 * time.Minute)), ""},
		{"just past the tolerance", whoopBody, sign(whoopTS(testNow.Add(-5*time.Minute-time.Millisecond)), whoopBody), whoopTS(testNow.Add(-5*time.Minute - time.Millisecond)), ReasonStaleTimestamp},
		{"replay from an hour ago", whoopBody, sign(whoopTS(testNow.Add(-time.Hour)), whoopBody), whoopTS(testNow.Add(-time.Hour)), ReasonStaleTimestamp},
		{"timestamp from the future", whoopBody, sign(whoopTS(testNow.Add(6*time.Minute)), whoopBody), whoopTS(testNow.Add(6 * time.Minute)), ReasonStaleTimestamp},
		{"timestamp in seconds is stale", whoopBody, sign(ouraTS(testNow), whoopBody), ouraTS(testNow), ReasonStaleTimestamp},
		{"body changed by one byte", []byte(strings.Replace(string(whoopBody), "10235", "10236", 1)), sign(fresh, whoopBody), fresh, ReasonInvalidSignature},
		{"re-serialized body", []byte(`{"user_id": 10235, "id": "ecfc6a15-4661-442f-a9a4-f160dd7afae8", "type": "sleep.updated", "trace_id": "e369c784-5100-49e8-8098-75d35c47b31b"}`), sign(fresh, whoopBody), fresh, ReasonInvalidSignature},
		{"signed with another secret", whoopBody, base64.StdEncoding.EncodeToString(referenceMAC([]byte("other"), fresh, whoopBody)), fresh, ReasonInvalidSignature},
		{"signature over another timestamp", whoopBody, sign(whoopTS(testNow), whoopBody), fresh, ReasonInvalidSignature},
		{"dot separator variant is not the documented form", whoopBody, base64.StdEncoding.EncodeToString(referenceMAC(testSecret, fresh+".", whoopBody)), fresh, ReasonInvalidSignature},
		{"hex instead of base64", whoopBody, hex.EncodeToString(referenceMAC(testSecret, fresh, whoopBody)), fresh, ReasonInvalidSignature},
		{"garbage signature", whoopBody, "not base64 !!", fresh, ReasonInvalidSignature},
		{"truncated signature", whoopBody, sign(fresh, whoopBody)[:20], fresh, ReasonInvalidSignature},
		{"missing signature", whoopBody, "", fresh, ReasonMissingSignature},
		{"missing timestamp", whoopBody, sign(fresh, whoopBody), "", ReasonMissingTimestamp},
		{"non-numeric timestamp", whoopBody, sign("abc", whoopBody), "abc", ReasonInvalidTimestamp},
		{"negative timestamp", whoopBody, sign("-5", whoopBody), "-5", ReasonInvalidTimestamp},
		{"empty body signed", []byte{}, sign(fresh, nil), fresh, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			err := v.Verify(tt.body, tt.signature, tt.timestamp)
			assertReason(t, err, tt.reason)
		})
	}
}

func TestOuraVerifier(t *testing.T) {
	t.Parallel()
	v := NewOuraVerifier(testSecret, Options{Now: func() time.Time { return testNow }})
	upper := func(ts string, body []byte) string {
		return strings.ToUpper(hex.EncodeToString(referenceMAC(testSecret, ts, body)))
	}
	fresh := ouraTS(testNow.Add(-10 * time.Second))
	tests := []struct {
		name      string
		body      []byte
		signature string
		timestamp string
		reason    string
	}{
		{"valid uppercase hex", ouraBody, upper(fresh, ouraBody), fresh, ""},
		{"lowercase hex accepted", ouraBody, strings.ToLower(upper(fresh, ouraBody)), fresh, ""},
		{"timestamp in milliseconds accepted", ouraBody, upper(whoopTS(testNow), ouraBody), whoopTS(testNow), ""},
		{"stale", ouraBody, upper(ouraTS(testNow.Add(-10*time.Minute)), ouraBody), ouraTS(testNow.Add(-10 * time.Minute)), ReasonStaleTimestamp},
		{"future", ouraBody, upper(ouraTS(testNow.Add(10*time.Minute)), ouraBody), ouraTS(testNow.Add(10 * time.Minute)), ReasonStaleTimestamp},
		{"tampered body", []byte(strings.Replace(string(ouraBody), "create", "delete", 1)), upper(fresh, ouraBody), fresh, ReasonInvalidSignature},
		{"base64 instead of hex", ouraBody, base64.StdEncoding.EncodeToString(referenceMAC(testSecret, fresh, ouraBody)), fresh, ReasonInvalidSignature},
		{"odd-length hex", ouraBody, upper(fresh, ouraBody)[1:], fresh, ReasonInvalidSignature},
		{"other secret", ouraBody, strings.ToUpper(hex.EncodeToString(referenceMAC([]byte("x"), fresh, ouraBody))), fresh, ReasonInvalidSignature},
		{"missing signature", ouraBody, "", fresh, ReasonMissingSignature},
		{"missing timestamp", ouraBody, upper(fresh, ouraBody), "", ReasonMissingTimestamp},
		{"iso timestamp is not accepted", ouraBody, upper("2026-11-20T08:00:00Z", ouraBody), "2026-11-20T08:00:00Z", ReasonInvalidTimestamp},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			assertReason(t, v.Verify(tt.body, tt.signature, tt.timestamp), tt.reason)
		})
	}
}

func TestSignatureHelpersMatchTheVerifiers(t *testing.T) {
	t.Parallel()
	ts := whoopTS(testNow)
	require.NoError(t, NewWhoopVerifier(testSecret, Options{Now: func() time.Time { return testNow }}).
		Verify(whoopBody, WhoopSignature(testSecret, ts, whoopBody), ts))
	ots := ouraTS(testNow)
	sig := OuraSignature(testSecret, ots, ouraBody)
	assert.Equal(t, strings.ToUpper(sig), sig, "Oura signs in uppercase hex")
	require.NoError(t, NewOuraVerifier(testSecret, Options{Now: func() time.Time { return testNow }}).Verify(ouraBody, sig, ots))
}

func TestToleranceIsConfigurable(t *testing.T) {
	t.Parallel()
	v := NewWhoopVerifier(testSecret, Options{Tolerance: time.Second, Now: func() time.Time { return testNow }})
	ts := whoopTS(testNow.Add(-2 * time.Second))
	assertReason(t, v.Verify(whoopBody, WhoopSignature(testSecret, ts, whoopBody), ts), ReasonStaleTimestamp)
}

func assertReason(t *testing.T, err error, reason string) {
	t.Helper()
	if reason == "" {
		require.NoError(t, err)
		return
	}
	require.Error(t, err)
	assert.Equal(t, apperr.Unauthenticated, apperr.CodeOf(err), "authentication failures are 401")
	assert.Equal(t, reason, apperr.ReasonOf(err))
}
