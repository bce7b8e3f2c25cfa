package emulator

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash/fnv"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/biobridge/bridge/emulator/internal/store"
	"github.com/biobridge/bridge/emulator/internal/webhooks"
)

// AddUser adds an emulated user. Vendor user ids are derived from the name,
// so the same name gets the same WHOOP and Oura ids in every run (a
// restarted devstack maps webhooks to the same people). Adding an existing
// name returns the existing user unchanged.
func (e *Emulator) AddUser(spec UserSpec) (User, error) {
	e.st.Mu.Lock()
	defer e.st.Mu.Unlock()
	u, err := e.addUserLocked(spec)
	if err != nil {
		return User{}, err
	}
	return e.userViewLocked(u), nil
}

func (e *Emulator) addUserLocked(spec UserSpec) (*store.Person, error) {
	if u, ok := e.st.Users[spec.Name]; ok {
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
	for e.st.WhoopIDs[whoopID] != nil {
		whoopID++
	}
	sum := sha256.Sum256([]byte("oura:" + spec.Name))
	email := spec.Email
	if email == "" {
		email = strings.ToLower(spec.Name) + "@example.test"
	}
	first, last, _ := strings.Cut(spec.Name, ".")
	u := &store.Person{
		Name: spec.Name, Email: email,
		FirstName: capitalize(first), LastName: capitalize(last),
		WhoopID: whoopID, OuraID: hex.EncodeToString(sum[:16]),
		Offset:     time.Duration(spec.UTCOffsetMinutes) * time.Minute,
		Base:       newBaseline(e.st.RandLocked()),
		Cycles:     map[int64]*store.WhoopCycle{},
		Sleeps:     map[string]*store.WhoopSleep{},
		Recoveries: map[int64]*store.WhoopRecovery{},
		Workouts:   map[string]*store.WhoopWorkout{},
		Oura:       map[string]map[string]*store.OuraDoc{},
	}
	if u.FirstName == "" {
		u.FirstName = "Emulated"
	}
	if u.LastName == "" {
		u.LastName = "User"
	}
	e.st.Users[u.Name] = u
	e.st.UserOrder = append(e.st.UserOrder, u)
	e.st.WhoopIDs[whoopID] = u
	return u, nil
}

func capitalize(s string) string {
	if s == "" {
		return ""
	}
	return strings.ToUpper(s[:1]) + s[1:]
}

func (e *Emulator) userViewLocked(u *store.Person) User {
	v := User{
		Name: u.Name, Email: u.Email, WhoopUserID: u.WhoopID, OuraUserID: u.OuraID,
		UTCOffset: store.OffsetString(u.Offset),
	}
	for _, g := range e.st.Grants {
		if g.User == u.Name && !g.Revoked {
			switch g.Vendor {
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
	e.st.Mu.Lock()
	defer e.st.Mu.Unlock()
	out := make([]User, 0, len(e.st.UserOrder))
	for _, u := range e.st.UserOrder {
		out = append(out, e.userViewLocked(u))
	}
	return out
}

func (e *Emulator) userLocked(name string) (*store.Person, error) {
	u, ok := e.st.Users[name]
	if !ok {
		return nil, fmt.Errorf("%w: user %q", ErrNotFound, name)
	}
	return u, nil
}

// CreateRecord creates a record (or a WHOOP sleep with its cycle and
// recovery) and delivers the vendor's webhook for it.
func (e *Emulator) CreateRecord(ctx context.Context, spec RecordSpec) ([]Record, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	e.st.Mu.Lock()
	if e.closed {
		e.st.Mu.Unlock()
		return nil, ErrClosed
	}
	u, err := e.userLocked(spec.User)
	if err != nil {
		e.st.Mu.Unlock()
		return nil, err
	}
	recs, evs, err := e.createLocked(u, spec)
	var jobs []*webhooks.Job
	if err == nil && !spec.NoWebhook {
		jobs = e.planLocked(evs)
	}
	e.st.Mu.Unlock()
	if err != nil {
		return nil, err
	}
	e.hooks.Submit(jobs)
	return recs, nil
}

func (e *Emulator) createLocked(u *store.Person, spec RecordSpec) ([]Record, []event, error) {
	end := spec.End
	if end.IsZero() {
		end = e.st.Now()
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
			n := genNight(e.st.RandLocked(), u.Base, spec.Start, end)
			return e.createWhoopSleepLocked(u, n, spec.Nap, state, spec.Values)
		case "workout":
			var d time.Duration
			if !spec.Start.IsZero() {
				d = end.Sub(spec.Start)
			}
			ws := genWorkout(e.st.RandLocked(), u.Base, spec.SportName, d)
			return e.createWhoopWorkoutLocked(u, end.Add(-ws.duration), ws, state, spec.Values)
		}
		return nil, nil, fmt.Errorf("%w: WHOOP record type %q (want sleep or workout)", ErrInvalid, spec.Type)
	case Oura:
		if spec.ScoreState != "" || spec.Nap || spec.SportName != "" {
			return nil, nil, fmt.Errorf("%w: score_state, nap and sport_name are WHOOP-only", ErrInvalid)
		}
		day := spec.Day
		if day == "" {
			day = end.In(u.Zone()).Format(time.DateOnly)
		} else if _, err := time.Parse(time.DateOnly, day); err != nil {
			return nil, nil, fmt.Errorf("%w: day %q must be YYYY-MM-DD", ErrInvalid, day)
		}
		switch spec.Type {
		case "sleep", "daily_sleep", "daily_readiness", "daily_spo2":
			n := genNight(e.st.RandLocked(), u.Base, spec.Start, end)
			doc, err := e.newOuraDocLocked(u, spec.Type, n, day, spec.Values)
			if err != nil {
				return nil, nil, err
			}
			e.putOuraDocLocked(u, doc)
			return []Record{doc.Record(u)}, []event{ouraEv(u, "create", doc)}, nil
		case "heartrate":
			start := spec.Start
			if start.IsZero() {
				start = end.Add(-time.Hour)
			}
			if err := (store.FieldSet{"bpm": func(float64) {}}).Apply(spec.Values); err != nil {
				return nil, nil, err
			}
			bpm, fixed := spec.Values["bpm"]
			samples := e.addHeartRateLocked(u, start, end, time.Time{}, time.Time{}, func() (int, bool) {
				return int(math.Round(bpm)), fixed
			})
			return []Record{{Vendor: Oura, Type: "heartrate", User: u.Name, Data: store.MustJSON(samples)}}, nil, nil
		}
		return nil, nil, fmt.Errorf("%w: Oura record type %q (want sleep, daily_sleep, daily_readiness, daily_spo2 or heartrate)", ErrInvalid, spec.Type)
	}
	return nil, nil, fmt.Errorf("%w: vendor %q (want whoop or oura)", ErrInvalid, spec.Vendor)
}

// createWhoopSleepLocked stores a sleep with its cycle and recovery. A
// non-nap sleep starts a new physiological cycle and closes the open one,
// as WHOOP's cycles run from sleep onset to sleep onset.
func (e *Emulator) createWhoopSleepLocked(u *store.Person, n night, nap bool, state string, values map[string]float64) ([]Record, []event, error) {
	now := e.st.Now()
	tz := store.OffsetString(u.Offset)
	// prevOpen is the cycle this sleep falls in; nextStart is the start of
	// the first later cycle (history generated before existing data).
	var cycle, prevOpen *store.WhoopCycle
	var nextStart *time.Time
	for _, c := range u.Cycles {
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
		cycle = &store.WhoopCycle{
			ID: e.st.NextCycleID, UserID: u.WhoopID, CreatedAt: now, UpdatedAt: now,
			Start: n.start, End: nextStart, TimezoneOffset: tz,
		}
		d := genDay(e.st.RandLocked(), u.Base, false)
		cycle.Prepared = store.WhoopCycleScore{Strain: d.strain, Kilojoule: d.kilojoule, AverageHeartRate: d.avgHR, MaxHeartRate: d.maxHR}
		cycle.SetScoreState(state)
	} else {
		cycle = prevOpen
	}
	s := &store.WhoopSleep{
		ID: e.st.UUIDLocked(), CycleID: cycle.ID, UserID: u.WhoopID, CreatedAt: now, UpdatedAt: now,
		Start: n.start, End: n.end, TimezoneOffset: tz, Nap: nap,
	}
	debt := time.Duration(e.st.RandLocked().IntN(40)) * time.Minute
	strainNeed := time.Duration(e.st.RandLocked().IntN(20)) * time.Minute
	s.Prepared = store.WhoopSleepScore{
		StageSummary: store.WhoopStageSummary{
			TotalInBedTimeMilli:         n.inBed.Milliseconds(),
			TotalAwakeTimeMilli:         n.awake.Milliseconds(),
			TotalLightSleepTimeMilli:    n.light.Milliseconds(),
			TotalSlowWaveSleepTimeMilli: n.deep.Milliseconds(),
			TotalRemSleepTimeMilli:      n.rem.Milliseconds(),
			SleepCycleCount:             n.cycles,
			DisturbanceCount:            n.disturbances,
		},
		SleepNeeded: store.WhoopSleepNeeded{
			BaselineMilli:             int64(u.Base.SleepNeed * float64(time.Hour/time.Millisecond)),
			NeedFromSleepDebtMilli:    debt.Milliseconds(),
			NeedFromRecentStrainMilli: strainNeed.Milliseconds(),
		},
		RespiratoryRate:            n.respRate,
		SleepPerformancePercentage: n.performance,
		SleepConsistencyPercentage: n.consistency,
		SleepEfficiencyPercentage:  n.efficiency,
	}
	s.SetScoreState(state)
	var rec *store.WhoopRecovery
	if !nap {
		rec = &store.WhoopRecovery{CycleID: cycle.ID, SleepID: s.ID, UserID: u.WhoopID, CreatedAt: now, UpdatedAt: now}
		rec.Prepared = store.WhoopRecoveryScore{
			RecoveryScore: n.recovery, RestingHeartRate: n.restingHR, HrvRmssdMilli: n.hrv,
			Spo2Percentage: n.spo2, SkinTempCelsius: n.skinTemp,
		}
		rec.SetScoreState(state)
	}
	fs := whoopSleepBundleFields(cycle, s, rec)
	if !newCycle {
		// A nap's values must not rewrite the cycle it joins.
		fs = whoopSleepBundleFields(&store.WhoopCycle{}, s, rec)
	}
	if err := fs.Apply(values); err != nil {
		return nil, nil, err
	}
	if newCycle {
		e.st.NextCycleID++
		if prevOpen != nil && prevOpen.End == nil {
			end := n.start
			prevOpen.End = &end
			prevOpen.UpdatedAt = now
		}
		u.Cycles[cycle.ID] = cycle
	}
	u.Sleeps[s.ID] = s
	evs := []event{whoopEv(u, "sleep.updated", s.ID)}
	recs := []Record{{Vendor: Whoop, Type: "sleep", ID: s.ID, User: u.Name, Data: store.MustJSON(s)}}
	if rec != nil {
		u.Recoveries[cycle.ID] = rec
		evs = append(evs, whoopEv(u, "recovery.updated", s.ID))
		recs = append(recs, Record{Vendor: Whoop, Type: "recovery", ID: s.ID, User: u.Name, Data: store.MustJSON(rec)})
	}
	recs = append(recs, Record{Vendor: Whoop, Type: "cycle", ID: strconv.FormatInt(cycle.ID, 10), User: u.Name, Data: store.MustJSON(cycle)})
	if state == ScoreStatePending {
		e.scheduleScoreLocked("sleep", s.ID)
	}
	return recs, evs, nil
}

func (e *Emulator) createWhoopWorkoutLocked(u *store.Person, start time.Time, ws workoutShape, state string, values map[string]float64) ([]Record, []event, error) {
	now := e.st.Now()
	start = start.UTC().Truncate(time.Second)
	w := &store.WhoopWorkout{
		ID: e.st.UUIDLocked(), UserID: u.WhoopID, CreatedAt: now, UpdatedAt: now,
		Start: start, End: start.Add(ws.duration), TimezoneOffset: store.OffsetString(u.Offset),
		SportName: ws.sport, SportID: ws.sportID,
	}
	w.Prepared = store.WhoopWorkoutScore{
		Strain: ws.strain, AverageHeartRate: ws.avgHR, MaxHeartRate: ws.maxHR, Kilojoule: ws.kilojoule,
		PercentRecorded: ws.percentRecorded,
		ZoneDurations: store.WhoopZoneDurations{
			ZoneZeroMilli: ws.zones[0].Milliseconds(), ZoneOneMilli: ws.zones[1].Milliseconds(),
			ZoneTwoMilli: ws.zones[2].Milliseconds(), ZoneThreeMilli: ws.zones[3].Milliseconds(),
			ZoneFourMilli: ws.zones[4].Milliseconds(), ZoneFiveMilli: ws.zones[5].Milliseconds(),
		},
	}
	if ws.distance > 0 {
		d, g, c := ws.distance, ws.altitudeGain, ws.altitudeChange
		w.Prepared.DistanceMeter, w.Prepared.AltitudeGainMeter, w.Prepared.AltitudeChangeMeter = &d, &g, &c
	}
	if err := w.Fields().Apply(values); err != nil {
		return nil, nil, err
	}
	w.SetScoreState(state)
	u.Workouts[w.ID] = w
	if state == ScoreStatePending {
		e.scheduleScoreLocked("workout", w.ID)
	}
	return []Record{{Vendor: Whoop, Type: "workout", ID: w.ID, User: u.Name, Data: store.MustJSON(w)}},
		[]event{whoopEv(u, "workout.updated", w.ID)}, nil
}

// findWhoopLocked locates a WHOOP record by the id its webhook carries.
func (e *Emulator) findWhoopLocked(typ, id string) (*store.Person, any, error) {
	for _, u := range e.st.UserOrder {
		switch typ {
		case "sleep":
			if s, ok := u.Sleeps[id]; ok {
				return u, s, nil
			}
		case "recovery":
			if s, ok := u.Sleeps[id]; ok {
				if r, ok := u.Recoveries[s.CycleID]; ok && r.SleepID == id {
					return u, r, nil
				}
			}
		case "workout":
			if w, ok := u.Workouts[id]; ok {
				return u, w, nil
			}
		case "cycle":
			n, err := strconv.ParseInt(id, 10, 64)
			if err != nil {
				return nil, nil, fmt.Errorf("%w: cycle id %q", ErrInvalid, id)
			}
			if c, ok := u.Cycles[n]; ok {
				return u, c, nil
			}
		default:
			return nil, nil, fmt.Errorf("%w: WHOOP record type %q (want sleep, recovery, workout or cycle)", ErrInvalid, typ)
		}
	}
	return nil, nil, fmt.Errorf("%w: whoop %s %q", ErrNotFound, typ, id)
}

func (e *Emulator) findOuraLocked(typ, id string) (*store.Person, *store.OuraDoc, error) {
	if !ouraStored[typ] {
		return nil, nil, fmt.Errorf("%w: Oura record type %q (want sleep, daily_sleep, daily_readiness or daily_spo2)", ErrInvalid, typ)
	}
	for _, u := range e.st.UserOrder {
		if d, ok := u.Oura[typ][id]; ok {
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
	e.st.Mu.Lock()
	rec, evs, err := e.updateLocked(vendor, typ, id, values)
	jobs := e.planLocked(evs)
	e.st.Mu.Unlock()
	if err != nil {
		return Record{}, err
	}
	e.hooks.Submit(jobs)
	return rec, nil
}

func (e *Emulator) updateLocked(vendor Vendor, typ, id string, values map[string]float64) (Record, []event, error) {
	if e.closed {
		return Record{}, nil, ErrClosed
	}
	now := e.st.Now()
	switch vendor {
	case Whoop:
		u, v, err := e.findWhoopLocked(typ, id)
		if err != nil {
			return Record{}, nil, err
		}
		var fs store.FieldSet
		var ev []event
		switch r := v.(type) {
		case *store.WhoopSleep:
			fs, ev = r.Fields(), []event{whoopEv(u, "sleep.updated", id)}
			defer func() { r.UpdatedAt = now }()
		case *store.WhoopRecovery:
			fs, ev = r.Fields(), []event{whoopEv(u, "recovery.updated", id)}
			defer func() { r.UpdatedAt = now }()
		case *store.WhoopWorkout:
			fs, ev = r.Fields(), []event{whoopEv(u, "workout.updated", id)}
			defer func() { r.UpdatedAt = now }()
		case *store.WhoopCycle:
			fs = r.Fields()
			defer func() { r.UpdatedAt = now }()
		}
		if err := fs.Apply(values); err != nil {
			return Record{}, nil, err
		}
		return Record{Vendor: Whoop, Type: typ, ID: id, User: u.Name, Data: store.MustJSON(v)}, ev, nil
	case Oura:
		u, d, err := e.findOuraLocked(typ, id)
		if err != nil {
			return Record{}, nil, err
		}
		if err := d.V.Fields().Apply(values); err != nil {
			return Record{}, nil, err
		}
		return d.Record(u), []event{ouraEv(u, "update", d)}, nil
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
	e.st.Mu.Lock()
	recs, evs, err := e.scoreLocked(typ, id)
	jobs := e.planLocked(evs)
	e.st.Mu.Unlock()
	if err != nil {
		return nil, err
	}
	e.hooks.Submit(jobs)
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
	now := e.st.Now()
	switch r := v.(type) {
	case *store.WhoopSleep:
		var recs []Record
		var evs []event
		if r.ScoreState != ScoreStateScored {
			r.SetScoreState(ScoreStateScored)
			r.UpdatedAt = now
			evs = append(evs, whoopEv(u, "sleep.updated", id))
		}
		recs = append(recs, Record{Vendor: Whoop, Type: "sleep", ID: id, User: u.Name, Data: store.MustJSON(r)})
		if rec, ok := u.Recoveries[r.CycleID]; ok && rec.SleepID == id {
			if rec.ScoreState != ScoreStateScored {
				rec.SetScoreState(ScoreStateScored)
				rec.UpdatedAt = now
				evs = append(evs, whoopEv(u, "recovery.updated", id))
			}
			recs = append(recs, Record{Vendor: Whoop, Type: "recovery", ID: id, User: u.Name, Data: store.MustJSON(rec)})
		}
		if c, ok := u.Cycles[r.CycleID]; ok && c.ScoreState != ScoreStateScored {
			c.SetScoreState(ScoreStateScored)
			c.UpdatedAt = now
		}
		return recs, evs, nil
	case *store.WhoopWorkout:
		var evs []event
		if r.ScoreState != ScoreStateScored {
			r.SetScoreState(ScoreStateScored)
			r.UpdatedAt = now
			evs = append(evs, whoopEv(u, "workout.updated", id))
		}
		return []Record{{Vendor: Whoop, Type: "workout", ID: id, User: u.Name, Data: store.MustJSON(r)}}, evs, nil
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
		e.st.Mu.Lock()
		delete(e.scoreTimers, t)
		e.st.Mu.Unlock()
		if _, err := e.ScoreRecord(context.Background(), typ, id); err != nil {
			e.log.Debug("scheduled scoring skipped", "type", typ, "err", err)
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
	e.st.Mu.Lock()
	evs, err := e.deleteLocked(vendor, typ, id)
	jobs := e.planLocked(evs)
	e.st.Mu.Unlock()
	if err != nil {
		return err
	}
	e.hooks.Submit(jobs)
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
		case *store.WhoopSleep:
			delete(u.Sleeps, id)
			evs := []event{whoopEv(u, "sleep.deleted", id)}
			if rec, ok := u.Recoveries[r.CycleID]; ok && rec.SleepID == id {
				delete(u.Recoveries, r.CycleID)
				evs = append(evs, whoopEv(u, "recovery.deleted", id))
			}
			return evs, nil
		case *store.WhoopRecovery:
			delete(u.Recoveries, r.CycleID)
			return []event{whoopEv(u, "recovery.deleted", id)}, nil
		case *store.WhoopWorkout:
			delete(u.Workouts, id)
			return []event{whoopEv(u, "workout.deleted", id)}, nil
		}
	case Oura:
		u, d, err := e.findOuraLocked(typ, id)
		if err != nil {
			return nil, err
		}
		delete(u.Oura[typ], id)
		return []event{ouraEv(u, "delete", d)}, nil
	}
	return nil, fmt.Errorf("%w: vendor %q", ErrInvalid, vendor)
}

// ListRecords returns matching records, oldest first, as the vendor serves
// them (Oura heart-rate samples are not listed).
func (e *Emulator) ListRecords(f RecordFilter) []Record {
	e.st.Mu.Lock()
	defer e.st.Mu.Unlock()
	type keyed struct {
		t time.Time
		r Record
	}
	var all []keyed
	want := func(v Vendor, typ string) bool {
		return (f.Vendor == "" || f.Vendor == v) && (f.Type == "" || f.Type == typ)
	}
	for _, u := range e.st.UserOrder {
		if f.User != "" && u.Name != f.User {
			continue
		}
		if want(Whoop, "cycle") {
			for _, c := range u.Cycles {
				all = append(all, keyed{c.Start, Record{Vendor: Whoop, Type: "cycle", ID: strconv.FormatInt(c.ID, 10), User: u.Name, Data: store.MustJSON(c)}})
			}
		}
		for _, s := range u.Sleeps {
			if want(Whoop, "sleep") {
				all = append(all, keyed{s.Start, Record{Vendor: Whoop, Type: "sleep", ID: s.ID, User: u.Name, Data: store.MustJSON(s)}})
			}
			if rec, ok := u.Recoveries[s.CycleID]; ok && rec.SleepID == s.ID && want(Whoop, "recovery") {
				all = append(all, keyed{s.Start, Record{Vendor: Whoop, Type: "recovery", ID: s.ID, User: u.Name, Data: store.MustJSON(rec)}})
			}
		}
		if want(Whoop, "workout") {
			for _, w := range u.Workouts {
				all = append(all, keyed{w.Start, Record{Vendor: Whoop, Type: "workout", ID: w.ID, User: u.Name, Data: store.MustJSON(w)}})
			}
		}
		for typ, docs := range u.Oura {
			if !want(Oura, typ) {
				continue
			}
			for _, d := range docs {
				all = append(all, keyed{d.TS, d.Record(u)})
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
