package emulator

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/biobridge/bridge/emulator/internal/store"
	"github.com/biobridge/bridge/emulator/internal/webhooks"
)

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
	e.st.Mu.Lock()
	if e.closed {
		e.st.Mu.Unlock()
		return HistoryResult{}, ErrClosed
	}
	u, err := e.userLocked(spec.User)
	if err != nil {
		e.st.Mu.Unlock()
		return HistoryResult{}, err
	}
	end := spec.End
	if end.IsZero() {
		end = e.st.Now()
	}
	res, evs, err := e.historyLocked(u, vendors, spec.Days, end)
	var jobs []*webhooks.Job
	if err == nil && spec.Webhooks {
		jobs = e.planLocked(evs)
	}
	e.st.Mu.Unlock()
	if err != nil {
		return HistoryResult{}, err
	}
	e.hooks.Submit(jobs)
	return res, nil
}

func (e *Emulator) historyLocked(u *store.Person, vendors []Vendor, days int, end time.Time) (HistoryResult, []event, error) {
	res := HistoryResult{Records: map[string]int{}}
	var evs []event
	loc := u.Zone()
	endLocal := end.In(loc)
	lastDay := time.Date(endLocal.Year(), endLocal.Month(), endLocal.Day(), 0, 0, 0, 0, loc)
	whoop, oura := slices.Contains(vendors, Whoop), slices.Contains(vendors, Oura)
	var lastWake time.Time
	for i := days - 1; i >= 0; i-- {
		day := lastDay.AddDate(0, 0, -i)
		wakeH := u.Base.BedtimeHour - 24 + u.Base.SleepNeed - 0.3 + e.st.RandLocked().NormFloat64()*0.5
		wake := day.Add(time.Duration(wakeH * float64(time.Hour)))
		if !wake.Before(end) {
			break
		}
		n := genNight(e.st.RandLocked(), u.Base, time.Time{}, wake)
		prevWake := lastWake
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
			if e.st.RandLocked().Float64() < 0.6 {
				ws := genWorkout(e.st.RandLocked(), u.Base, "", 0)
				start := day.Add(time.Duration((16.5 + e.st.RandLocked().Float64()*3) * float64(time.Hour)))
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
			// The series runs around the clock: the first night's day
			// starts 24 hours before its wake-up, every later one where
			// the previous ended. (Starting each at its wake-up minus
			// 24 hours overlapped the previous day whenever the user
			// woke earlier, and counted those samples twice.)
			from := n.end.Add(-24 * time.Hour)
			if !prevWake.IsZero() {
				from = prevWake
			}
			res.Records["oura/heartrate"] += len(e.addHeartRateLocked(u, from, n.end, n.start, n.end, noFixedBPM))
		}
	}
	if oura && !lastWake.IsZero() {
		res.Records["oura/heartrate"] += len(e.addHeartRateLocked(u, lastWake, end, time.Time{}, time.Time{}, noFixedBPM))
	}
	return res, evs, nil
}

func noFixedBPM() (int, bool) { return 0, false }

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
				e.log.Warn("demo round", "err", err)
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
	e.st.Mu.Lock()
	if e.closed {
		e.st.Mu.Unlock()
		return DemoResult{}, ErrClosed
	}
	e.demoTicks++
	var res DemoResult
	var evs []event
	now := e.st.Now()
	for _, u := range e.st.UserOrder {
		view := e.userViewLocked(u)
		if !view.WhoopConnected && !view.OuraConnected {
			continue
		}
		res.Users++
		n := genNight(e.st.RandLocked(), u.Base, time.Time{}, now)
		if view.WhoopConnected {
			recs, ev, err := e.createWhoopSleepLocked(u, n, false, ScoreStateScored, nil)
			if err != nil {
				e.st.Mu.Unlock()
				return res, err
			}
			res.Records += len(recs)
			evs = append(evs, ev...)
			if e.demoTicks%3 == 0 {
				ws := genWorkout(e.st.RandLocked(), u.Base, "", 0)
				recs, ev, err := e.createWhoopWorkoutLocked(u, now.Add(-ws.duration), ws, ScoreStateScored, nil)
				if err != nil {
					e.st.Mu.Unlock()
					return res, err
				}
				res.Records += len(recs)
				evs = append(evs, ev...)
			}
		}
		if view.OuraConnected {
			day := now.In(u.Zone()).Format(time.DateOnly)
			for _, dt := range []string{"sleep", "daily_sleep", "daily_readiness", "daily_spo2"} {
				doc, err := e.newOuraDocLocked(u, dt, n, day, nil)
				if err != nil {
					e.st.Mu.Unlock()
					return res, err
				}
				kind := "create"
				for _, old := range u.Oura[dt] {
					if old.Day == day {
						// Today's document is updated in place, keeping its id.
						doc.ID = old.ID
						setOuraID(doc.V, old.ID)
						kind = "update"
						break
					}
				}
				e.putOuraDocLocked(u, doc)
				evs = append(evs, ouraEv(u, kind, doc))
				res.Records++
			}
			from := now.Add(-15 * time.Minute)
			if len(u.Heartrate) > 0 {
				from = u.Heartrate[len(u.Heartrate)-1].T.Add(time.Minute)
			}
			res.Records += len(e.addHeartRateLocked(u, from, now, time.Time{}, time.Time{}, noFixedBPM))
		}
	}
	jobs := e.planLocked(evs)
	e.st.Mu.Unlock()
	e.hooks.Submit(jobs)
	return res, nil
}

func setOuraID(v store.OuraValue, id string) {
	switch d := v.(type) {
	case *store.OuraSleep:
		d.ID = id
	case *store.OuraDailySleep:
		d.ID = id
	case *store.OuraDailyReadiness:
		d.ID = id
	case *store.OuraDailySpo2:
		d.ID = id
	}
}
