package vendoremu

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"
)

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

// GenerateHistory creates Days nights and days of plausible data: for WHOOP
// a sleep, its cycle and recovery per night and a workout on most days; for
// Oura sleep, daily_sleep, daily_readiness and daily_spo2 per day and
// 5-minute heart rate around the clock.
func (e *Emulator) GenerateHistory(ctx context.Context, spec HistorySpec) (HistoryResult, error) {
	if err := ctx.Err(); err != nil {
		return HistoryResult{}, err
	}
	if spec.Days < 1 || spec.Days > 400 {
		return HistoryResult{}, fmt.Errorf("%w: days must be between 1 and 400", ErrInvalid)
	}
	vendors := spec.Vendors
	if len(vendors) == 0 {
		vendors = []Vendor{Whoop, Oura}
	}
	for _, v := range vendors {
		if v != Whoop && v != Oura {
			return HistoryResult{}, fmt.Errorf("%w: vendor %q", ErrInvalid, v)
		}
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return HistoryResult{}, ErrClosed
	}
	u, err := e.userLocked(spec.User)
	if err != nil {
		e.mu.Unlock()
		return HistoryResult{}, err
	}
	end := spec.End
	if end.IsZero() {
		end = e.now()
	}
	res, evs, err := e.historyLocked(u, vendors, spec.Days, end)
	var jobs []*job
	if err == nil && spec.Webhooks {
		jobs = e.planLocked(evs)
	}
	e.mu.Unlock()
	if err != nil {
		return HistoryResult{}, err
	}
	e.hooks.submit(jobs)
	return res, nil
}

func (e *Emulator) historyLocked(u *user, vendors []Vendor, days int, end time.Time) (HistoryResult, []event, error) {
	res := HistoryResult{Records: map[string]int{}}
	var evs []event
	loc := u.zone()
	endLocal := end.In(loc)
	lastDay := time.Date(endLocal.Year(), endLocal.Month(), endLocal.Day(), 0, 0, 0, 0, loc)
	whoop, oura := slices.Contains(vendors, Whoop), slices.Contains(vendors, Oura)
	var lastWake time.Time
	for i := days - 1; i >= 0; i-- {
		day := lastDay.AddDate(0, 0, -i)
		wakeH := u.base.bedtimeHour - 24 + u.base.sleepNeed - 0.3 + e.rng.NormFloat64()*0.5
		wake := day.Add(time.Duration(wakeH * float64(time.Hour)))
		if !wake.Before(end) {
			break
		}
		n := genNight(e.rng, u.base, time.Time{}, wake)
		lastWake = n.end
		if whoop {
			_, ev, err := e.createWhoopSleepLocked(u, n, false, ScoreStateScored, nil)
			if err != nil {
				return res, nil, err
			}
			evs = append(evs, ev...)
			res.Records["whoop/sleep"]++
			res.Records["whoop/recovery"]++
			res.Records["whoop/cycle"]++
			if e.rng.Float64() < 0.6 {
				ws := genWorkout(e.rng, u.base, "", 0)
				start := day.Add(time.Duration((16.5 + e.rng.Float64()*3) * float64(time.Hour)))
				if start.Add(ws.duration).Before(end) {
					_, ev, err := e.createWhoopWorkoutLocked(u, start, ws, ScoreStateScored, nil)
					if err != nil {
						return res, nil, err
					}
					evs = append(evs, ev...)
					res.Records["whoop/workout"]++
				}
			}
		}
		if oura {
			for _, dt := range []string{"sleep", "daily_sleep", "daily_readiness", "daily_spo2"} {
				doc, err := e.newOuraDocLocked(u, dt, n, day.Format(time.DateOnly), nil)
				if err != nil {
					return res, nil, err
				}
				e.putOuraDocLocked(u, doc)
				evs = append(evs, ouraEv(u, "create", doc))
				res.Records["oura/"+dt]++
			}
			added := e.addHeartRateLocked(u, n.end.Add(-24*time.Hour), n.end, n.start, n.end, noFixedBPM)
			res.Records["oura/heartrate"] += len(added)
		}
	}
	if oura && !lastWake.IsZero() {
		added := e.addHeartRateLocked(u, lastWake, end, time.Time{}, time.Time{}, noFixedBPM)
		res.Records["oura/heartrate"] += len(added)
	}
	return res, evs, nil
}

func noFixedBPM() (int, bool) { return 0, false }

// DemoResult says what one demo round produced.
type DemoResult struct {
	Users   int `json:"users"`
	Records int `json:"records"`
}

// RunDemo keeps producing live data until ctx ends: every interval, each
// user connected to WHOOP gets a new scored sleep (sleep.updated +
// recovery.updated) and every third round a workout; each user connected to
// Oura gets today's sleep, daily_sleep, daily_readiness and daily_spo2
// (created, then updated on later rounds) and heart rate since the last
// round. Users connect through the real OAuth flow; until they do a round
// does nothing.
func (e *Emulator) RunDemo(ctx context.Context, interval time.Duration) error {
	if interval <= 0 {
		return fmt.Errorf("%w: demo interval must be positive", ErrInvalid)
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			res, err := e.DemoTick(ctx)
			if errors.Is(err, ErrClosed) {
				return nil
			}
			if err != nil {
				e.log.Warn("demo round", "error", err)
				continue
			}
			e.log.Debug("demo round", "users", res.Users, "records", res.Records)
		}
	}
}

// DemoTick runs one demo round now (see RunDemo).
func (e *Emulator) DemoTick(ctx context.Context) (DemoResult, error) {
	if err := ctx.Err(); err != nil {
		return DemoResult{}, err
	}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return DemoResult{}, ErrClosed
	}
	e.demoTicks++
	var res DemoResult
	var evs []event
	now := e.now()
	for _, u := range e.userOrder {
		view := e.userViewLocked(u)
		if !view.WhoopConnected && !view.OuraConnected {
			continue
		}
		res.Users++
		n := genNight(e.rng, u.base, time.Time{}, now)
		if view.WhoopConnected {
			recs, ev, err := e.createWhoopSleepLocked(u, n, false, ScoreStateScored, nil)
			if err != nil {
				e.mu.Unlock()
				return res, err
			}
			res.Records += len(recs)
			evs = append(evs, ev...)
			if e.demoTicks%3 == 0 {
				ws := genWorkout(e.rng, u.base, "", 0)
				recs, ev, err := e.createWhoopWorkoutLocked(u, now.Add(-ws.duration), ws, ScoreStateScored, nil)
				if err != nil {
					e.mu.Unlock()
					return res, err
				}
				res.Records += len(recs)
				evs = append(evs, ev...)
			}
		}
		if view.OuraConnected {
			day := now.In(u.zone()).Format(time.DateOnly)
			for _, dt := range []string{"sleep", "daily_sleep", "daily_readiness", "daily_spo2"} {
				doc, err := e.newOuraDocLocked(u, dt, n, day, nil)
				if err != nil {
					e.mu.Unlock()
					return res, err
				}
				kind := "create"
				for _, old := range u.oura[dt] {
					if old.day == day {
						// Today's document is updated in place, keeping its id.
						doc.id = old.id
						setOuraID(doc.v, old.id)
						kind = "update"
						break
					}
				}
				e.putOuraDocLocked(u, doc)
				evs = append(evs, ouraEv(u, kind, doc))
				res.Records++
			}
			from := now.Add(-15 * time.Minute)
			if len(u.heartrate) > 0 {
				from = u.heartrate[len(u.heartrate)-1].t.Add(time.Minute)
			}
			res.Records += len(e.addHeartRateLocked(u, from, now, time.Time{}, time.Time{}, noFixedBPM))
		}
	}
	jobs := e.planLocked(evs)
	e.mu.Unlock()
	e.hooks.submit(jobs)
	return res, nil
}

func setOuraID(v ouraValue, id string) {
	switch d := v.(type) {
	case *ouraSleep:
		d.ID = id
	case *ouraDailySleep:
		d.ID = id
	case *ouraDailyReadiness:
		d.ID = id
	case *ouraDailySpo2:
		d.ID = id
	}
}
