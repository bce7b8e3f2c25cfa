// Package record turns incoming events into the normalized form the store
// keeps: readings validated against the metric catalog, in canonical units,
// truncated to the microsecond precision PostgreSQL stores, sorted, and
// summarized by a content hash. The hash is what makes a redelivery of the
// same content a duplicate and a changed record a new version, so everything
// that goes into it must be deterministic.
package record

import (
	"cmp"
	"crypto/sha256"
	"encoding/binary"
	"math"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	"github.com/biobridge/bridge/pkg/catalog"
)

// Limits on identifiers. They keep index entries small and Redis keys sane;
// no vendor id comes close.
const (
	MaxUserIDLen   = 128
	MaxRecordIDLen = 256
	MaxKindLen     = 64
	MaxDeviceLen   = 256
	// MaxReadings bounds one record's readings (a day of per-second heart
	// rate is 86400).
	MaxReadings = 100_000
)

// Event-level rejection reasons.
const (
	ReasonInvalidEvent    = "invalid_event"
	ReasonNoValidReadings = "no_valid_readings"
)

// Reading-level rejection reasons beyond the catalog's.
const (
	ReasonMissingTime = "missing_time"
	ReasonInvalidTime = "invalid_time"
)

// Device is a reading's provenance.
type Device struct {
	Name, Model, BundleID string
}

// Reading is one normalized reading.
type Reading struct {
	Metric     string
	Unit       string
	Value      float64
	ObservedAt time.Time
	// StartTime is zero when the reading is not an interval.
	StartTime time.Time
	Device    Device
}

// Event is one normalized record version.
type Event struct {
	UserID         string
	Source         biometricsv1.Source
	Kind           string
	VendorRecordID string
	// OccurredAt may be zero (unknown).
	OccurredAt time.Time
	// Readings are sorted by (metric, observed_at, start_time, value,
	// device); a reading's index is its seq, part of its stored identity.
	Readings []Reading
	Hash     [sha256.Size]byte
}

// Key is a record's identity. It includes the user: a vendor record id is
// only unique within one user's data (a HealthKit UUID from one phone must
// never touch another user's record).
type Key struct {
	UserID         string
	Source         biometricsv1.Source
	VendorRecordID string
}

// Key returns the event's record identity.
func (e *Event) Key() Key {
	return Key{UserID: e.UserID, Source: e.Source, VendorRecordID: e.VendorRecordID}
}

// Rejection is one reading that was not accepted.
type Rejection struct {
	Index   int
	Metric  string
	Reason  string
	Message string
}

// Normalize validates in and returns the normalized event and the rejected
// readings. reason is non-empty when the whole event is rejected (then
// message explains it without echoing values).
func Normalize(in *persistencev1.EventInput) (ev Event, rejected []Rejection, reason, message string) {
	if msg := validateIdentity(in.GetUserId(), in.GetSource(), in.GetVendorRecordId()); msg != "" {
		return Event{}, nil, ReasonInvalidEvent, msg
	}
	if len(in.GetKind()) > MaxKindLen || !cleanString(in.GetKind()) {
		return Event{}, nil, ReasonInvalidEvent, "kind is too long or contains control characters"
	}
	if len(in.GetReadings()) > MaxReadings {
		return Event{}, nil, ReasonInvalidEvent, "too many readings in one event"
	}
	ev = Event{
		UserID:         in.GetUserId(),
		Source:         in.GetSource(),
		Kind:           in.GetKind(),
		VendorRecordID: in.GetVendorRecordId(),
	}
	if ts := in.GetOccurredAt(); ts != nil {
		if ts.CheckValid() != nil {
			return Event{}, nil, ReasonInvalidEvent, "occurred_at is not a valid timestamp"
		}
		ev.OccurredAt = Micros(ts.AsTime())
	}
	ev.Readings = make([]Reading, 0, len(in.GetReadings()))
	for i, r := range in.GetReadings() {
		m, why, msg := catalog.Validate(r.GetMetric(), r.GetValue())
		if why == "" {
			why, msg = checkTimes(r)
		}
		if why != "" {
			rejected = append(rejected, Rejection{Index: i, Metric: r.GetMetric(), Reason: why, Message: msg})
			continue
		}
		nr := Reading{
			Metric:     m.Name,
			Unit:       m.Unit,
			Value:      r.GetValue(),
			ObservedAt: Micros(r.GetObservedAt().AsTime()),
			Device: Device{
				Name:     cleanDevice(r.GetDevice().GetName()),
				Model:    cleanDevice(r.GetDevice().GetModel()),
				BundleID: cleanDevice(r.GetDevice().GetBundleId()),
			},
		}
		if r.GetStartTime() != nil {
			nr.StartTime = Micros(r.GetStartTime().AsTime())
		}
		if nr.Value == 0 {
			nr.Value = 0 // -0 and 0 must hash the same
		}
		ev.Readings = append(ev.Readings, nr)
	}
	if len(ev.Readings) == 0 {
		return Event{}, rejected, ReasonNoValidReadings, "the event has no valid readings"
	}
	slices.SortFunc(ev.Readings, compareReadings)
	ev.Hash = hashContent(ev.Kind, ev.Readings)
	return ev, rejected, "", ""
}

// ValidateKey checks a record reference (for deletions); it returns a
// message when the reference is invalid.
func ValidateKey(k Key) string {
	return validateIdentity(k.UserID, k.Source, k.VendorRecordID)
}

// ValidateUserID returns a message when id cannot be a user id.
func ValidateUserID(id string) string {
	switch {
	case id == "":
		return "user_id is required"
	case len(id) > MaxUserIDLen:
		return "user_id is too long"
	case !utf8.ValidString(id) || strings.ContainsAny(id, "{}") || !cleanString(id):
		// Braces would break the Redis Cluster hash tag {u:<id>}.
		return "user_id contains characters that are not allowed"
	}
	return ""
}

func validateIdentity(user string, source biometricsv1.Source, recordID string) string {
	if msg := ValidateUserID(user); msg != "" {
		return msg
	}
	if _, ok := biometricsv1.Source_name[int32(source)]; !ok || source == biometricsv1.Source_SOURCE_UNSPECIFIED {
		return "source is required"
	}
	switch {
	case recordID == "":
		return "vendor_record_id is required"
	case len(recordID) > MaxRecordIDLen:
		return "vendor_record_id is too long"
	case !cleanString(recordID):
		return "vendor_record_id contains control characters"
	}
	return ""
}

func checkTimes(r *biometricsv1.Reading) (reason, message string) {
	if r.GetObservedAt() == nil {
		return ReasonMissingTime, "observed_at is required"
	}
	if r.GetObservedAt().CheckValid() != nil {
		return ReasonInvalidTime, "observed_at is not a valid timestamp"
	}
	if st := r.GetStartTime(); st != nil {
		if st.CheckValid() != nil {
			return ReasonInvalidTime, "start_time is not a valid timestamp"
		}
		if st.AsTime().After(r.GetObservedAt().AsTime()) {
			return ReasonInvalidTime, "start_time is after observed_at"
		}
	}
	return "", ""
}

// cleanString rejects control characters: NUL cannot be stored in a
// PostgreSQL text column and would fail the whole transaction.
func cleanString(s string) bool {
	for _, r := range s {
		if r < 0x20 || r == 0x7f {
			return false
		}
	}
	return true
}

// cleanDevice makes device provenance storable instead of rejecting a
// reading over a cosmetic field.
func cleanDevice(s string) string {
	s = strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return -1
		}
		return r
	}, s)
	if len(s) > MaxDeviceLen {
		s = s[:MaxDeviceLen]
		for !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
	}
	return s
}

// Micros truncates t to microseconds in UTC, PostgreSQL's precision, so a
// value read back equals the value written (and hashes the same).
func Micros(t time.Time) time.Time {
	return t.Truncate(time.Microsecond).UTC()
}

func compareReadings(a, b Reading) int {
	return cmp.Or(
		strings.Compare(a.Metric, b.Metric),
		a.ObservedAt.Compare(b.ObservedAt),
		a.StartTime.Compare(b.StartTime),
		cmp.Compare(a.Value, b.Value),
		strings.Compare(a.Device.Name, b.Device.Name),
		strings.Compare(a.Device.Model, b.Device.Model),
		strings.Compare(a.Device.BundleID, b.Device.BundleID),
	)
}

// hashContent hashes the record's content: its kind and readings. The
// source's occurred_at is left out on purpose: vendors bump their
// updated_at without changing any value, and that must stay a duplicate.
func hashContent(kind string, rs []Reading) [sha256.Size]byte {
	// Appended to a buffer on the stack (a reading with its device takes
	// about 100 bytes) rather than through binary.Write, which boxed every
	// value; the bytes are the same (TestContentHashEncodingIsStable).
	var stack [512]byte
	b := appendHashString(stack[:0], "biometrics.record.v1")
	b = appendHashString(b, kind)
	b = binary.BigEndian.AppendUint64(b, uint64(len(rs)))
	for _, r := range rs {
		b = appendHashString(b, r.Metric)
		b = binary.BigEndian.AppendUint64(b, uint64(r.ObservedAt.UnixMicro()))
		if r.StartTime.IsZero() {
			b = append(b, 0)
		} else {
			b = append(b, 1)
			b = binary.BigEndian.AppendUint64(b, uint64(r.StartTime.UnixMicro()))
		}
		b = binary.BigEndian.AppendUint64(b, math.Float64bits(r.Value))
		b = appendHashString(b, r.Device.Name)
		b = appendHashString(b, r.Device.Model)
		b = appendHashString(b, r.Device.BundleID)
	}
	return sha256.Sum256(b)
}

func appendHashString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}
