package vendoremu

import (
	"net/http"
	"strconv"
	"time"
)

// WHOOP score states.
const (
	ScoreStateScored     = "SCORED"
	ScoreStatePending    = "PENDING_SCORE"
	ScoreStateUnscorable = "UNSCORABLE"
)

// WHOOP v2 documents, field for field as the API serves them. Each scored
// record keeps its score in an unexported field; the exported Score pointer
// is set only while score_state is SCORED, so PENDING_SCORE records are
// served without a score and reveal the prepared one when scored.

type whoopCycle struct {
	ID             int64            `json:"id"`
	UserID         int64            `json:"user_id"`
	CreatedAt      time.Time        `json:"created_at"`
	UpdatedAt      time.Time        `json:"updated_at"`
	Start          time.Time        `json:"start"`
	End            *time.Time       `json:"end"`
	TimezoneOffset string           `json:"timezone_offset"`
	ScoreState     string           `json:"score_state"`
	Score          *whoopCycleScore `json:"score,omitempty"`
	score          whoopCycleScore
}

type whoopCycleScore struct {
	Strain           float64 `json:"strain"`
	Kilojoule        float64 `json:"kilojoule"`
	AverageHeartRate int     `json:"average_heart_rate"`
	MaxHeartRate     int     `json:"max_heart_rate"`
}

type whoopSleep struct {
	ID             string           `json:"id"`
	CycleID        int64            `json:"cycle_id"`
	UserID         int64            `json:"user_id"`
	CreatedAt      time.Time        `json:"created_at"`
	UpdatedAt      time.Time        `json:"updated_at"`
	Start          time.Time        `json:"start"`
	End            time.Time        `json:"end"`
	TimezoneOffset string           `json:"timezone_offset"`
	Nap            bool             `json:"nap"`
	ScoreState     string           `json:"score_state"`
	Score          *whoopSleepScore `json:"score,omitempty"`
	score          whoopSleepScore
}

type whoopSleepScore struct {
	StageSummary               whoopStageSummary `json:"stage_summary"`
	SleepNeeded                whoopSleepNeeded  `json:"sleep_needed"`
	RespiratoryRate            float64           `json:"respiratory_rate"`
	SleepPerformancePercentage float64           `json:"sleep_performance_percentage"`
	SleepConsistencyPercentage float64           `json:"sleep_consistency_percentage"`
	SleepEfficiencyPercentage  float64           `json:"sleep_efficiency_percentage"`
}

type whoopStageSummary struct {
	TotalInBedTimeMilli         int64 `json:"total_in_bed_time_milli"`
	TotalAwakeTimeMilli         int64 `json:"total_awake_time_milli"`
	TotalNoDataTimeMilli        int64 `json:"total_no_data_time_milli"`
	TotalLightSleepTimeMilli    int64 `json:"total_light_sleep_time_milli"`
	TotalSlowWaveSleepTimeMilli int64 `json:"total_slow_wave_sleep_time_milli"`
	TotalRemSleepTimeMilli      int64 `json:"total_rem_sleep_time_milli"`
	SleepCycleCount             int   `json:"sleep_cycle_count"`
	DisturbanceCount            int   `json:"disturbance_count"`
}

type whoopSleepNeeded struct {
	BaselineMilli             int64 `json:"baseline_milli"`
	NeedFromSleepDebtMilli    int64 `json:"need_from_sleep_debt_milli"`
	NeedFromRecentStrainMilli int64 `json:"need_from_recent_strain_milli"`
	NeedFromRecentNapMilli    int64 `json:"need_from_recent_nap_milli"`
}

type whoopRecovery struct {
	CycleID    int64               `json:"cycle_id"`
	SleepID    string              `json:"sleep_id"`
	UserID     int64               `json:"user_id"`
	CreatedAt  time.Time           `json:"created_at"`
	UpdatedAt  time.Time           `json:"updated_at"`
	ScoreState string              `json:"score_state"`
	Score      *whoopRecoveryScore `json:"score,omitempty"`
	score      whoopRecoveryScore
}

type whoopRecoveryScore struct {
	UserCalibrating  bool    `json:"user_calibrating"`
	RecoveryScore    float64 `json:"recovery_score"`
	RestingHeartRate float64 `json:"resting_heart_rate"`
	HrvRmssdMilli    float64 `json:"hrv_rmssd_milli"`
	Spo2Percentage   float64 `json:"spo2_percentage"`
	SkinTempCelsius  float64 `json:"skin_temp_celsius"`
}

type whoopWorkout struct {
	ID             string             `json:"id"`
	UserID         int64              `json:"user_id"`
	CreatedAt      time.Time          `json:"created_at"`
	UpdatedAt      time.Time          `json:"updated_at"`
	Start          time.Time          `json:"start"`
	End            time.Time          `json:"end"`
	TimezoneOffset string             `json:"timezone_offset"`
	SportName      string             `json:"sport_name"`
	SportID        int                `json:"sport_id"`
	ScoreState     string             `json:"score_state"`
	Score          *whoopWorkoutScore `json:"score,omitempty"`
	score          whoopWorkoutScore
}

type whoopWorkoutScore struct {
	Strain              float64            `json:"strain"`
	AverageHeartRate    int                `json:"average_heart_rate"`
	MaxHeartRate        int                `json:"max_heart_rate"`
	Kilojoule           float64            `json:"kilojoule"`
	PercentRecorded     float64            `json:"percent_recorded"`
	DistanceMeter       *float64           `json:"distance_meter,omitempty"`
	AltitudeGainMeter   *float64           `json:"altitude_gain_meter,omitempty"`
	AltitudeChangeMeter *float64           `json:"altitude_change_meter,omitempty"`
	ZoneDurations       whoopZoneDurations `json:"zone_durations"`
}

type whoopZoneDurations struct {
	ZoneZeroMilli  int64 `json:"zone_zero_milli"`
	ZoneOneMilli   int64 `json:"zone_one_milli"`
	ZoneTwoMilli   int64 `json:"zone_two_milli"`
	ZoneThreeMilli int64 `json:"zone_three_milli"`
	ZoneFourMilli  int64 `json:"zone_four_milli"`
	ZoneFiveMilli  int64 `json:"zone_five_milli"`
}

// setScoreState switches what is served; the prepared score is kept.
func (c *whoopCycle) setScoreState(s string) {
	c.ScoreState, c.Score = s, nil
	if s == ScoreStateScored {
		c.Score = &c.score
	}
}

func (s *whoopSleep) setScoreState(st string) {
	s.ScoreState, s.Score = st, nil
	if st == ScoreStateScored {
		s.Score = &s.score
	}
}

func (r *whoopRecovery) setScoreState(s string) {
	r.ScoreState, r.Score = s, nil
	if s == ScoreStateScored {
		r.Score = &r.score
	}
}

func (w *whoopWorkout) setScoreState(s string) {
	w.ScoreState, w.Score = s, nil
	if s == ScoreStateScored {
		w.Score = &w.score
	}
}

// Value setters: the keys admin callers may pass in RecordSpec.Values,
// named after the vendor's JSON fields.

func (c *whoopCycle) fields() fieldSet {
	return fieldSet{
		"strain":             setF(&c.score.Strain),
		"kilojoule":          setF(&c.score.Kilojoule),
		"average_heart_rate": setInt(&c.score.AverageHeartRate),
		"max_heart_rate":     setInt(&c.score.MaxHeartRate),
	}
}

func (s *whoopSleep) fields() fieldSet {
	sc := &s.score
	return fieldSet{
		"respiratory_rate":                 setF(&sc.RespiratoryRate),
		"sleep_performance_percentage":     setF(&sc.SleepPerformancePercentage),
		"sleep_consistency_percentage":     setF(&sc.SleepConsistencyPercentage),
		"sleep_efficiency_percentage":      setF(&sc.SleepEfficiencyPercentage),
		"total_in_bed_time_milli":          setI64(&sc.StageSummary.TotalInBedTimeMilli),
		"total_awake_time_milli":           setI64(&sc.StageSummary.TotalAwakeTimeMilli),
		"total_no_data_time_milli":         setI64(&sc.StageSummary.TotalNoDataTimeMilli),
		"total_light_sleep_time_milli":     setI64(&sc.StageSummary.TotalLightSleepTimeMilli),
		"total_slow_wave_sleep_time_milli": setI64(&sc.StageSummary.TotalSlowWaveSleepTimeMilli),
		"total_rem_sleep_time_milli":       setI64(&sc.StageSummary.TotalRemSleepTimeMilli),
		"sleep_cycle_count":                setInt(&sc.StageSummary.SleepCycleCount),
		"disturbance_count":                setInt(&sc.StageSummary.DisturbanceCount),
	}
}

func (r *whoopRecovery) fields() fieldSet {
	sc := &r.score
	return fieldSet{
		"recovery_score":     setF(&sc.RecoveryScore),
		"resting_heart_rate": setF(&sc.RestingHeartRate),
		"hrv_rmssd_milli":    setF(&sc.HrvRmssdMilli),
		"spo2_percentage":    setF(&sc.Spo2Percentage),
		"skin_temp_celsius":  setF(&sc.SkinTempCelsius),
		"user_calibrating":   setBool(&sc.UserCalibrating),
	}
}

func (w *whoopWorkout) fields() fieldSet {
	sc := &w.score
	return fieldSet{
		"strain":                setF(&sc.Strain),
		"average_heart_rate":    setInt(&sc.AverageHeartRate),
		"max_heart_rate":        setInt(&sc.MaxHeartRate),
		"kilojoule":             setF(&sc.Kilojoule),
		"percent_recorded":      setF(&sc.PercentRecorded),
		"distance_meter":        setFPtr(&sc.DistanceMeter),
		"altitude_gain_meter":   setFPtr(&sc.AltitudeGainMeter),
		"altitude_change_meter": setFPtr(&sc.AltitudeChangeMeter),
		"zone_zero_milli":       setI64(&sc.ZoneDurations.ZoneZeroMilli),
		"zone_one_milli":        setI64(&sc.ZoneDurations.ZoneOneMilli),
		"zone_two_milli":        setI64(&sc.ZoneDurations.ZoneTwoMilli),
		"zone_three_milli":      setI64(&sc.ZoneDurations.ZoneThreeMilli),
		"zone_four_milli":       setI64(&sc.ZoneDurations.ZoneFourMilli),
		"zone_five_milli":       setI64(&sc.ZoneDurations.ZoneFiveMilli),
	}
}

// whoopSleepBundleFields are the keys a WHOOP "sleep" RecordSpec accepts:
// the sleep's, its recovery's and its cycle's.
func whoopSleepBundleFields(c *whoopCycle, s *whoopSleep, r *whoopRecovery) fieldSet {
	fs := fieldSet{}
	fs.merge(c.fields())
	fs.merge(s.fields())
	if r != nil {
		fs.merge(r.fields())
	}
	return fs
}

// WHOOP scopes (docs/vendors.md).
var whoopScopes = []string{
	"read:recovery", "read:cycles", "read:workout", "read:sleep", "read:profile", "read:body_measurement", "offline",
}

// whoopRoutes registers the WHOOP developer API under /whoop/developer.
func (e *Emulator) whoopRoutes(mux *http.ServeMux) {
	const p = "/whoop/developer/v2"
	mux.Handle("GET "+p+"/user/profile/basic", e.api(Whoop, "read:profile", e.whoopProfile))
	mux.Handle("GET "+p+"/user/measurement/body", e.api(Whoop, "read:body_measurement", e.whoopBody))
	mux.Handle("DELETE "+p+"/user/access", e.api(Whoop, "", e.whoopRevoke))
	mux.Handle("GET "+p+"/activity/sleep/{id}", e.api(Whoop, "read:sleep", e.whoopSleepByID))
	mux.Handle("GET "+p+"/activity/sleep", e.api(Whoop, "read:sleep", e.whoopCollection(collSleep)))
	mux.Handle("GET "+p+"/activity/workout/{id}", e.api(Whoop, "read:workout", e.whoopWorkoutByID))
	mux.Handle("GET "+p+"/activity/workout", e.api(Whoop, "read:workout", e.whoopCollection(collWorkout)))
	mux.Handle("GET "+p+"/cycle/{id}", e.api(Whoop, "read:cycles", e.whoopCycleByID))
	mux.Handle("GET "+p+"/cycle/{id}/recovery", e.api(Whoop, "read:recovery", e.whoopCycleRecovery))
	mux.Handle("GET "+p+"/cycle/{id}/sleep", e.api(Whoop, "read:sleep", e.whoopCycleSleep))
	mux.Handle("GET "+p+"/cycle", e.api(Whoop, "read:cycles", e.whoopCollection(collCycle)))
	mux.Handle("GET "+p+"/recovery", e.api(Whoop, "read:recovery", e.whoopCollection(collRecovery)))
	mux.Handle(p+"/", e.api(Whoop, "", func(w http.ResponseWriter, _ *http.Request, _ *grant) {
		whoopError(w, http.StatusNotFound, "no such endpoint")
	}))
}

func whoopError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

func (e *Emulator) whoopProfile(w http.ResponseWriter, _ *http.Request, g *grant) {
	u := g.user
	writeJSON(w, http.StatusOK, map[string]any{
		"user_id": u.whoopID, "email": u.email, "first_name": u.firstName, "last_name": u.lastName,
	})
}

func (e *Emulator) whoopBody(w http.ResponseWriter, _ *http.Request, g *grant) {
	b := g.user.base
	writeJSON(w, http.StatusOK, map[string]any{
		"height_meter": b.heightM, "weight_kilogram": b.weightKg, "max_heart_rate": int(b.maxHR),
	})
}

func (e *Emulator) whoopRevoke(w http.ResponseWriter, _ *http.Request, g *grant) {
	e.mu.Lock()
	g.revoked = true
	e.mu.Unlock()
	e.count(Whoop, func(v *VendorCounters) { v.Revocations++ })
	w.WriteHeader(http.StatusNoContent)
}

func (e *Emulator) whoopSleepByID(w http.ResponseWriter, r *http.Request, g *grant) {
	e.mu.Lock()
	defer e.mu.Unlock()
	s, ok := g.user.sleeps[r.PathValue("id")]
	if !ok {
		whoopError(w, http.StatusNotFound, "sleep not found")
		return
	}
	writeJSON(w, http.StatusOK, s)
}

func (e *Emulator) whoopWorkoutByID(w http.ResponseWriter, r *http.Request, g *grant) {
	e.mu.Lock()
	defer e.mu.Unlock()
	wo, ok := g.user.workouts[r.PathValue("id")]
	if !ok {
		whoopError(w, http.StatusNotFound, "workout not found")
		return
	}
	writeJSON(w, http.StatusOK, wo)
}

func (e *Emulator) cycleFromPath(w http.ResponseWriter, r *http.Request, g *grant) (*whoopCycle, bool) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil {
		whoopError(w, http.StatusBadRequest, "cycle id must be an integer")
		return nil, false
	}
	c, ok := g.user.cycles[id]
	if !ok {
		whoopError(w, http.StatusNotFound, "cycle not found")
		return nil, false
	}
	return c, true
}

func (e *Emulator) whoopCycleByID(w http.ResponseWriter, r *http.Request, g *grant) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if c, ok := e.cycleFromPath(w, r, g); ok {
		writeJSON(w, http.StatusOK, c)
	}
}

// whoopCycleRecovery is the only way to read a recovery by reference in v2:
// webhooks name the sleep, the sleep names the cycle, the cycle has the
// recovery.
func (e *Emulator) whoopCycleRecovery(w http.ResponseWriter, r *http.Request, g *grant) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, ok := e.cycleFromPath(w, r, g)
	if !ok {
		return
	}
	rec, ok := g.user.recoveries[c.ID]
	if !ok {
		whoopError(w, http.StatusNotFound, "no recovery for this cycle")
		return
	}
	writeJSON(w, http.StatusOK, rec)
}

func (e *Emulator) whoopCycleSleep(w http.ResponseWriter, r *http.Request, g *grant) {
	e.mu.Lock()
	defer e.mu.Unlock()
	c, ok := e.cycleFromPath(w, r, g)
	if !ok {
		return
	}
	for _, s := range g.user.sleeps {
		if s.CycleID == c.ID && !s.Nap {
			writeJSON(w, http.StatusOK, s)
			return
		}
	}
	whoopError(w, http.StatusNotFound, "no sleep for this cycle")
}

type whoopColl int

const (
	collSleep whoopColl = iota
	collWorkout
	collCycle
	collRecovery
)

// whoopCollection serves a v2 collection: newest first, limit <= 25 (default
// 10), start inclusive, end exclusive (default now), paged by nextToken.
func (e *Emulator) whoopCollection(kind whoopColl) apiHandler {
	return func(w http.ResponseWriter, r *http.Request, g *grant) {
		q := r.URL.Query()
		limit := 10
		if s := q.Get("limit"); s != "" {
			n, err := strconv.Atoi(s)
			if err != nil || n < 1 || n > 25 {
				whoopError(w, http.StatusBadRequest, "limit must be an integer between 1 and 25")
				return
			}
			limit = n
		}
		var start, end time.Time
		if s := q.Get("start"); s != "" {
			t, err := time.Parse(time.RFC3339Nano, s)
			if err != nil {
				whoopError(w, http.StatusBadRequest, "start must be an ISO 8601 date-time")
				return
			}
			start = t
		}
		end = e.now()
		if s := q.Get("end"); s != "" {
			t, err := time.Parse(time.RFC3339Nano, s)
			if err != nil {
				whoopError(w, http.StatusBadRequest, "end must be an ISO 8601 date-time")
				return
			}
			end = t
		}
		e.mu.Lock()
		defer e.mu.Unlock()
		now := e.now()
		u := g.user
		var items []pageItem
		// A record is in range when it overlaps [start, end): "occurred after
		// or during start", "intersects or ended before end".
		add := func(s time.Time, en *time.Time, id string, v any) {
			recEnd := now
			if en != nil {
				recEnd = *en
			}
			if !start.IsZero() && recEnd.Before(start) {
				return
			}
			if !s.Before(end) {
				return
			}
			items = append(items, pageItem{key: s, id: id, v: v})
		}
		switch kind {
		case collSleep:
			for _, s := range u.sleeps {
				add(s.Start, &s.End, s.ID, s)
			}
		case collWorkout:
			for _, wo := range u.workouts {
				add(wo.Start, &wo.End, wo.ID, wo)
			}
		case collCycle:
			for _, c := range u.cycles {
				add(c.Start, c.End, strconv.FormatInt(c.ID, 10), c)
			}
		case collRecovery:
			for _, rec := range u.recoveries {
				if c, ok := u.cycles[rec.CycleID]; ok {
					add(c.Start, c.End, strconv.FormatInt(c.ID, 10), rec)
				}
			}
		}
		page, next, err := paginate(items, true, q.Get("nextToken"), limit)
		if err != nil {
			whoopError(w, http.StatusBadRequest, "invalid nextToken")
			return
		}
		records := make([]any, 0, len(page))
		for _, it := range page {
			records = append(records, it.v)
		}
		resp := map[string]any{"records": records, "next_token": nil}
		if next != "" {
			resp["next_token"] = next
		}
		writeJSON(w, http.StatusOK, resp)
	}
}

func offsetString(d time.Duration) string {
	return time.Date(2000, 1, 1, 0, 0, 0, 0, time.FixedZone("", int(d.Seconds()))).Format("-07:00")
}
