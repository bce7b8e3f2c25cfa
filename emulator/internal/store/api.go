package store

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Sentinel errors returned by the Go API; the admin API maps them to 404,
// 400 and 503.
var (
	ErrNotFound = errors.New("not found")
	ErrInvalid  = errors.New("invalid request")
	ErrClosed   = errors.New("emulator closed")
)

// ParseVendor checks a vendor name from a request.
func ParseVendor(s string) (Vendor, error) {
	switch Vendor(s) {
	case Whoop, Oura:
		return Vendor(s), nil
	}
	return "", fmt.Errorf("%w: unknown vendor %q (want whoop or oura)", ErrInvalid, s)
}

// UserSpec describes an emulated user to add.
type UserSpec struct {
	// Name is how tests, the admin API and OAuth's login_hint refer to the
	// user. Required; letters, digits, '-', '_', '.' and '@'.
	Name string `json:"name"`
	// Email defaults to <name>@example.test.
	Email string `json:"email,omitempty"`
	// UTCOffsetMinutes is the user's local time zone (WHOOP's
	// timezone_offset, Oura's "day" boundaries). Default 0.
	UTCOffsetMinutes int `json:"utc_offset_minutes,omitempty"`
}

// User is an emulated user as the admin API reports it.
type User struct {
	Name        string `json:"name"`
	Email       string `json:"email"`
	WhoopUserID int64  `json:"whoop_user_id"`
	OuraUserID  string `json:"oura_user_id"`
	UTCOffset   string `json:"utc_offset"`
	// WhoopConnected / OuraConnected: the user has an unrevoked grant for
	// that vendor (authorized through OAuth and not revoked or broken).
	WhoopConnected bool `json:"whoop_connected"`
	OuraConnected  bool `json:"oura_connected"`
}

// RecordSpec describes a record to create for an emulated user.
//
// WHOOP types: "sleep" creates a sleep and, unless Nap, the cycle that
// starts with it and that cycle's recovery (webhooks sleep.updated and
// recovery.updated, both with the sleep's id: the v2 quirk); "workout"
// creates a workout (workout.updated). Oura types: "sleep",
// "daily_sleep", "daily_readiness", "daily_spo2" (webhook event_type
// "create") and "heartrate" (5-minute samples over [Start, End), no
// webhook: Oura sends none for heart rate).
type RecordSpec struct {
	User   string `json:"user"`
	Vendor Vendor `json:"vendor"`
	Type   string `json:"type"`
	// Start and End bound the sleep, workout or heart-rate series. End
	// defaults to now; Start to a plausible duration before End.
	Start time.Time `json:"start,omitzero"`
	End   time.Time `json:"end,omitzero"`
	// Day (YYYY-MM-DD) is the Oura "day"; default End's date in the user's
	// time zone.
	Day string `json:"day,omitempty"`
	// ScoreState (WHOOP): SCORED (default), PENDING_SCORE or UNSCORABLE.
	// A PENDING_SCORE record is served without a score until ScoreRecord
	// (or Config.ScoreDelay) scores it, which sends *.updated again.
	ScoreState string `json:"score_state,omitempty"`
	// Nap (WHOOP sleep): a nap joins the current cycle and has no recovery.
	Nap bool `json:"nap,omitempty"`
	// SportName (WHOOP workout), default a random sport.
	SportName string `json:"sport_name,omitempty"`
	// Values pins fields by their vendor JSON name (for a WHOOP sleep also
	// its recovery's and cycle's score fields, e.g. "recovery_score",
	// "hrv_rmssd_milli", "strain"; for Oura heartrate "bpm"). Unknown names
	// are rejected with the list of allowed ones.
	Values map[string]float64 `json:"values,omitempty"`
	// NoWebhook skips the webhook, as if the vendor had missed it.
	NoWebhook bool `json:"no_webhook,omitempty"`
}

// Record is a record as the vendor API serves it.
type Record struct {
	Vendor Vendor `json:"vendor"`
	// Type is sleep, recovery, cycle or workout (WHOOP), or the Oura
	// data_type.
	Type string `json:"type"`
	// ID is what webhooks carry: the WHOOP sleep or workout UUID (a
	// recovery's ID is its sleep's UUID), the cycle id as a decimal string,
	// the Oura document id ("" for heartrate).
	ID   string `json:"id"`
	User string `json:"user"`
	// Data is the JSON document exactly as the vendor API serves it.
	Data json.RawMessage `json:"data"`
}

// RecordFilter selects records for ListRecords; empty fields match all.
type RecordFilter struct {
	User   string
	Vendor Vendor
	Type   string
}

// HistorySpec asks for synthetic history for one user.
type HistorySpec struct {
	User string `json:"user"`
	// Vendors to generate for; empty means both.
	Vendors []Vendor `json:"vendors,omitempty"`
	// Days of history, 1..400, ending with the night before End.
	Days int `json:"days"`
	// End defaults to now; nothing after it is generated.
	End time.Time `json:"end,omitzero"`
	// Webhooks delivers a webhook for every generated record. Default off:
	// history is data that predates the subscription, found by backfill.
	Webhooks bool `json:"webhooks,omitempty"`
}

// HistoryResult counts what GenerateHistory created, keyed "vendor/type"
// (e.g. "whoop/sleep", "oura/heartrate").
type HistoryResult struct {
	Records map[string]int `json:"records"`
}

// DemoResult says what one demo round produced.
type DemoResult struct {
	Users   int `json:"users"`
	Records int `json:"records"`
}

// APIHandler serves one vendor data endpoint for an authenticated grant and
// its user; it is called without State.Mu held.
type APIHandler func(w http.ResponseWriter, r *http.Request, g *Grant, u *Person)
