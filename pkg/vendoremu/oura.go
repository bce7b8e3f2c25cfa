package vendoremu

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"time"
)

// Oura v2 documents, field for field as the API serves them.

type ouraSleep struct {
	ID                    string              `json:"id"`
	AverageBreath         float64             `json:"average_breath"`
	AverageHeartRate      float64             `json:"average_heart_rate"`
	AverageHrv            int                 `json:"average_hrv"`
	AwakeTime             int                 `json:"awake_time"`
	BedtimeEnd            string              `json:"bedtime_end"`
	BedtimeStart          string              `json:"bedtime_start"`
	Day                   string              `json:"day"`
	DeepSleepDuration     int                 `json:"deep_sleep_duration"`
	Efficiency            int                 `json:"efficiency"`
	HeartRate             *ouraSample         `json:"heart_rate"`
	Hrv                   *ouraSample         `json:"hrv"`
	Latency               int                 `json:"latency"`
	LightSleepDuration    int                 `json:"light_sleep_duration"`
	LowBatteryAlert       bool                `json:"low_battery_alert"`
	LowestHeartRate       int                 `json:"lowest_heart_rate"`
	Period                int                 `json:"period"`
	Readiness             *ouraSleepReadiness `json:"readiness"`
	ReadinessScoreDelta   *float64            `json:"readiness_score_delta"`
	RemSleepDuration      int                 `json:"rem_sleep_duration"`
	RestlessPeriods       int                 `json:"restless_periods"`
	SleepAlgorithmVersion string              `json:"sleep_algorithm_version"`
	SleepPhase5Min        string              `json:"sleep_phase_5_min"`
	SleepScoreDelta       *float64            `json:"sleep_score_delta"`
	TimeInBed             int                 `json:"time_in_bed"`
	TotalSleepDuration    int                 `json:"total_sleep_duration"`
	Type                  string              `json:"type"`
}

type ouraSample struct {
	Interval  float64    `json:"interval"`
	Items     []*float64 `json:"items"`
	Timestamp string     `json:"timestamp"`
}

type ouraSleepReadiness struct {
	Contributors              ouraReadinessContributors `json:"contributors"`
	Score                     int                       `json:"score"`
	TemperatureDeviation      float64                   `json:"temperature_deviation"`
	TemperatureTrendDeviation float64                   `json:"temperature_trend_deviation"`
}

type ouraReadinessContributors struct {
	ActivityBalance     int `json:"activity_balance"`
	BodyTemperature     int `json:"body_temperature"`
	HrvBalance          int `json:"hrv_balance"`
	PreviousDayActivity int `json:"previous_day_activity"`
	PreviousNight       int `json:"previous_night"`
	RecoveryIndex       int `json:"recovery_index"`
	RestingHeartRate    int `json:"resting_heart_rate"`
	SleepBalance        int `json:"sleep_balance"`
}

type ouraDailySleep struct {
	ID           string                `json:"id"`
	Contributors ouraSleepContributors `json:"contributors"`
	Day          string                `json:"day"`
	Score        int                   `json:"score"`
	Timestamp    string                `json:"timestamp"`
}

type ouraSleepContributors struct {
	DeepSleep   int `json:"deep_sleep"`
	Efficiency  int `json:"efficiency"`
	Latency     int `json:"latency"`
	RemSleep    int `json:"rem_sleep"`
	Restfulness int `json:"restfulness"`
	Timing      int `json:"timing"`
	TotalSleep  int `json:"total_sleep"`
}

type ouraDailyReadiness struct {
	ID                        string                    `json:"id"`
	Contributors              ouraReadinessContributors `json:"contributors"`
	Day                       string                    `json:"day"`
	Score                     int                       `json:"score"`
	TemperatureDeviation      float64                   `json:"temperature_deviation"`
	TemperatureTrendDeviation float64                   `json:"temperature_trend_deviation"`
	Timestamp                 string                    `json:"timestamp"`
}

type ouraDailySpo2 struct {
	ID                        string          `json:"id"`
	Day                       string          `json:"day"`
	Spo2Percentage            *ouraSpo2Figure `json:"spo2_percentage"`
	BreathingDisturbanceIndex int             `json:"breathing_disturbance_index"`
}

type ouraSpo2Figure struct {
	Average float64 `json:"average"`
}

// ouraHR is one heartrate sample; t is the parsed timestamp for filtering.
type ouraHR struct {
	BPM       int    `json:"bpm"`
	Source    string `json:"source"`
	Timestamp string `json:"timestamp"`
	t         time.Time
}

func (s *ouraSleep) fields() fieldSet {
	return fieldSet{
		"average_breath":              setF(&s.AverageBreath),
		"average_heart_rate":          setF(&s.AverageHeartRate),
		"average_hrv":                 setInt(&s.AverageHrv),
		"awake_time":                  setInt(&s.AwakeTime),
		"deep_sleep_duration":         setInt(&s.DeepSleepDuration),
		"efficiency":                  setInt(&s.Efficiency),
		"latency":                     setInt(&s.Latency),
		"light_sleep_duration":        setInt(&s.LightSleepDuration),
		"lowest_heart_rate":           setInt(&s.LowestHeartRate),
		"rem_sleep_duration":          setInt(&s.RemSleepDuration),
		"time_in_bed":                 setInt(&s.TimeInBed),
		"total_sleep_duration":        setInt(&s.TotalSleepDuration),
		"readiness_score":             setInt(&s.Readiness.Score),
		"temperature_deviation":       setF(&s.Readiness.TemperatureDeviation),
		"temperature_trend_deviation": setF(&s.Readiness.TemperatureTrendDeviation),
	}
}

func (c *ouraReadinessContributors) fields() fieldSet {
	return fieldSet{
		"activity_balance": setInt(&c.ActivityBalance), "body_temperature": setInt(&c.BodyTemperature),
		"hrv_balance": setInt(&c.HrvBalance), "previous_day_activity": setInt(&c.PreviousDayActivity),
		"previous_night": setInt(&c.PreviousNight), "recovery_index": setInt(&c.RecoveryIndex),
		"resting_heart_rate": setInt(&c.RestingHeartRate), "sleep_balance": setInt(&c.SleepBalance),
	}
}

func (d *ouraDailySleep) fields() fieldSet {
	c := &d.Contributors
	return fieldSet{
		"score": setInt(&d.Score), "deep_sleep": setInt(&c.DeepSleep), "efficiency": setInt(&c.Efficiency),
		"latency": setInt(&c.Latency), "rem_sleep": setInt(&c.RemSleep), "restfulness": setInt(&c.Restfulness),
		"timing": setInt(&c.Timing), "total_sleep": setInt(&c.TotalSleep),
	}
}

func (d *ouraDailyReadiness) fields() fieldSet {
	fs := d.Contributors.fields()
	fs.merge(fieldSet{
		"score":                       setInt(&d.Score),
		"temperature_deviation":       setF(&d.TemperatureDeviation),
		"temperature_trend_deviation": setF(&d.TemperatureTrendDeviation),
	})
	return fs
}

func (d *ouraDailySpo2) fields() fieldSet {
	return fieldSet{
		"spo2_percentage":             setF(&d.Spo2Percentage.Average),
		"breathing_disturbance_index": setInt(&d.BreathingDisturbanceIndex),
	}
}

// ouraValue is a stored Oura document.
type ouraValue interface{ fields() fieldSet }

// ouraDoc is a stored Oura document with its sort key.
type ouraDoc struct {
	id, dataType, day string
	ts                time.Time
	v                 ouraValue
}

func (d *ouraDoc) record(u *user) Record {
	return Record{Vendor: Oura, Type: d.dataType, ID: d.id, User: u.name, Data: mustJSON(d.v)}
}

// ouraStored are the data types the emulator keeps documents for.
var ouraStored = map[string]bool{"sleep": true, "daily_sleep": true, "daily_readiness": true, "daily_spo2": true}

// ouraKnown are the usercollection data types the real API serves; the ones
// not stored answer with empty collections so a client that walks them all
// keeps working.
var ouraKnown = map[string]bool{
	"sleep": true, "daily_sleep": true, "daily_readiness": true, "daily_spo2": true, "heartrate": true,
	"daily_activity": true, "daily_stress": true, "daily_resilience": true, "daily_cardiovascular_age": true,
	"workout": true, "session": true, "tag": true, "enhanced_tag": true, "sleep_time": true,
	"rest_mode_period": true, "ring_configuration": true, "vO2_max": true,
}

// ouraWebhookTypes are the data types Oura sends webhooks for.
var ouraWebhookTypes = []string{
	"tag", "enhanced_tag", "workout", "session", "sleep", "daily_sleep", "daily_readiness", "daily_activity",
	"daily_spo2", "sleep_time", "rest_mode_period", "ring_configuration", "daily_stress",
	"daily_cardiovascular_age", "daily_resilience", "vo2_max",
}

// Oura scopes and the data types each one unlocks.
var ouraScopes = []string{"email", "personal", "daily", "heartrate", "workout", "tag", "session", "spo2Daily"}

func ouraScopeFor(dataType string) string {
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

// ouraTime formats t in the user's zone the way Oura does
// ("2026-11-20T07:31:02+01:00", never "Z").
func ouraTime(t time.Time, loc *time.Location) string {
	return t.In(loc).Format("2006-01-02T15:04:05-07:00")
}

func (e *Emulator) contributorLocked(base float64) int {
	return int(clamp(math.Round(base+e.rng.NormFloat64()*8), 1, 100))
}

// newOuraDocLocked builds one Oura document from a night.
func (e *Emulator) newOuraDocLocked(u *user, dataType string, n night, day string, values map[string]float64) (*ouraDoc, error) {
	loc := u.zone()
	dayStart, err := time.ParseInLocation(time.DateOnly, day, loc)
	if err != nil {
		return nil, fmt.Errorf("%w: day %q", ErrInvalid, day)
	}
	doc := &ouraDoc{id: e.uuidLocked(), dataType: dataType, day: day, ts: dayStart}
	readinessContrib := func() ouraReadinessContributors {
		return ouraReadinessContributors{
			ActivityBalance: e.contributorLocked(80), BodyTemperature: e.contributorLocked(95 - 40*math.Abs(n.tempDeviation)),
			HrvBalance: e.contributorLocked(n.readiness), PreviousDayActivity: e.contributorLocked(78),
			PreviousNight: e.contributorLocked(n.sleepScore), RecoveryIndex: e.contributorLocked(n.readiness + 5),
			RestingHeartRate: e.contributorLocked(n.readiness + 8), SleepBalance: e.contributorLocked(n.performance),
		}
	}
	switch dataType {
	case "sleep":
		doc.ts = n.start
		s := &ouraSleep{
			ID: doc.id, AverageBreath: n.respRate, AverageHeartRate: n.avgHR, AverageHrv: int(math.Round(n.hrv)),
			AwakeTime: secs(n.awake), BedtimeEnd: ouraTime(n.end, loc), BedtimeStart: ouraTime(n.start, loc),
			Day: day, DeepSleepDuration: secs(n.deep), Efficiency: int(math.Round(n.efficiency)),
			Latency: secs(n.latency), LightSleepDuration: secs(n.light), LowestHeartRate: int(n.lowestHR),
			Readiness: &ouraSleepReadiness{
				Contributors: readinessContrib(), Score: int(n.readiness),
				TemperatureDeviation: n.tempDeviation, TemperatureTrendDeviation: round2(n.tempDeviation * 0.6),
			},
			RemSleepDuration: secs(n.rem), RestlessPeriods: n.disturbances * 12, SleepAlgorithmVersion: "v2",
			TimeInBed: secs(n.inBed), TotalSleepDuration: secs(n.light + n.deep + n.rem), Type: "long_sleep",
		}
		// 5-minute series over the night: heart rate, HRV and the hypnogram
		// (1 deep, 2 light, 3 REM, 4 awake).
		slots := int(n.inBed / (5 * time.Minute))
		s.HeartRate = &ouraSample{Interval: 300, Timestamp: ouraTime(n.start, loc)}
		s.Hrv = &ouraSample{Interval: 300, Timestamp: ouraTime(n.start, loc)}
		var phases strings.Builder
		for i := range slots {
			hr := float64(heartRateAt(e.rng, u.base, n.start, true))
			hrv := math.Round(clamp(n.hrv+e.rng.NormFloat64()*10, 5, 250))
			s.HeartRate.Items = append(s.HeartRate.Items, &hr)
			s.Hrv.Items = append(s.Hrv.Items, &hrv)
			pos := float64(i) / float64(max(slots, 1))
			switch {
			case i < 2 || e.rng.Float64() < float64(n.awake)/float64(n.inBed):
				phases.WriteByte('4')
			case pos < 0.4 && e.rng.Float64() < 0.45:
				phases.WriteByte('1')
			case pos > 0.5 && e.rng.Float64() < 0.4:
				phases.WriteByte('3')
			default:
				phases.WriteByte('2')
			}
		}
		s.SleepPhase5Min = phases.String()
		doc.v = s
	case "daily_sleep":
		doc.v = &ouraDailySleep{
			ID: doc.id, Day: day, Score: int(n.sleepScore), Timestamp: ouraTime(dayStart, loc),
			Contributors: ouraSleepContributors{
				DeepSleep: e.contributorLocked(float64(n.deep) / float64(90*time.Minute) * 100), Efficiency: e.contributorLocked(n.efficiency),
				Latency: e.contributorLocked(90), RemSleep: e.contributorLocked(float64(n.rem) / float64(105*time.Minute) * 100),
				Restfulness: e.contributorLocked(75), Timing: e.contributorLocked(n.consistency), TotalSleep: e.contributorLocked(n.performance),
			},
		}
	case "daily_readiness":
		doc.v = &ouraDailyReadiness{
			ID: doc.id, Day: day, Score: int(n.readiness), Timestamp: ouraTime(dayStart, loc),
			TemperatureDeviation: n.tempDeviation, TemperatureTrendDeviation: round2(n.tempDeviation * 0.6),
			Contributors: readinessContrib(),
		}
	case "daily_spo2":
		doc.v = &ouraDailySpo2{
			ID: doc.id, Day: day, Spo2Percentage: &ouraSpo2Figure{Average: n.spo2},
			BreathingDisturbanceIndex: int(math.Round(n.bdi)),
		}
	default:
		return nil, fmt.Errorf("%w: Oura data type %q", ErrInvalid, dataType)
	}
	if err := doc.v.fields().apply(values); err != nil {
		return nil, err
	}
	return doc, nil
}

func (e *Emulator) putOuraDocLocked(u *user, d *ouraDoc) {
	if u.oura[d.dataType] == nil {
		u.oura[d.dataType] = map[string]*ouraDoc{}
	}
	u.oura[d.dataType][d.id] = d
}

// addHeartRateLocked adds 5-minute samples over [start, end), calmer while
// asleep ([sleepStart, sleepEnd)). fixed, when it reports true, pins the bpm.
// A sample at an existing timestamp replaces it.
func (e *Emulator) addHeartRateLocked(u *user, start, end, sleepStart, sleepEnd time.Time, fixed func() (int, bool)) []*ouraHR {
	loc := u.zone()
	var added []*ouraHR
	for t := start.UTC().Truncate(5 * time.Minute); t.Before(end); t = t.Add(5 * time.Minute) {
		if t.Before(start) {
			continue
		}
		asleep := !t.Before(sleepStart) && t.Before(sleepEnd)
		bpm := heartRateAt(e.rng, u.base, t.In(loc), asleep)
		if v, ok := fixed(); ok {
			bpm = v
		}
		src := "awake"
		if asleep {
			src = "rest"
		}
		added = append(added, &ouraHR{BPM: bpm, Source: src, Timestamp: ouraTime(t, time.UTC), t: t})
	}
	if len(added) == 0 {
		return added
	}
	if n := len(u.heartrate); n == 0 || u.heartrate[n-1].t.Before(added[0].t) {
		// History and demo rounds arrive in time order: no re-sort needed.
		u.heartrate = append(u.heartrate, added...)
		return added
	}
	merged := append(u.heartrate, added...)
	slices.SortStableFunc(merged, func(a, b *ouraHR) int { return a.t.Compare(b.t) })
	out := merged[:0]
	for _, s := range merged {
		if len(out) > 0 && out[len(out)-1].t.Equal(s.t) {
			out[len(out)-1] = s
			continue
		}
		out = append(out, s)
	}
	u.heartrate = out
	return added
}

func secs(d time.Duration) int { return int(d / time.Second) }

// ouraRoutes registers the Oura API under /oura.
func (e *Emulator) ouraRoutes(mux *http.ServeMux) {
	mux.Handle("GET /oura/v2/usercollection/personal_info", e.api(Oura, "personal", e.ouraPersonalInfo))
	mux.Handle("GET /oura/v2/usercollection/{data_type}", e.api(Oura, "", e.ouraCollection))
	mux.Handle("GET /oura/v2/usercollection/{data_type}/{id}", e.api(Oura, "", e.ouraDocument))
	mux.Handle("/oura/v2/usercollection/", e.api(Oura, "", func(w http.ResponseWriter, _ *http.Request, _ *grant) {
		ouraError(w, http.StatusNotFound, "Not Found")
	}))
	mux.HandleFunc("POST /oura/v2/webhook/subscription", e.subAPI(e.ouraCreateSub))
	mux.HandleFunc("GET /oura/v2/webhook/subscription", e.subAPI(e.ouraListSubs))
	mux.HandleFunc("GET /oura/v2/webhook/subscription/{id}", e.subAPI(e.ouraGetSub))
	mux.HandleFunc("PUT /oura/v2/webhook/subscription/{id}", e.subAPI(e.ouraUpdateSub))
	mux.HandleFunc("DELETE /oura/v2/webhook/subscription/{id}", e.subAPI(e.ouraDeleteSub))
	mux.HandleFunc("PUT /oura/v2/webhook/subscription/renew/{id}", e.subAPI(e.ouraRenewSub))
}

func ouraError(w http.ResponseWriter, status int, detail string) {
	writeJSON(w, status, map[string]string{"detail": detail})
}

func (e *Emulator) ouraPersonalInfo(w http.ResponseWriter, _ *http.Request, g *grant) {
	u := g.user
	sex := "male"
	if u.base.female {
		sex = "female"
	}
	info := map[string]any{
		"id": u.ouraID, "age": u.base.age, "weight": u.base.weightKg, "height": u.base.heightM, "biological_sex": sex,
	}
	// Oura only reveals the email with the email scope.
	if g.scopes["email"] {
		info["email"] = u.email
	}
	writeJSON(w, http.StatusOK, info)
}

func (e *Emulator) ouraDocument(w http.ResponseWriter, r *http.Request, g *grant) {
	dt := r.PathValue("data_type")
	if !ouraKnown[dt] || dt == "heartrate" {
		ouraError(w, http.StatusNotFound, "Not Found")
		return
	}
	if !g.has(ouraScopeFor(dt)) {
		ouraError(w, http.StatusForbidden, "missing scope "+ouraScopeFor(dt))
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	d, ok := g.user.oura[dt][r.PathValue("id")]
	if !ok {
		ouraError(w, http.StatusNotFound, "Document not found")
		return
	}
	writeJSON(w, http.StatusOK, d.v)
}

// ouraCollection serves /v2/usercollection/{data_type}: documents filtered by
// day (start_date/end_date, default yesterday..today in the user's zone),
// heartrate by time (start_datetime inclusive, end_datetime exclusive,
// default the last 24h, at most 30 days), ascending, paged by next_token.
func (e *Emulator) ouraCollection(w http.ResponseWriter, r *http.Request, g *grant) {
	dt := r.PathValue("data_type")
	if !ouraKnown[dt] {
		ouraError(w, http.StatusNotFound, "Not Found")
		return
	}
	if !g.has(ouraScopeFor(dt)) {
		ouraError(w, http.StatusForbidden, "missing scope "+ouraScopeFor(dt))
		return
	}
	q := r.URL.Query()
	e.mu.Lock()
	defer e.mu.Unlock()
	u := g.user
	now := e.now()
	var items []pageItem
	size := e.cfg.OuraPageSize
	if dt == "heartrate" {
		size = e.cfg.OuraHeartRatePageSize
		end, err := parseOuraDateTime(q.Get("end_datetime"), now)
		if err != nil {
			ouraError(w, http.StatusBadRequest, "end_datetime: "+err.Error())
			return
		}
		start, err := parseOuraDateTime(q.Get("start_datetime"), end.Add(-24*time.Hour))
		if err != nil {
			ouraError(w, http.StatusBadRequest, "start_datetime: "+err.Error())
			return
		}
		if end.Sub(start) > 30*24*time.Hour {
			ouraError(w, http.StatusBadRequest, "the datetime range must not exceed 30 days")
			return
		}
		lo, _ := slices.BinarySearchFunc(u.heartrate, start, func(s *ouraHR, t time.Time) int { return s.t.Compare(t) })
		for _, s := range u.heartrate[lo:] {
			if !s.t.Before(end) {
				break
			}
			items = append(items, pageItem{key: s.t, id: "", v: s})
		}
	} else {
		loc := u.zone()
		today := now.In(loc).Format(time.DateOnly)
		endDay, err := parseOuraDate(q.Get("end_date"), today, loc)
		if err != nil {
			ouraError(w, http.StatusBadRequest, "end_date: "+err.Error())
			return
		}
		t, _ := time.Parse(time.DateOnly, endDay)
		startDay, err := parseOuraDate(q.Get("start_date"), t.AddDate(0, 0, -1).Format(time.DateOnly), loc)
		if err != nil {
			ouraError(w, http.StatusBadRequest, "start_date: "+err.Error())
			return
		}
		for _, d := range u.oura[dt] {
			if !e.ouraDayInRange(dt, d.day, startDay, endDay) {
				continue
			}
			items = append(items, pageItem{key: d.ts, id: d.id, v: d.v})
		}
	}
	page, next, err := paginate(items, false, q.Get("next_token"), size)
	if err != nil {
		ouraError(w, http.StatusBadRequest, "invalid next_token")
		return
	}
	data := make([]any, 0, len(page))
	for _, it := range page {
		data = append(data, it.v)
	}
	resp := map[string]any{"data": data, "next_token": nil}
	if next != "" {
		resp["next_token"] = next
	}
	writeJSON(w, http.StatusOK, resp)
}

// ouraDayInRange applies the documented inclusive range, or with
// Config.OuraDateRangeQuirk what the live API has been seen doing.
func (e *Emulator) ouraDayInRange(dataType, day, start, end string) bool {
	if !e.cfg.OuraDateRangeQuirk {
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

// subscription is an Oura webhook subscription (app-level).
type subscription struct {
	ID                string    `json:"id"`
	CallbackURL       string    `json:"callback_url"`
	EventType         string    `json:"event_type"`
	DataType          string    `json:"data_type"`
	ExpirationTime    time.Time `json:"expiration_time"`
	verificationToken string
}

// subAPI authenticates the app (x-client-id / x-client-secret) and counts
// the call.
func (e *Emulator) subAPI(h func(http.ResponseWriter, *http.Request)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		e.count(Oura, func(v *VendorCounters) { v.APICalls[strings.TrimPrefix(r.Pattern, "/oura")]++; v.APICallsTotal++ })
		id, secret := r.Header.Get("x-client-id"), r.Header.Get("x-client-secret")
		if subtle.ConstantTimeCompare([]byte(id), []byte(e.cfg.OuraClientID)) != 1 ||
			subtle.ConstantTimeCompare([]byte(secret), []byte(e.cfg.OuraClientSecret)) != 1 {
			ouraError(w, http.StatusUnauthorized, "invalid client credentials")
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
	if !slices.Contains(ouraWebhookTypes, dataType) {
		return fmt.Errorf("unsupported data_type %q", dataType)
	}
	return nil
}

func (e *Emulator) ouraCreateSub(w http.ResponseWriter, r *http.Request) {
	var req subRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil {
		ouraError(w, http.StatusBadRequest, "malformed json body")
		return
	}
	if err := validSub(req.EventType, req.DataType); err != nil {
		ouraError(w, http.StatusUnprocessableEntity, err.Error())
		return
	}
	if err := checkHTTPURL(req.CallbackURL); err != nil || req.VerificationToken == "" {
		ouraError(w, http.StatusUnprocessableEntity, "callback_url must be an absolute http(s) url and verification_token is required")
		return
	}
	e.mu.Lock()
	dup := e.activeSubLocked(req.EventType, req.DataType, "") != nil
	e.mu.Unlock()
	if dup {
		ouraError(w, http.StatusConflict, "a subscription for this event_type and data_type already exists")
		return
	}
	if err := e.handshake(r.Context(), req.CallbackURL, req.VerificationToken); err != nil {
		ouraError(w, http.StatusBadRequest, "callback verification failed: "+err.Error())
		return
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.activeSubLocked(req.EventType, req.DataType, "") != nil {
		ouraError(w, http.StatusConflict, "a subscription for this event_type and data_type already exists")
		return
	}
	s := &subscription{
		ID: e.uuidLocked(), CallbackURL: req.CallbackURL, EventType: req.EventType, DataType: req.DataType,
		ExpirationTime: e.now().Add(e.cfg.OuraSubscriptionTTL), verificationToken: req.VerificationToken,
	}
	e.subs[s.ID] = s
	e.subOrder = append(e.subOrder, s)
	writeJSON(w, http.StatusCreated, s)
}

// activeSubLocked finds an unexpired subscription for the pair, other than
// except.
func (e *Emulator) activeSubLocked(eventType, dataType, except string) *subscription {
	now := e.now()
	for _, s := range e.subOrder {
		if s.ID != except && s.EventType == eventType && s.DataType == dataType && s.ExpirationTime.After(now) {
			return s
		}
	}
	return nil
}

func (e *Emulator) ouraListSubs(w http.ResponseWriter, _ *http.Request) {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]*subscription, 0, len(e.subOrder))
	out = append(out, e.subOrder...)
	writeJSON(w, http.StatusOK, out)
}

func (e *Emulator) ouraGetSub(w http.ResponseWriter, r *http.Request) {
	e.mu.Lock()
	defer e.mu.Unlock()
	s, ok := e.subs[r.PathValue("id")]
	if !ok {
		ouraError(w, http.StatusNotFound, "subscription not found")
		return
	}
	writeJSON(w, http.StatusOK, s)
}

func (e *Emulator) ouraUpdateSub(w http.ResponseWriter, r *http.Request) {
	var req subRequest
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&req); err != nil {
		ouraError(w, http.StatusBadRequest, "malformed json body")
		return
	}
	if req.VerificationToken == "" {
		ouraError(w, http.StatusUnprocessableEntity, "verification_token is required")
		return
	}
	id := r.PathValue("id")
	e.mu.Lock()
	s, ok := e.subs[id]
	var cur subscription
	if ok {
		cur = *s
	}
	e.mu.Unlock()
	if !ok {
		ouraError(w, http.StatusNotFound, "subscription not found")
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
		ouraError(w, http.StatusUnprocessableEntity, err.Error())
		return
	}
	if err := checkHTTPURL(cur.CallbackURL); err != nil {
		ouraError(w, http.StatusUnprocessableEntity, "callback_url must be an absolute http(s) url")
		return
	}
	// A changed callback or token is verified again, as on creation.
	if cur.CallbackURL != s.CallbackURL || req.VerificationToken != cur.verificationToken {
		if err := e.handshake(r.Context(), cur.CallbackURL, req.VerificationToken); err != nil {
			ouraError(w, http.StatusBadRequest, "callback verification failed: "+err.Error())
			return
		}
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	s, ok = e.subs[id]
	if !ok {
		ouraError(w, http.StatusNotFound, "subscription not found")
		return
	}
	if e.activeSubLocked(cur.EventType, cur.DataType, id) != nil {
		ouraError(w, http.StatusConflict, "a subscription for this event_type and data_type already exists")
		return
	}
	s.CallbackURL, s.EventType, s.DataType, s.verificationToken = cur.CallbackURL, cur.EventType, cur.DataType, req.VerificationToken
	writeJSON(w, http.StatusOK, s)
}

func (e *Emulator) ouraDeleteSub(w http.ResponseWriter, r *http.Request) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if !e.removeSubLocked(r.PathValue("id")) {
		ouraError(w, http.StatusNotFound, "subscription not found")
		return
	}
	w.WriteHeader(http.StatusNoContent)
}

func (e *Emulator) removeSubLocked(id string) bool {
	if _, ok := e.subs[id]; !ok {
		return false
	}
	delete(e.subs, id)
	e.subOrder = slices.DeleteFunc(e.subOrder, func(s *subscription) bool { return s.ID == id })
	return true
}

func (e *Emulator) ouraRenewSub(w http.ResponseWriter, r *http.Request) {
	e.mu.Lock()
	defer e.mu.Unlock()
	s, ok := e.subs[r.PathValue("id")]
	if !ok {
		ouraError(w, http.StatusNotFound, "subscription not found")
		return
	}
	s.ExpirationTime = e.now().Add(e.cfg.OuraSubscriptionTTL)
	writeJSON(w, http.StatusOK, s)
}

// handshake performs Oura's verification: GET callback?verification_token=
// &challenge=, expecting 200 and {"challenge": "<challenge>"}.
func (e *Emulator) handshake(ctx context.Context, callback, token string) error {
	e.mu.Lock()
	challenge := e.uuidLocked()
	e.mu.Unlock()
	u, err := url.Parse(callback)
	if err != nil {
		return fmt.Errorf("parse callback url: %w", err)
	}
	q := u.Query()
	q.Set("verification_token", token)
	q.Set("challenge", challenge)
	u.RawQuery = q.Encode()
	ctx, cancel := context.WithTimeout(ctx, e.cfg.WebhookTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return fmt.Errorf("build handshake request: %w", err)
	}
	resp, err := e.cfg.HTTPClient.Do(req)
	e.count(Oura, func(v *VendorCounters) { v.Handshakes++ })
	if err != nil {
		return fmt.Errorf("call callback: %w", err)
	}
	defer func() { _ = resp.Body.Close() }()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("callback answered %d, want 200", resp.StatusCode)
	}
	var body struct {
		Challenge string `json:"challenge"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<16)).Decode(&body); err != nil {
		return fmt.Errorf("callback answer is not json: %w", err)
	}
	if body.Challenge != challenge {
		return fmt.Errorf("callback echoed the wrong challenge")
	}
	e.count(Oura, func(v *VendorCounters) { v.HandshakesPassed++ })
	return nil
}

// VerifyOuraCallback runs the verification handshake against callbackURL
// (default Config.OuraWebhookURL) with token (default
// Config.OuraVerificationToken), as Oura does when a subscription is created.
func (e *Emulator) VerifyOuraCallback(ctx context.Context, callbackURL, token string) error {
	e.mu.Lock()
	if callbackURL == "" {
		callbackURL = e.ouraTarget
	}
	if token == "" {
		token = e.ouraVerifyTok
	}
	e.mu.Unlock()
	if callbackURL == "" {
		return fmt.Errorf("%w: no callback url configured", ErrInvalid)
	}
	return e.handshake(ctx, callbackURL, token)
}
