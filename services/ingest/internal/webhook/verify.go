// Package webhook authenticates and parses vendor webhooks. Signatures are
// checked over the exact raw body bytes as the gateway received them
// (re-serialized JSON would not match), in constant time, and the signed
// timestamp must lie within a tolerance of now so a captured delivery cannot
// be replayed later. Each vendor's message construction lives in exactly one
// function (whoopMessage, ouraMessage): the vendors' documentation and
// integrations disagree on details such as a separator, and a change must be
// a one-line change.
//
// Errors are *apperr.Error values with stable reasons, so the gateway answers
// 401 for authentication failures and 400 for malformed bodies.
package webhook

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/biobridge/bridge/pkg/apperr"
)

// Stable rejection reasons (apperr reasons and metric labels).
const (
	ReasonMissingSignature = "missing_signature"
	ReasonMissingTimestamp = "missing_timestamp"
	ReasonInvalidTimestamp = "invalid_timestamp"
	ReasonInvalidSignature = "invalid_signature"
	ReasonStaleTimestamp   = "stale_timestamp"
	ReasonMalformedBody    = "malformed_body"
)

// DefaultTolerance is how far a signed timestamp may be from now, either way.
const DefaultTolerance = 5 * time.Minute

// Verifier authenticates one vendor's deliveries.
type Verifier interface {
	// Verify returns nil when signature is the vendor's signature of body
	// at timestamp (both exactly as the headers carried them) and the
	// timestamp is fresh; otherwise an *apperr.Error (Unauthenticated).
	Verify(body []byte, signature, timestamp string) error
}

// hmacVerifier is the shape both vendors share: HMAC-SHA256 keyed with the
// client secret over a message built from the timestamp and the body, with
// a vendor-specific signature encoding and timestamp format.
type hmacVerifier struct {
	secret    []byte
	message   func(timestamp string, body []byte) []byte
	decodeSig func(string) ([]byte, bool)
	parseTime func(string) (time.Time, bool)
	tolerance time.Duration
	now       func() time.Time
}

// Options tunes a verifier.
type Options struct {
	// Tolerance is the accepted clock difference (default DefaultTolerance).
	Tolerance time.Duration
	// Now is the clock (default time.Now); tests inject one.
	Now func() time.Time
}

func (o Options) withDefaults() Options {
	if o.Tolerance <= 0 {
		o.Tolerance = DefaultTolerance
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return o
}

// NewWhoopVerifier verifies X-WHOOP-Signature (base64 HMAC-SHA256) and
// X-WHOOP-Signature-Timestamp (milliseconds since the epoch).
func NewWhoopVerifier(clientSecret []byte, opts Options) Verifier {
	opts = opts.withDefaults()
	return &hmacVerifier{
		secret: clientSecret, message: whoopMessage, decodeSig: decodeBase64, parseTime: parseWhoopTimestamp,
		tolerance: opts.Tolerance, now: opts.Now,
	}
}

// NewOuraVerifier verifies x-oura-signature (hex HMAC-SHA256; Oura sends
// uppercase, lowercase is accepted too) and x-oura-timestamp.
func NewOuraVerifier(clientSecret []byte, opts Options) Verifier {
	opts = opts.withDefaults()
	return &hmacVerifier{
		secret: clientSecret, message: ouraMessage, decodeSig: decodeHex, parseTime: parseOuraTimestamp,
		tolerance: opts.Tolerance, now: opts.Now,
	}
}

// whoopMessage is what WHOOP signs: the timestamp header value immediately
// followed by the raw body. One implementation in the wild inserts a "."
// between them; the documented form has no separator.
func whoopMessage(timestamp string, body []byte) []byte {
	msg := make([]byte, 0, len(timestamp)+len(body))
	msg = append(msg, timestamp...)
	return append(msg, body...)
}

// ouraMessage is what Oura signs: the x-oura-timestamp value followed by
// the raw body.
func ouraMessage(timestamp string, body []byte) []byte {
	msg := make([]byte, 0, len(timestamp)+len(body))
	msg = append(msg, timestamp...)
	return append(msg, body...)
}

// WhoopSignature signs body the way WHOOP does (tests, benchmarks, tools).
func WhoopSignature(secret []byte, timestamp string, body []byte) string {
	return base64.StdEncoding.EncodeToString(mac(secret, whoopMessage(timestamp, body)))
}

// OuraSignature signs body the way Oura does (tests, benchmarks, tools).
func OuraSignature(secret []byte, timestamp string, body []byte) string {
	return strings.ToUpper(hex.EncodeToString(mac(secret, ouraMessage(timestamp, body))))
}

func mac(secret, msg []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write(msg)
	return m.Sum(nil)
}

func (v *hmacVerifier) Verify(body []byte, signature, timestamp string) error {
	signature, timestamp = strings.TrimSpace(signature), strings.TrimSpace(timestamp)
	if signature == "" {
		return unauthenticated(ReasonMissingSignature, "the signature header is missing")
	}
	if timestamp == "" {
		return unauthenticated(ReasonMissingTimestamp, "the signature timestamp header is missing")
	}
	at, ok := v.parseTime(timestamp)
	if !ok {
		return unauthenticated(ReasonInvalidTimestamp, "the signature timestamp is not a valid time")
	}
	got, ok := v.decodeSig(signature)
	// hmac.Equal is constant time for equal lengths; a wrong length is no
	// secret (every valid signature has the same length).
	if !ok || !hmac.Equal(got, mac(v.secret, v.message(timestamp, body))) {
		return unauthenticated(ReasonInvalidSignature, "the signature does not match the body")
	}
	// Freshness is checked after authenticity so that "stale" is only ever
	// said about a genuine (replayed or delayed) delivery.
	if d := v.now().Sub(at); d > v.tolerance || d < -v.tolerance {
		return unauthenticated(ReasonStaleTimestamp,
			fmt.Sprintf("the signature timestamp is more than %s away from the server time", v.tolerance))
	}
	return nil
}

func unauthenticated(reason, msg string) error {
	return apperr.E(apperr.Unauthenticated, reason, msg)
}

func decodeBase64(s string) ([]byte, bool) {
	if b, err := base64.StdEncoding.DecodeString(s); err == nil {
		return b, true
	}
	// Unpadded base64 carries the same bytes; accepting it costs nothing.
	b, err := base64.RawStdEncoding.DecodeString(s)
	return b, err == nil
}

func decodeHex(s string) ([]byte, bool) {
	// hex.DecodeString accepts both cases.
	b, err := hex.DecodeString(s)
	return b, err == nil
}

// parseWhoopTimestamp reads milliseconds since the epoch.
func parseWhoopTimestamp(s string) (time.Time, bool) {
	ms, err := strconv.ParseInt(s, 10, 64)
	if err != nil || ms <= 0 {
		return time.Time{}, false
	}
	return time.UnixMilli(ms), true
}

// msThreshold separates seconds from milliseconds: as seconds it is the year
// 5138, as milliseconds March 1973.
const msThreshold = 100_000_000_000

// parseOuraTimestamp reads x-oura-timestamp. Oura's documentation does not
// name the unit; deliveries carry seconds since the epoch, and a value too
// large to be seconds is read as milliseconds so either works.
func parseOuraTimestamp(s string) (time.Time, bool) {
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return time.Time{}, false
	}
	if n >= msThreshold {
		return time.UnixMilli(n), true
	}
	return time.Unix(n, 0), true
}
