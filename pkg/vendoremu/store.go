package vendoremu

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"hash/fnv"
	"math"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"
)

// user is one emulated person, who wears both a WHOOP and an Oura ring.
type user struct {
	name, email         string
	firstName, lastName string
	whoopID             int64
	ouraID              string
	offset              time.Duration
	base                baseline

	cycles     map[int64]*whoopCycle
	sleeps     map[string]*whoopSleep
	recoveries map[int64]*whoopRecovery // by cycle id: one recovery per cycle
	workouts   map[string]*whoopWorkout

	oura      map[string]map[string]*ouraDoc // data_type -> document id -> document
	heartrate []*ouraHR                      // sorted by time, one sample per timestamp
}

func (u *user) zone() *time.Location { return time.FixedZone("", int(u.offset.Seconds())) }

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

// AddUser adds an emulated user. Vendor user ids are derived from the name,
// so the same name gets the same WHOOP and Oura ids in every run (a
// restarted devstack maps webhooks to the same people). Adding an existing
// name returns the existing user unchanged.
func (e *Emulator) AddUser(spec UserSpec) (User, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	u, err := e.addUserLocked(spec)
	if err != nil {
		return User{}, err
	}
	return e.userViewLocked(u), nil
}

func (e *Emulator) addUserLocked(spec UserSpec) (*user, error) {
	if u, ok := e.users[spec.Name]; ok {
		return u, nil
	}
	if spec.Name == "" || len(spec.Name) > 64 || strings.IndexFunc(spec.Name, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("-_.@", r))
	}) >= 0 {
		return nil, fmt.Errorf("%w: user name %q must be 1-64 letters, digits, '-', '_', '.' or '@'", ErrInvalid, spec.Name)
	}
	if spec.UTCOffsetMinutes < -12*60 || spec.UTCOffsetMinutes > 14*60 {
		return nil, fmt.Errorf("%w: utc_offset_minutes %d out of range", ErrInvalid, spec.UTCOffsetMinutes)
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte(spec.Name))
	whoopID := int64(10_000_000 + h.Sum64()%90_000_000)
	for e.whoopIDs[whoopID] != nil {
		whoopID++
	}
	sum := sha256.Sum256([]byte("oura:" + spec.Name))
	email := spec.Email
	if email == "" {
		email = strings.ToLower(spec.Name) + "@example.test"
	}
	first, last, _ := strings.Cut(spec.Name, ".")
	u := &user{
		name: spec.Name, email: email,
		firstName: capitalize(first), lastName: capitalize(last),
		whoopID: whoopID, ouraID: hex.EncodeToString(sum[:16]),
		offset:     time.Duration(spec.UTCOffsetMinutes) * time.Minute,
		base:       newBaseline(e.rng),
		cycles:     map[int64]*whoopCycle{},
		sleeps:     map[string]*whoopSleep{},
		recoveries: map[int64]*whoopRecovery{},
		workouts:   map[string]*whoopWorkout{},
		oura:       map[string]map[string]*ouraDoc{},
	}
	if u.firstName == "" {
		u.firstName = "Emulated"
	}
	if u.lastName == "" {
		u.lastName = "User"
	}
	e.users[u.name] = u
	e.userOrder = append(e.userOrder, u)
	e.whoopIDs[whoopID] = u
	return u, nil
}

func capitalize(s string) string {
	if s == "" {
		return ""
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

func (e *Emulator) userViewLocked(u *user) User {
	v := User{
		Name: u.name, Email: u.email, WhoopUserID: u.whoopID, OuraUserID: u.ouraID,
		UTCOffset: offsetString(u.offset),
	}
	for _, g := range e.grants {
		if g.user == u && !g.revoked {
			switch g.vendor {
			case Whoop:
				v.WhoopConnected = true
			case Oura:
				v.OuraConnected = true
			}
		}
	}
	return v
}

// Users lists the emulated users in the order they were added.
func (e *Emulator) Users() []User {
	e.mu.Lock()
	defer e.mu.Unlock()
	out := make([]User, 0, len(e.userOrder))
	for _, u := range e.userOrder {
		out = append(out, e.userViewLocked(u))
	}
	return out
}

func (e *Emulator) userLocked(name string) (*user, error) {
	u, ok := e.users[name]
	if !ok {
		return nil, fmt.Errorf("%w: user %q", ErrNotFound, name)
	}
	return u, nil
}

// fieldSet maps a vendor JSON field name to a setter, so admin callers can
// pin exact values ("recovery_score": 87) on top of the synthetic ones.
type fieldSet map[string]func(float64)

func (fs fieldSet) merge(o fieldSet) {
	for k, v := range o {
		fs[k] = v
	}
}

// apply checks every key before setting any, so a bad request changes
// nothing.
func (fs fieldSet) apply(vals map[string]float64) error {
	for k, v := range vals {
		if _, ok := fs[k]; !ok {
			keys := make([]string, 0, len(fs))
			for name := range fs {
				keys = append(keys, name)
			}
			sort.Strings(keys)
			return fmt.Errorf("%w: unknown value %q (allowed: %s)", ErrInvalid, k, strings.Join(keys, ", "))
		}
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("%w: value %q is not a finite number", ErrInvalid, k)
		}
	}
	for k, v := range vals {
		fs[k](v)
	}
	return nil
}

func setF(p *float64) func(float64) { return func(v float64) { *p = v } }
func setInt(p *int) func(float64)   { return func(v float64) { *p = int(math.Round(v)) } }
func setI64(p *int64) func(float64) { return func(v float64) { *p = int64(math.Round(v)) } }
func setBool(p *bool) func(float64) { return func(v float64) { *p = v != 0 } }
func setFPtr(p **float64) func(float64) {
	return func(v float64) { x := v; *p = &x }
}

// pageItem is one element of a collection being paged.
type pageItem struct {
	key time.Time
	id  string
	v   any
}

// paginate sorts items by (key, id), ascending or descending, and returns the
// page after the cursor in token. Cursors name the last item served rather
// than an offset, so records added between two page requests neither repeat
// nor hide items.
func paginate(items []pageItem, desc bool, token string, limit int) ([]pageItem, string, error) {
	less := func(a, b pageItem) bool {
		if !a.key.Equal(b.key) {
			return a.key.Before(b.key)
		}
		return a.id < b.id
	}
	sort.Slice(items, func(i, j int) bool {
		if desc {
			return less(items[j], items[i])
		}
		return less(items[i], items[j])
	})
	from := 0
	if token != "" {
		raw, err := base64.RawURLEncoding.DecodeString(token)
		if err != nil {
			return nil, "", fmt.Errorf("decode page token: %w", err)
		}
		ns, id, ok := strings.Cut(string(raw), "|")
		n, err := strconv.ParseInt(ns, 10, 64)
		if !ok || err != nil {
			return nil, "", fmt.Errorf("%w: malformed page token", ErrInvalid)
		}
		cur := pageItem{key: time.Unix(0, n), id: id}
		from = len(items)
		for i, it := range items {
			if (!desc && less(cur, it)) || (desc && less(it, cur)) {
				from = i
				break
			}
		}
	}
	to := min(from+limit, len(items))
	page := items[from:to]
	next := ""
	if to < len(items) && len(page) > 0 {
		last := page[len(page)-1]
		next = base64.RawURLEncoding.EncodeToString([]byte(strconv.FormatInt(last.key.UnixNano(), 10) + "|" + last.id))
	}
	return page, next, nil
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

func mustJSON(v any) json.RawMessage {
	b, err := json.Marshal(v)
	if err != nil {
		// Only plain structs of numbers and strings are marshalled here.
		return json.RawMessage(`null`)
	}
	return b
}

// CreateRecord creates a record (or a WHOOP sleep with its cycle and
// recovery) and delivers the vendor's webhook for it.
func (e *Emulator) CreateRecord(ctx context.Context, spec RecordSpec) ([]Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil, ErrClosed
	}
	u, err := e.userLocked(spec.User)
	if err != nil {
		e.mu.Unlock()
		return nil, err
	}
	recs, evs, err := e.createLocked(u, spec)
	var jobs []*job
	if err == nil && !spec.NoWebhook {
		jobs = e.planLocked(evs)
	}
	e.mu.Unlock()
	if err != nil {
		return nil, err
	}
	e.hooks.submit(jobs)
	return recs, nil
}

func (e *Emulator) createLocked(u *user, spec RecordSpec) ([]Record, []event, error) {
	end := spec.End
	if end.IsZero() {
		end = e.now()
	}
	if !spec.Start.IsZero() && !spec.Start.Before(end) {
		return nil, nil, fmt.Errorf("%w: start must be before end", ErrInvalid)
	}
	state := spec.ScoreState
	if state == "" {
		state = ScoreStateScored
	}
	if state != ScoreStateScored && state != ScoreStatePending && state != ScoreStateUnscorable {
		return nil, nil, fmt.Errorf("%w: score_state %q", ErrInvalid, spec.ScoreState)
	}
	switch spec.Vendor {
	case Whoop:
		switch spec.Type {
		case "sleep":
			n := genNight(e.rng, u.base, spec.Start, end)
			return e.createWhoopSleepLocked(u, n, spec.Nap, state, spec.Values)
		case "workout":
			var d time.Duration
			if !spec.Start.IsZero() {
				d = end.Sub(spec.Start)
			}
			ws := genWorkout(e.rng, u.base, spec.SportName, d)
			return e.createWhoopWorkoutLocked(u, end.Add(-ws.duration), ws, state, spec.Values)
		}
		return nil, nil, fmt.Errorf("%w: WHOOP record type %q (want sleep or workout)", ErrInvalid, spec.Type)
	case Oura:
		if spec.ScoreState != "" || spec.Nap || spec.SportName != "" {
			return nil, nil, fmt.Errorf("%w: score_state, nap and sport_name are WHOOP-only", ErrInvalid)
		}
		day := spec.Day
		if day == "" {
			day = end.In(u.zone()).Format(time.DateOnly)
		} else if _, err := time.Parse(time.DateOnly, day); err != nil {
			return nil, nil, fmt.Errorf("%w: day %q must be YYYY-MM-DD", ErrInvalid, day)
		}
		switch spec.Type {
		case "sleep", "daily_sleep", "daily_readiness", "daily_spo2":
			n := genNight(e.rng, u.base, spec.Start, end)
			doc, err := e.newOuraDocLocked(u, spec.Type, n, day, spec.Values)
			if err != nil {
				return nil, nil, err
			}
			e.putOuraDocLocked(u, doc)
			return []Record{doc.record(u)}, []event{ouraEv(u, "create", doc)}, nil
		case "heartrate":
			start := spec.Start
			if start.IsZero() {
				start = end.Add(-time.Hour)
			}
			if err := (fieldSet{"bpm": func(float64) {}}).apply(spec.Values); err != nil {
				return nil, nil, err
			}
			bpm, fixed := spec.Values["bpm"]
			samples := e.addHeartRateLocked(u, start, end, time.Time{}, time.Time{}, func() (int, bool) {
				return int(math.Round(bpm)), fixed
			})
			return []Record{{Vendor: Oura, Type: "heartrate", User: u.name, Data: mustJSON(samples)}}, nil, nil
		}
		return nil, nil, fmt.Errorf("%w: Oura record type %q (want sleep, daily_sleep, daily_readiness, daily_spo2 or heartrate)", ErrInvalid, spec.Type)
	}
	return nil, nil, fmt.Errorf("%w: vendor %q (want whoop or oura)", ErrInvalid, spec.Vendor)
}

// createWhoopSleepLocked stores a sleep with its cycle and recovery. A
// non-nap sleep starts a new physiological cycle and closes the open one,
// as WHOOP's cycles run from sleep onset to sleep onset.
func (e *Emulator) createWhoopSleepLocked(u *user, n night, nap bool, state string, values map[string]float64) ([]Record, []event, error) {
	now := e.now()
	tz := offsetString(u.offset)
	// prevOpen is the cycle this sleep falls in; nextStart is the start of
	// the first later cycle (history generated before existing data).
	var cycle, prevOpen *whoopCycle
	var nextStart *time.Time
	for _, c := range u.cycles {
		if c.Start.Before(n.start) && (prevOpen == nil || c.Start.After(prevOpen.Start)) {
			prevOpen = c
		}
		if c.Start.After(n.start) && (nextStart == nil || c.Start.Before(*nextStart)) {
			st := c.Start
			nextStart = &st
		}
	}
	newCycle := !nap || prevOpen == nil
	if newCycle {
		cycle = &whoopCycle{
			ID: e.nextCycleID, UserID: u.whoopID, CreatedAt: now, UpdatedAt: now,
			Start: n.start, End: nextStart, TimezoneOffset: tz,
		}
		d := genDay(e.rng, u.base, false)
		cycle.score = whoopCycleScore{Strain: d.strain, Kilojoule: d.kilojoule, AverageHeartRate: d.avgHR, MaxHeartRate: d.maxHR}
		cycle.setScoreState(state)
	} else {
		cycle = prevOpen
	}
	s := &whoopSleep{
		ID: e.uuidLocked(), CycleID: cycle.ID, UserID: u.whoopID, CreatedAt: now, UpdatedAt: now,
		Start: n.start, End: n.end, TimezoneOffset: tz, Nap: nap,
	}
	debt := time.Duration(e.rng.IntN(40)) * time.Minute
	strainNeed := time.Duration(e.rng.IntN(20)) * time.Minute
	s.score = whoopSleepScore{
		StageSummary: whoopStageSummary{
			TotalInBedTimeMilli:         n.inBed.Milliseconds(),
			TotalAwakeTimeMilli:         n.awake.Milliseconds(),
			TotalLightSleepTimeMilli:    n.light.Milliseconds(),
			TotalSlowWaveSleepTimeMilli: n.deep.Milliseconds(),
			TotalRemSleepTimeMilli:      n.rem.Milliseconds(),
			SleepCycleCount:             n.cycles,
			DisturbanceCount:            n.disturbances,
		},
		SleepNeeded: whoopSleepNeeded{
			BaselineMilli:             int64(u.base.sleepNeed * float64(time.Hour/time.Millisecond)),
			NeedFromSleepDebtMilli:    debt.Milliseconds(),
			NeedFromRecentStrainMilli: strainNeed.Milliseconds(),
		},
		RespiratoryRate:            n.respRate,
		SleepPerformancePercentage: n.performance,
		SleepConsistencyPercentage: n.consistency,
		SleepEfficiencyPercentage:  n.efficiency,
	}
	s.setScoreState(state)
	var rec *whoopRecovery
	if !nap {
		rec = &whoopRecovery{CycleID: cycle.ID, SleepID: s.ID, UserID: u.whoopID, CreatedAt: now, UpdatedAt: now}
		rec.score = whoopRecoveryScore{
			RecoveryScore: n.recovery, RestingHeartRate: n.restingHR, HrvRmssdMilli: n.hrv,
			Spo2Percentage: n.spo2, SkinTempCelsius: n.skinTemp,
		}
		rec.setScoreState(state)
	}
	fs := whoopSleepBundleFields(cycle, s, rec)
	if !newCycle {
		// A nap's values must not rewrite the cycle it joins.
		fs = whoopSleepBundleFields(&whoopCycle{}, s, rec)
	}
	if err := fs.apply(values); err != nil {
		return nil, nil, err
	}
	if newCycle {
		e.nextCycleID++
		if prevOpen != nil && prevOpen.End == nil {
			end := n.start
			prevOpen.End = &end
			prevOpen.UpdatedAt = now
		}
		u.cycles[cycle.ID] = cycle
	}
	u.sleeps[s.ID] = s
	evs := []event{whoopEv(u, "sleep.updated", s.ID)}
	recs := []Record{{Vendor: Whoop, Type: "sleep", ID: s.ID, User: u.name, Data: mustJSON(s)}}
	if rec != nil {
		u.recoveries[cycle.ID] = rec
		evs = append(evs, whoopEv(u, "recovery.updated", s.ID))
		recs = append(recs, Record{Vendor: Whoop, Type: "recovery", ID: s.ID, User: u.name, Data: mustJSON(rec)})
	}
	recs = append(recs, Record{Vendor: Whoop, Type: "cycle", ID: strconv.FormatInt(cycle.ID, 10), User: u.name, Data: mustJSON(cycle)})
	if state == ScoreStatePending {
		e.scheduleScoreLocked("sleep", s.ID)
	}
	return recs, evs, nil
}

func (e *Emulator) createWhoopWorkoutLocked(u *user, start time.Time, ws workoutShape, state string, values map[string]float64) ([]Record, []event, error) {
	now := e.now()
	start = start.UTC().Truncate(time.Second)
	w := &whoopWorkout{
		ID: e.uuidLocked(), UserID: u.whoopID, CreatedAt: now, UpdatedAt: now,
		Start: start, End: start.Add(ws.duration), TimezoneOffset: offsetString(u.offset),
		SportName: ws.sport, SportID: ws.sportID,
	}
	w.score = whoopWorkoutScore{
		Strain: ws.strain, AverageHeartRate: ws.avgHR, MaxHeartRate: ws.maxHR, Kilojoule: ws.kilojoule,
		PercentRecorded: ws.percentRecorded,
		ZoneDurations: whoopZoneDurations{
			ZoneZeroMilli: ws.zones[0].Milliseconds(), ZoneOneMilli: ws.zones[1].Milliseconds(),
			ZoneTwoMilli: ws.zones[2].Milliseconds(), ZoneThreeMilli: ws.zones[3].Milliseconds(),
			ZoneFourMilli: ws.zones[4].Milliseconds(), ZoneFiveMilli: ws.zones[5].Milliseconds(),
		},
	}
	if ws.distance > 0 {
		d, g, c := ws.distance, ws.altitudeGain, ws.altitudeChange
		w.score.DistanceMeter, w.score.AltitudeGainMeter, w.score.AltitudeChangeMeter = &d, &g, &c
	}
	if err := w.fields().apply(values); err != nil {
		return nil, nil, err
	}
	w.setScoreState(state)
	u.workouts[w.ID] = w
	if state == ScoreStatePending {
		e.scheduleScoreLocked("workout", w.ID)
	}
	return []Record{{Vendor: Whoop, Type: "workout", ID: w.ID, User: u.name, Data: mustJSON(w)}},
		[]event{whoopEv(u, "workout.updated", w.ID)}, nil
}

// findWhoopLocked locates a WHOOP record by the id its webhook carries.
func (e *Emulator) findWhoopLocked(typ, id string) (*user, any, error) {
	for _, u := range e.userOrder {
		switch typ {
		case "sleep":
			if s, ok := u.sleeps[id]; ok {
				return u, s, nil
			}
		case "recovery":
			if s, ok := u.sleeps[id]; ok {
				if r, ok := u.recoveries[s.CycleID]; ok && r.SleepID == id {
					return u, r, nil
				}
			}
		case "workout":
			if w, ok := u.workouts[id]; ok {
				return u, w, nil
			}
		case "cycle":
			n, err := strconv.ParseInt(id, 10, 64)
			if err != nil {
				return nil, nil, fmt.Errorf("%w: cycle id %q", ErrInvalid, id)
			}
			if c, ok := u.cycles[n]; ok {
				return u, c, nil
			}
		default:
			return nil, nil, fmt.Errorf("%w: WHOOP record type %q (want sleep, recovery, workout or cycle)", ErrInvalid, typ)
		}
	}
	return nil, nil, fmt.Errorf("%w: whoop %s %q", ErrNotFound, typ, id)
}

func (e *Emulator) findOuraLocked(typ, id string) (*user, *ouraDoc, error) {
	if !ouraStored[typ] {
		return nil, nil, fmt.Errorf("%w: Oura record type %q (want sleep, daily_sleep, daily_readiness or daily_spo2)", ErrInvalid, typ)
	}
	for _, u := range e.userOrder {
		if d, ok := u.oura[typ][id]; ok {
			return u, d, nil
		}
	}
	return nil, nil, fmt.Errorf("%w: oura %s %q", ErrNotFound, typ, id)
}

// UpdateRecord changes fields of a record (keys as in RecordSpec.Values)
// and delivers the vendor's update webhook: WHOOP *.updated (none for
// cycles, which have no webhooks), Oura event_type "update".
func (e *Emulator) UpdateRecord(ctx context.Context, vendor Vendor, typ, id string, values map[string]float64) (Record, error) {
	if err := ctx.Err(); err != nil {
		return Record{}, err
	}
	e.mu.Lock()
	rec, evs, err := e.updateLocked(vendor, typ, id, values)
	jobs := e.planLocked(evs)
	e.mu.Unlock()
	if err != nil {
		return Record{}, err
	}
	e.hooks.submit(jobs)
	return rec, nil
}

func (e *Emulator) updateLocked(vendor Vendor, typ, id string, values map[string]float64) (Record, []event, error) {
	if e.closed {
		return Record{}, nil, ErrClosed
	}
	now := e.now()
	switch vendor {
	case Whoop:
		u, v, err := e.findWhoopLocked(typ, id)
		if err != nil {
			return Record{}, nil, err
		}
		var fs fieldSet
		var ev []event
		switch r := v.(type) {
		case *whoopSleep:
			fs, ev = r.fields(), []event{whoopEv(u, "sleep.updated", id)}
			defer func() { r.UpdatedAt = now }()
		case *whoopRecovery:
			fs, ev = r.fields(), []event{whoopEv(u, "recovery.updated", id)}
			defer func() { r.UpdatedAt = now }()
		case *whoopWorkout:
			fs, ev = r.fields(), []event{whoopEv(u, "workout.updated", id)}
			defer func() { r.UpdatedAt = now }()
		case *whoopCycle:
			fs = r.fields()
			defer func() { r.UpdatedAt = now }()
		}
		if err := fs.apply(values); err != nil {
			return Record{}, nil, err
		}
		return Record{Vendor: Whoop, Type: typ, ID: id, User: u.name, Data: mustJSON(v)}, ev, nil
	case Oura:
		u, d, err := e.findOuraLocked(typ, id)
		if err != nil {
			return Record{}, nil, err
		}
		if err := d.v.fields().apply(values); err != nil {
			return Record{}, nil, err
		}
		return d.record(u), []event{ouraEv(u, "update", d)}, nil
	}
	return Record{}, nil, fmt.Errorf("%w: vendor %q", ErrInvalid, vendor)
}

// ScoreRecord turns a PENDING_SCORE WHOOP record into SCORED and sends
// *.updated again. Scoring a sleep scores its recovery and cycle too
// (sleep.updated + recovery.updated); typ "recovery" takes the sleep id,
// like the webhook. Scoring a scored record changes nothing and sends
// nothing.
func (e *Emulator) ScoreRecord(ctx context.Context, typ, id string) ([]Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	e.mu.Lock()
	recs, evs, err := e.scoreLocked(typ, id)
	jobs := e.planLocked(evs)
	e.mu.Unlock()
	if err != nil {
		return nil, err
	}
	e.hooks.submit(jobs)
	return recs, nil
}

func (e *Emulator) scoreLocked(typ, id string) ([]Record, []event, error) {
	if e.closed {
		return nil, nil, ErrClosed
	}
	if typ == "recovery" {
		typ = "sleep"
	}
	u, v, err := e.findWhoopLocked(typ, id)
	if err != nil {
		return nil, nil, err
	}
	now := e.now()
	switch r := v.(type) {
	case *whoopSleep:
		var recs []Record
		var evs []event
		if r.ScoreState != ScoreStateScored {
			r.setScoreState(ScoreStateScored)
			r.UpdatedAt = now
			evs = append(evs, whoopEv(u, "sleep.updated", id))
		}
		recs = append(recs, Record{Vendor: Whoop, Type: "sleep", ID: id, User: u.name, Data: mustJSON(r)})
		if rec, ok := u.recoveries[r.CycleID]; ok && rec.SleepID == id {
			if rec.ScoreState != ScoreStateScored {
				rec.setScoreState(ScoreStateScored)
				rec.UpdatedAt = now
				evs = append(evs, whoopEv(u, "recovery.updated", id))
			}
			recs = append(recs, Record{Vendor: Whoop, Type: "recovery", ID: id, User: u.name, Data: mustJSON(rec)})
		}
		if c, ok := u.cycles[r.CycleID]; ok && c.ScoreState != ScoreStateScored {
			c.setScoreState(ScoreStateScored)
			c.UpdatedAt = now
		}
		return recs, evs, nil
	case *whoopWorkout:
		var evs []event
		if r.ScoreState != ScoreStateScored {
			r.setScoreState(ScoreStateScored)
			r.UpdatedAt = now
			evs = append(evs, whoopEv(u, "workout.updated", id))
		}
		return []Record{{Vendor: Whoop, Type: "workout", ID: id, User: u.name, Data: mustJSON(r)}}, evs, nil
	}
	return nil, nil, fmt.Errorf("%w: only sleep, recovery and workout records are scored", ErrInvalid)
}

// scheduleScoreLocked scores a pending record after Config.ScoreDelay.
func (e *Emulator) scheduleScoreLocked(typ, id string) {
	if e.cfg.ScoreDelay <= 0 || e.closed {
		return
	}
	var t *time.Timer
	t = time.AfterFunc(e.cfg.ScoreDelay, func() {
		e.mu.Lock()
		delete(e.scoreTimers, t)
		e.mu.Unlock()
		if _, err := e.ScoreRecord(context.Background(), typ, id); err != nil {
			e.log.Debug("scheduled scoring skipped", "type", typ, "error", err)
		}
	})
	e.scoreTimers[t] = struct{}{}
}

// DeleteRecord deletes a record and delivers the vendor's delete webhook.
// Deleting a WHOOP sleep deletes its recovery too (sleep.deleted and
// recovery.deleted); typ "recovery" with the sleep id deletes only the
// recovery. Cycles are not deletable (WHOOP has no cycle webhooks).
func (e *Emulator) DeleteRecord(ctx context.Context, vendor Vendor, typ, id string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	e.mu.Lock()
	evs, err := e.deleteLocked(vendor, typ, id)
	jobs := e.planLocked(evs)
	e.mu.Unlock()
	if err != nil {
		return err
	}
	e.hooks.submit(jobs)
	return nil
}

func (e *Emulator) deleteLocked(vendor Vendor, typ, id string) ([]event, error) {
	if e.closed {
		return nil, ErrClosed
	}
	switch vendor {
	case Whoop:
		if typ == "cycle" {
			return nil, fmt.Errorf("%w: cycles cannot be deleted", ErrInvalid)
		}
		u, v, err := e.findWhoopLocked(typ, id)
		if err != nil {
			return nil, err
		}
		switch r := v.(type) {
		case *whoopSleep:
			delete(u.sleeps, id)
			evs := []event{whoopEv(u, "sleep.deleted", id)}
			if rec, ok := u.recoveries[r.CycleID]; ok && rec.SleepID == id {
				delete(u.recoveries, r.CycleID)
				evs = append(evs, whoopEv(u, "recovery.deleted", id))
			}
			return evs, nil
		case *whoopRecovery:
			delete(u.recoveries, r.CycleID)
			return []event{whoopEv(u, "recovery.deleted", id)}, nil
		case *whoopWorkout:
			delete(u.workouts, id)
			return []event{whoopEv(u, "workout.deleted", id)}, nil
		}
	case Oura:
		u, d, err := e.findOuraLocked(typ, id)
		if err != nil {
			return nil, err
		}
		delete(u.oura[typ], id)
		return []event{ouraEv(u, "delete", d)}, nil
	}
	return nil, fmt.Errorf("%w: vendor %q", ErrInvalid, vendor)
}

// RecordFilter selects records for ListRecords; empty fields match all.
type RecordFilter struct {
	User   string
	Vendor Vendor
	Type   string
}

// ListRecords returns matching records, oldest first, as the vendor serves
// them (Oura heart-rate samples are not listed).
func (e *Emulator) ListRecords(f RecordFilter) []Record {
	e.mu.Lock()
	defer e.mu.Unlock()
	type keyed struct {
		t time.Time
		r Record
	}
	var all []keyed
	want := func(v Vendor, typ string) bool {
		return (f.Vendor == "" || f.Vendor == v) && (f.Type == "" || f.Type == typ)
	}
	for _, u := range e.userOrder {
		if f.User != "" && u.name != f.User {
			continue
		}
		if want(Whoop, "cycle") {
			for _, c := range u.cycles {
				all = append(all, keyed{c.Start, Record{Whoop, "cycle", strconv.FormatInt(c.ID, 10), u.name, mustJSON(c)}})
			}
		}
		for _, s := range u.sleeps {
			if want(Whoop, "sleep") {
				all = append(all, keyed{s.Start, Record{Whoop, "sleep", s.ID, u.name, mustJSON(s)}})
			}
			if rec, ok := u.recoveries[s.CycleID]; ok && rec.SleepID == s.ID && want(Whoop, "recovery") {
				all = append(all, keyed{s.Start, Record{Whoop, "recovery", s.ID, u.name, mustJSON(rec)}})
			}
		}
		if want(Whoop, "workout") {
			for _, w := range u.workouts {
				all = append(all, keyed{w.Start, Record{Whoop, "workout", w.ID, u.name, mustJSON(w)}})
			}
		}
		for typ, docs := range u.oura {
			if !want(Oura, typ) {
				continue
			}
			for _, d := range docs {
				all = append(all, keyed{d.ts, d.record(u)})
			}
		}
	}
	slices.SortStableFunc(all, func(a, b keyed) int {
		if c := a.t.Compare(b.t); c != 0 {
			return c
		}
		if c := strings.Compare(a.r.Type, b.r.Type); c != 0 {
			return c
		}
		return strings.Compare(a.r.ID, b.r.ID)
	})
	out := make([]Record, 0, len(all))
	for _, k := range all {
		out = append(out, k.r)
	}
	return out
}
