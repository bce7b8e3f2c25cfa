package webhook

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/biobridge/bridge/pkg/apperr"
)

// MaxIDLen bounds every id taken from a webhook body; vendor ids are UUIDs
// or short decimal numbers, and the bound keeps junk out of the job table.
const MaxIDLen = 256

// WhoopEvent is a WHOOP webhook body. It is also the job payload, so the
// JSON names are WHOOP's own.
type WhoopEvent struct {
	// UserID is the WHOOP user id.
	UserID int64 `json:"user_id"`
	// ID is the record's UUID; for recovery.* it is the UUID of the sleep
	// the recovery belongs to (the v2 quirk).
	ID string `json:"id"`
	// Type is "<resource>.<action>", e.g. "sleep.updated".
	Type string `json:"type"`
	// TraceID identifies the delivery: retries of one event carry the same one.
	TraceID string `json:"trace_id,omitempty"`
}

// The WHOOP resources with webhooks.
const (
	WhoopSleep    = "sleep"
	WhoopWorkout  = "workout"
	WhoopRecovery = "recovery"
)

// The WHOOP actions: new and changed records both arrive as updated.
const (
	WhoopUpdated = "updated"
	WhoopDeleted = "deleted"
)

// Resource is the part of Type before the dot ("sleep").
func (e WhoopEvent) Resource() string {
	r, _, _ := strings.Cut(e.Type, ".")
	return r
}

// Action is the part of Type after the dot ("updated").
func (e WhoopEvent) Action() string {
	_, a, _ := strings.Cut(e.Type, ".")
	return a
}

// Supported reports whether the bridge acts on this type. Other types are
// acknowledged and ignored: WHOOP retrying them cannot help.
func (e WhoopEvent) Supported() bool {
	switch e.Resource() {
	case WhoopSleep, WhoopWorkout, WhoopRecovery:
		return e.Action() == WhoopUpdated || e.Action() == WhoopDeleted
	}
	return false
}

// VendorUserID is the WHOOP user id as the token broker stores it.
func (e WhoopEvent) VendorUserID() string { return strconv.FormatInt(e.UserID, 10) }

// DeliveryID is the deduplication key: the trace_id. A delivery without one
// cannot be told apart from a later change of the same record by its fields
// alone (WHOOP sends new and changed records alike as *.updated), so the key
// then also covers the signature timestamp: a retry with a new timestamp
// costs one more idempotent fetch, while a key of the fields alone would
// drop every later change of the record as a duplicate.
func (e WhoopEvent) DeliveryID(signatureTimestamp string) string {
	if e.TraceID != "" {
		return e.TraceID
	}
	return fieldHash(e.VendorUserID(), e.Type, e.ID, signatureTimestamp)
}

// ParseWhoop parses and validates a WHOOP webhook body. user_id may be a
// JSON number or a decimal string; unknown fields are ignored (vendors add
// fields); an unknown type parses fine and is reported by Supported.
func ParseWhoop(body []byte) (WhoopEvent, error) {
	var raw struct {
		UserID  json.RawMessage `json:"user_id"`
		ID      *string         `json:"id"`
		Type    *string         `json:"type"`
		TraceID *string         `json:"trace_id"`
	}
	if err := decodeObject(body, &raw); err != nil {
		return WhoopEvent{}, err
	}
	var ev WhoopEvent
	uid, err := parseWhoopUserID(raw.UserID)
	if err != nil {
		return WhoopEvent{}, malformed(err.Error())
	}
	ev.UserID = uid
	if ev.ID, err = requiredID("id", raw.ID); err != nil {
		return WhoopEvent{}, err
	}
	if ev.Type, err = requiredID("type", raw.Type); err != nil {
		return WhoopEvent{}, err
	}
	if r, a, ok := strings.Cut(ev.Type, "."); !ok || r == "" || a == "" {
		return WhoopEvent{}, malformed(`type must look like "<resource>.<action>"`)
	}
	if raw.TraceID != nil && *raw.TraceID != "" {
		if ev.TraceID, err = requiredID("trace_id", raw.TraceID); err != nil {
			return WhoopEvent{}, err
		}
	}
	return ev, nil
}

func parseWhoopUserID(raw json.RawMessage) (int64, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return 0, errors.New("user_id is required")
	}
	s := string(raw)
	if raw[0] == '"' {
		if err := json.Unmarshal(raw, &s); err != nil {
			return 0, errors.New("user_id must be an integer")
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n <= 0 {
		return 0, errors.New("user_id must be a positive integer")
	}
	return n, nil
}

// OuraEvent is an Oura webhook body, also stored as the job payload.
type OuraEvent struct {
	// EventType is "create", "update" or "delete".
	EventType string `json:"event_type"`
	// DataType is the usercollection the object belongs to, e.g. "sleep".
	DataType string `json:"data_type"`
	// ObjectID is the document id.
	ObjectID string `json:"object_id"`
	// EventTime is when the change happened, exactly as sent.
	EventTime string `json:"event_time"`
	// UserID is the Oura user id.
	UserID string `json:"user_id"`
}

// The Oura event types.
const (
	OuraCreate = "create"
	OuraUpdate = "update"
	OuraDelete = "delete"
)

// DeliveryID is the deduplication key. Oura sends no delivery id, so the
// identity of the event is a hash of all its fields: a retry repeats them,
// a new change of the same document has a new event_time.
func (e OuraEvent) DeliveryID() string {
	return fieldHash(e.EventType, e.DataType, e.ObjectID, e.EventTime, e.UserID)
}

// Time is EventTime parsed (validated by ParseOura).
func (e OuraEvent) Time() time.Time {
	t, _ := parseOuraEventTime(e.EventTime)
	return t
}

// ParseOura parses and validates an Oura webhook body.
func ParseOura(body []byte) (OuraEvent, error) {
	var raw struct {
		EventType *string `json:"event_type"`
		DataType  *string `json:"data_type"`
		ObjectID  *string `json:"object_id"`
		EventTime *string `json:"event_time"`
		UserID    *string `json:"user_id"`
	}
	if err := decodeObject(body, &raw); err != nil {
		return OuraEvent{}, err
	}
	var ev OuraEvent
	var err error
	if ev.EventType, err = requiredID("event_type", raw.EventType); err != nil {
		return OuraEvent{}, err
	}
	switch ev.EventType {
	case OuraCreate, OuraUpdate, OuraDelete:
	default:
		return OuraEvent{}, malformed("event_type must be create, update or delete")
	}
	if ev.DataType, err = requiredID("data_type", raw.DataType); err != nil {
		return OuraEvent{}, err
	}
	if strings.IndexFunc(ev.DataType, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_')
	}) >= 0 || len(ev.DataType) > 64 {
		return OuraEvent{}, malformed("data_type must be a short identifier")
	}
	if ev.ObjectID, err = requiredID("object_id", raw.ObjectID); err != nil {
		return OuraEvent{}, err
	}
	if ev.UserID, err = requiredID("user_id", raw.UserID); err != nil {
		return OuraEvent{}, err
	}
	if ev.EventTime, err = requiredID("event_time", raw.EventTime); err != nil {
		return OuraEvent{}, err
	}
	if _, ok := parseOuraEventTime(ev.EventTime); !ok {
		return OuraEvent{}, malformed("event_time must be an ISO 8601 date-time")
	}
	return ev, nil
}

// parseOuraEventTime accepts RFC 3339 (what Oura sends) and, leniently, a
// date-time without a zone, read as UTC.
func parseOuraEventTime(s string) (time.Time, bool) {
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02T15:04:05.999999999"} {
		if t, err := time.Parse(layout, s); err == nil {
			return t.UTC(), true
		}
	}
	return time.Time{}, false
}

// decodeObject decodes exactly one JSON object from body.
func decodeObject(body []byte, dst any) error {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return malformed("the body is empty")
	}
	if body[0] != '{' {
		return malformed("the body must be a JSON object")
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	if err := dec.Decode(dst); err != nil {
		return malformed("the body is not valid JSON for this webhook: " + jsonProblem(err))
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return malformed("the body has data after the JSON object")
	}
	return nil
}

// jsonProblem describes a decoding error without echoing body content.
func jsonProblem(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("field %s has the wrong type", te.Field)
	}
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("syntax error at byte %d", se.Offset)
	}
	return "invalid JSON"
}

func requiredID(name string, v *string) (string, error) {
	if v == nil || *v == "" {
		return "", malformed(name + " is required")
	}
	s := *v
	if len(s) > MaxIDLen {
		return "", malformed(fmt.Sprintf("%s is longer than %d bytes", name, MaxIDLen))
	}
	if !utf8.ValidString(s) || strings.IndexFunc(s, func(r rune) bool {
		return unicode.IsControl(r) || unicode.IsSpace(r)
	}) >= 0 {
		return "", malformed(name + " contains spaces or control characters")
	}
	return s, nil
}

func malformed(msg string) error {
	return apperr.E(apperr.Invalid, ReasonMalformedBody, msg)
}

func fieldHash(fields ...string) string {
	h := sha256.New()
	for _, f := range fields {
		h.Write([]byte(f))
		h.Write([]byte{0})
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}
