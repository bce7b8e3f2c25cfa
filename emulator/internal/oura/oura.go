// Package oura serves the emulated Oura API v2 from the users' records in
// store.State: personal_info, the usercollection documents and heart rate,
// and the app-level webhook subscriptions with their verification
// handshake. Counting, latency, rate limits, injected faults, bearer
// authentication and scope checks for the data endpoints happen in the
// Guard the caller wraps them with.
package oura

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/biobridge/bridge/emulator/internal/jsonhttp"
	"github.com/biobridge/bridge/emulator/internal/store"
	"github.com/biobridge/bridge/emulator/internal/webhooks"
)

// Config is what the Oura API needs from the emulator's configuration.
type Config struct {
	ClientID, ClientSecret      string
	PageSize, HeartRatePageSize int
	// DateRangeQuirk serves end_date the way the live API has been seen
	// doing instead of as documented.
	DateRangeQuirk bool
	// SubscriptionTTL is how long a webhook subscription lives.
	SubscriptionTTL time.Duration
	// HTTPClient and WebhookTimeout are used by the verification handshake.
	HTTPClient     *http.Client
	WebhookTimeout time.Duration
}

// Guard wraps a data endpoint needing scope ("" none) with the emulator's
// per-request checks and resolves the grant and its user.
type Guard func(scope string, h store.APIHandler) http.Handler

// API is the Oura API over one State.
type API struct {
	st       *store.State
	cfg      Config
	counters *store.CounterSet
}

// New returns the Oura API over st.
func New(st *store.State, cfg Config, counters *store.CounterSet) *API {
	return &API{st: st, cfg: cfg, counters: counters}
}

// knownTypes are the usercollection data types the real API serves; the ones
// not stored answer with empty collections so a client that walks them all
// keeps working.
var knownTypes = map[string]bool{
	"sleep": true, "daily_sleep": true, "daily_readiness": true, "daily_spo2": true, "heartrate": true,
	"daily_activity": true, "daily_stress": true, "daily_resilience": true, "daily_cardiovascular_age": true,
	"workout": true, "session": true, "tag": true, "enhanced_tag": true, "sleep_time": true,
	"rest_mode_period": true, "ring_configuration": true, "vO2_max": true,
}

// webhookTypes are the data types Oura sends webhooks for.
var webhookTypes = []string{
	"tag", "enhanced_tag", "workout", "session", "sleep", "daily_sleep", "daily_readiness", "daily_activity",
	"daily_spo2", "sleep_time", "rest_mode_period", "ring_configuration", "daily_stress",
	"daily_cardiovascular_age", "daily_resilience", "vo2_max",
}

// scopeFor is the scope that unlocks a data type (the scope list is in
// internal/oauth).
func scopeFor(dataType string) string {
	switch dataType {
	case "heartrate":
		return "heartrate"
	case "daily_spo2":
		return "spo2Daily"
	case "workout":
		return "workout"
	case "session":
		return "session"
	case "tag", "enhanced_tag":
		return "tag"
	}
	return "daily"
}

// Routes registers the Oura API under /oura.
func (a *API) Routes(mux *http.ServeMux, guard Guard) {
	mux.Handle("GET /oura/v2/usercollection/personal_info", guard("personal", a.personalInfo))
	mux.Handle("GET /oura/v2/usercollection/{data_type}", guard("", a.collection))
	mux.Handle("GET /oura/v2/usercollection/{data_type}/{id}", guard("", a.document))
	mux.Handle("/oura/v2/usercollection/", guard("", func(w http.ResponseWriter, _ *http.Request, _ *store.Grant, _ *store.Person) {
		Error(w, http.StatusNotFound, "Not Found")
	}))
	mux.HandleFunc("POST /oura/v2/webhook/subscription", a.subAPI(a.createSub))
	mux.HandleFunc("GET /oura/v2/webhook/subscription", a.subAPI(a.listSubs))
	mux.HandleFunc("GET /oura/v2/webhook/subscription/{id}", a.subAPI(a.getSub))
	mux.HandleFunc("PUT /oura/v2/webhook/subscription/{id}", a.subAPI(a.updateSub))
	mux.HandleFunc("DELETE /oura/v2/webhook/subscription/{id}", a.subAPI(a.deleteSub))
	mux.HandleFunc("PUT /oura/v2/webhook/subscription/renew/{id}", a.subAPI(a.renewSub))
}

// Error writes Oura's error body.
func Error(w http.ResponseWriter, status int, detail string) {
	jsonhttp.Write(w, status, map[string]string{"detail": detail})
}

func (a *API) personalInfo(w http.ResponseWriter, _ *http.Request, g *store.Grant, u *store.Person) {
	sex := "male"
	if u.Base.Female {
		sex = "female"
	}
	info := map[string]any{
		"id": u.OuraID, "age": u.Base.Age, "weight": u.Base.WeightKg, "height": u.Base.HeightM, "biological_sex": sex,
	}
	// Oura only reveals the email with the email scope.
	if g.Scopes["email"] {
		info["email"] = u.Email
	}
	jsonhttp.Write(w, http.StatusOK, info)
}

func (a *API) document(w http.ResponseWriter, r *http.Request, g *store.Grant, u *store.Person) {
	dt := r.PathValue("data_type")
	if !knownTypes[dt] || dt == "heartrate" {
		Error(w, http.StatusNotFound, "Not Found")
		return
	}
	if !g.Has(scopeFor(dt)) {
		Error(w, http.StatusForbidden, "missing scope "+scopeFor(dt))
		return
	}
	a.st.Mu.Lock()
	defer a.st.Mu.Unlock()
	d, ok := u.Oura[dt][r.PathValue("id")]
	if !ok {
		Error(w, http.StatusNotFound, "Document not found")
		return
	}
	jsonhttp.Write(w, http.StatusOK, d.V)
}

// collection serves /v2/usercollection/{data_type}: documents filtered by
// day (start_date/end_date, default yesterday..today in the user's zone),
// heartrate by time (start_datetime inclusive, end_datetime exclusive,
// default the last 24h, at most 30 days), ascending, paged by next_token.
func (a *API) collection(w http.ResponseWriter, r *http.Request, g *store.Grant, u *store.Person) {
	dt := r.PathValue("data_type")
	if !knownTypes[dt] {
		Error(w, http.StatusNotFound, "Not Found")
		return
	}
	if !g.Has(scopeFor(dt)) {
		Error(w, http.StatusForbidden, "missing scope "+scopeFor(dt))
		return
	}
	q := r.URL.Query()
	a.st.Mu.Lock()
	defer a.st.Mu.Unlock()
	now := a.st.Now()
	var items []store.PageItem
	size := a.cfg.PageSize
	if dt == "heartrate" {
		size = a.cfg.HeartRatePageSize
		end, err := parseOuraDateTime(q.Get("end_datetime"), now)
		if err != nil {
			Error(w, http.StatusBadRequest, "end_datetime: "+err.Error())
			return
		}
		start, err := parseOuraDateTime(q.Get("start_datetime"), end.Add(-24*time.Hour))
		if err != nil {
			Error(w, http.StatusBadRequest, "start_datetime: "+err.Error())
			return
		}
		if end.Sub(start) > 30*24*time.Hour {
			Error(w, http.StatusBadRequest, "the datetime range must not exceed 30 days")
			return
		}
		lo, _ := slices.BinarySearchFunc(u.Heartrate, start, func(s *store.OuraHR, t time.Time) int { return s.T.Compare(t) })
		for _, s := range u.Heartrate[lo:] {
			if !s.T.Before(end) {
				break
			}
			items = append(items, store.PageItem{Key: s.T, ID: "", V: s})
		}
	} else {
		loc := u.Zone()
		today := now.In(loc).Format(time.DateOnly)
		endDay, err := parseOuraDate(q.Get("end_date"), today, loc)
		if err != nil {
			Error(w, http.StatusBadRequest, "end_date: "+err.Error())
			return
		}
		t, _ := time.Parse(time.DateOnly, endDay)
		startDay, err := parseOuraDate(q.Get("start_date"), t.AddDate(0, 0, -1).Format(time.DateOnly), loc)
		if err != nil {
			Error(w, http.StatusBadRequest, "start_date: "+err.Error())
			return
		}
		for _, d := range u.Oura[dt] {
			if !a.dayInRange(dt, d.Day, startDay, endDay) {
				continue
			}
			items = append(items, store.PageItem{Key: d.TS, ID: d.ID, V: d.V})
		}
	}
	page, next, err := store.Paginate(items, false, q.Get("next_token"), size)
	if err != nil {
		Error(w, http.StatusBadRequest, "invalid next_token")
		return
	}
	data := make([]any, 0, len(page))
	for _, it := range page {
		data = append(data, it.V)
	}
	resp := map[string]any{"data": data, "next_token": nil}
	if next != "" {
		resp["next_token"] = next
	}
	jsonhttp.Write(w, http.StatusOK, resp)
}

// dayInRange applies the documented inclusive range, or with
// Config.OuraDateRangeQuirk what the live API has been seen doing.
func (a *API) dayInRange(dataType, day, start, end string) bool {
	if !a.cfg.DateRangeQuirk {
		return day >= start && day <= end
	}
	if dataType == "sleep" {
		return day > start && day <= end
	}
	return day >= start && day < end
}

// parseOuraDate accepts YYYY-MM-DD or a date-time (its date in the user's
// zone counts).
func parseOuraDate(s, def string, loc *time.Location) (string, error) {
	if s == "" {
		return def, nil
	}
	if _, err := time.Parse(time.DateOnly, s); err == nil {
		return s, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return "", fmt.Errorf("want YYYY-MM-DD")
	}
	return t.In(loc).Format(time.DateOnly), nil
}

func parseOuraDateTime(s string, def time.Time) (time.Time, error) {
	if s == "" {
		return def, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t, nil
	}
	return time.Time{}, fmt.Errorf("want an ISO 8601 date-time")
}

// subAPI authenticates the app (x-client-id / x-client-secret) and counts
// the call.
func (a *API) subAPI(h func(http.ResponseWriter, *http.Request)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		a.counters.Count(store.Oura, func(v *store.VendorCounters) { v.APICalls[strings.TrimPrefix(r.Pattern, "/oura")]++; v.APICallsTotal++ })
		id, secret := r.Header.Get("x-client-id"), r.Header.Get("x-client-secret")
		if subtle.ConstantTimeCompare([]byte(id), []byte(a.cfg.ClientID)) != 1 ||
			subtle.ConstantTimeCompare([]byte(secret), []byte(a.cfg.ClientSecret)) != 1 {
			Error(w, http.StatusUnauthorized, "invalid client credentials")
			return
		}
		h(w, r)
	}
}

type subRequest struct {
	CallbackURL       string `json:"callback_url"`
	VerificationToken string `json:"verification_token"`
	EventType         string `json:"event_type"`
	DataType          string `json:"data_type"`
}

func validSub(eventType, dataType string) error {
	if eventType != "create" && eventType != "update" && eventType != "delete" {
		return fmt.Errorf("event_type must be create, update or delete")
	}
	if !slices.Contains(webhookTypes, dataType) {
		return fmt.Errorf("unsupported data_type %q", dataType)
	}
	return nil
}

func (a *API) createSub(w http.ResponseWriter, r *http.Request) {
	var req subRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil {
		Error(w, http.StatusBadRequest, "malformed json body")
		return
	}
	if err := validSub(req.EventType, req.DataType); err != nil {
		Error(w, http.StatusUnprocessableEntity, err.Error())
		return
	}
	if err := store.CheckHTTPURL(req.CallbackURL); err != nil || req.VerificationToken == "" {
		Error(w, http.StatusUnprocessableEntity, "callback_url must be an absolute http(s) url and verification_token is required")
		return
	}
	a.st.Mu.Lock()
	dup := a.activeSubLocked(req.EventType, req.DataType, "") != nil
	a.st.Mu.Unlock()
	if dup {
		Error(w, http.StatusConflict, "a subscription for this event_type and data_type already exists")
		return
	}
	if err := a.Handshake(r.Context(), req.CallbackURL, req.VerificationToken); err != nil {
		Error(w, http.StatusBadRequest, "callback verification failed: "+err.Error())
		return
	}
	a.st.Mu.Lock()
	defer a.st.Mu.Unlock()
	if a.activeSubLocked(req.EventType, req.DataType, "") != nil {
		Error(w, http.StatusConflict, "a subscription for this event_type and data_type already exists")
		return
	}
	s := &store.Subscription{
		ID: a.st.UUIDLocked(), CallbackURL: req.CallbackURL, EventType: req.EventType, DataType: req.DataType,
		ExpirationTime: a.st.Now().Add(a.cfg.SubscriptionTTL), VerificationToken: req.VerificationToken,
	}
	a.st.Subs[s.ID] = s
	a.st.SubOrder = append(a.st.SubOrder, s)
	jsonhttp.Write(w, http.StatusCreated, s)
}

// activeSubLocked finds an unexpired subscription for the pair, other than
// except.
func (a *API) activeSubLocked(eventType, dataType, except string) *store.Subscription {
	now := a.st.Now()
	for _, s := range a.st.SubOrder {
		if s.ID != except && s.EventType == eventType && s.DataType == dataType && s.ExpirationTime.After(now) {
			return s
		}
	}
	return nil
}

func (a *API) listSubs(w http.ResponseWriter, _ *http.Request) {
	a.st.Mu.Lock()
	defer a.st.Mu.Unlock()
	out := make([]*store.Subscription, 0, len(a.st.SubOrder))
	out = append(out, a.st.SubOrder...)
	jsonhttp.Write(w, http.StatusOK, out)
}

func (a *API) getSub(w http.ResponseWriter, r *http.Request) {
	a.st.Mu.Lock()
	defer a.st.Mu.Unlock()
	s, ok := a.st.Subs[r.PathValue("id")]
	if !ok {
		Error(w, http.StatusNotFound, "subscription not found")
		return
	}
	jsonhttp.Write(w, http.StatusOK, s)
}

func (a *API) updateSub(w http.ResponseWriter, r *http.Request) {
	var req subRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil {
		Error(w, http.StatusBadRequest, "malformed json body")
		return
	}
	if req.VerificationToken == "" {
		Error(w, http.StatusUnprocessableEntity, "verification_token is required")
		return
	}
	id := r.PathValue("id")
	a.st.Mu.Lock()
	s, ok := a.st.Subs[id]
	var cur store.Subscription
	if ok {
		cur = *s
	}
	a.st.Mu.Unlock()
	if !ok {
		Error(w, http.StatusNotFound, "subscription not found")
		return
	}
	if req.CallbackURL != "" {
		cur.CallbackURL = req.CallbackURL
	}
	if req.EventType != "" {
		cur.EventType = req.EventType
	}
	if req.DataType != "" {
		cur.DataType = req.DataType
	}
	if err := validSub(cur.EventType, cur.DataType); err != nil {
		Error(w, http.StatusUnprocessableEntity, err.Error())
		return
	}
	if err := store.CheckHTTPURL(cur.CallbackURL); err != nil {
		Error(w, http.StatusUnprocessableEntity, "callback_url must be an absolute http(s) url")
		return
	}
	// A changed callback or token is verified again, as on creation.
	if cur.CallbackURL != s.CallbackURL || req.VerificationToken != cur.VerificationToken {
		if err := a.Handshake(r.Context(), cur.CallbackURL, req.VerificationToken); err != nil {
			Error(w, http.StatusBadRequest, "callback verification failed: "+err.Error())
			return
		}
	}
	a.st.Mu.Lock()
	defer a.st.Mu.Unlock()
	s, ok = a.st.Subs[id]
	if !ok {
		Error(w, http.StatusNotFound, "subscription not found")
		return
	}
	if a.activeSubLocked(cur.EventType, cur.DataType, id) != nil {
		Error(w, http.StatusConflict, "a subscription for this event_type and data_type already exists")
		return
	}
	s.CallbackURL, s.EventType, s.DataType, s.VerificationToken = cur.CallbackURL, cur.EventType, cur.DataType, req.VerificationToken
	jsonhttp.Write(w, http.StatusOK, s)
}

func (a *API) deleteSub(w http.ResponseWriter, r *http.Request) {
	a.st.Mu.Lock()
	defer a.st.Mu.Unlock()
	if !a.st.RemoveSubLocked(r.PathValue("id")) {
		Error(w, http.StatusNotFound, "subscription not found")
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (a *API) renewSub(w http.ResponseWriter, r *http.Request) {
	a.st.Mu.Lock()
	defer a.st.Mu.Unlock()
	s, ok := a.st.Subs[r.PathValue("id")]
	if !ok {
		Error(w, http.StatusNotFound, "subscription not found")
		return
	}
	s.ExpirationTime = a.st.Now().Add(a.cfg.SubscriptionTTL)
	jsonhttp.Write(w, http.StatusOK, s)
}

// Handshake performs Oura's verification: GET callback?verification_token=
// &challenge=, expecting 200 and {"challenge": "<challenge>"}.
func (a *API) Handshake(ctx context.Context, callback, token string) error {
	a.st.Mu.Lock()
	challenge := a.st.UUIDLocked()
	a.st.Mu.Unlock()
	return webhooks.Handshake(ctx, a.cfg.HTTPClient, a.cfg.WebhookTimeout, a.counters, callback, token, challenge)
}
