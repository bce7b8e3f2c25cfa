package webhooks

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"strings"
)

// WhoopSignature is WHOOP's webhook signature: base64 (standard, padded) of
// HMAC-SHA256 keyed with the client secret over the
// X-WHOOP-Signature-Timestamp header value (milliseconds since the epoch)
// immediately followed by the raw body, no separator.
func WhoopSignature(clientSecret, timestamp string, body []byte) string {
	m := hmac.New(sha256.New, []byte(clientSecret))
	m.Write([]byte(timestamp))
	m.Write(body)
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

// OuraSignature is Oura's webhook signature: uppercase hex of HMAC-SHA256
// keyed with the client secret over the x-oura-timestamp header value
// (seconds since the epoch) followed by the raw body.
func OuraSignature(clientSecret, timestamp string, body []byte) string {
	m := hmac.New(sha256.New, []byte(clientSecret))
	m.Write([]byte(timestamp))
	m.Write(body)
	return strings.ToUpper(hex.EncodeToString(m.Sum(nil)))
}
