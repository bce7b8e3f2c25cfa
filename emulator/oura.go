package emulator

import (
	"context"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/biobridge/bridge/emulator/internal/store"
)

// ouraStored are the data types the emulator keeps documents for.
var ouraStored = map[string]bool{"sleep": true, "daily_sleep": true, "daily_readiness": true, "daily_spo2": true}

// ouraTime formats t in the user's zone the way Oura does
// ("2026-11-20T07:31:02+01:00", never "Z").
func ouraTime(t time.Time, loc *time.Location) string {
	return t.In(loc).Format("2006-01-02T15:04:05-07:00")
}

func (e *Emulator) contributorLocked(base float64) int {
	return int(clamp(math.Round(base+e.st.RandLocked().NormFloat64()*8), 1, 100))
}

// newOuraDocLocked builds one Oura document from a night.
func (e *Emulator) newOuraDocLocked(u *store.Person, dataType string, n night, day string, values map[string]float64) (*store.OuraDoc, error) {
	loc := u.Zone()
	dayStart, err := time.ParseInLocation(time.DateOnly, day, loc)
	if err != nil {
		return nil, fmt.Errorf("%w: day %q", ErrInvalid, day)
	}
	doc := &store.OuraDoc{ID: e.st.UUIDLocked(), DataType: dataType, Day: day, TS: dayStart}
	readinessContrib := func() store.OuraReadinessContributors {
		return store.OuraReadinessContributors{
			ActivityBalance: e.contributorLocked(80), BodyTemperature: e.contributorLocked(95 - 40*math.Abs(n.tempDeviation)),
			HrvBalance: e.contributorLocked(n.readiness), PreviousDayActivity: e.contributorLocked(78),
			PreviousNight: e.contributorLocked(n.sleepScore), RecoveryIndex: e.contributorLocked(n.readiness + 5),
			RestingHeartRate: e.contributorLocked(n.readiness + 8), SleepBalance: e.contributorLocked(n.performance),
		}
	}
	switch dataType {
	case "sleep":
		doc.TS = n.start
		s := &store.OuraSleep{
			ID: doc.ID, AverageBreath: n.respRate, AverageHeartRate: n.avgHR, AverageHrv: int(math.Round(n.hrv)),
			AwakeTime: secs(n.awake), BedtimeEnd: ouraTime(n.end, loc), BedtimeStart: ouraTime(n.start, loc),
			Day: day, DeepSleepDuration: secs(n.deep), Efficiency: int(math.Round(n.efficiency)),
			Latency: secs(n.latency), LightSleepDuration: secs(n.light), LowestHeartRate: int(n.lowestHR),
			Readiness: &store.OuraSleepReadiness{
				Contributors: readinessContrib(), Score: int(n.readiness),
				TemperatureDeviation: n.tempDeviation, TemperatureTrendDeviation: round2(n.tempDeviation * 0.6),
			},
			RemSleepDuration: secs(n.rem), RestlessPeriods: n.disturbances * 12, SleepAlgorithmVersion: "v2",
			TimeInBed: secs(n.inBed), TotalSleepDuration: secs(n.light + n.deep + n.rem), Type: "long_sleep",
		}
		// 5-minute series over the night: heart rate, HRV and the hypnogram
		// (1 deep, 2 light, 3 REM, 4 awake).
		slots := int(n.inBed / (5 * time.Minute))
		s.HeartRate = &store.OuraSample{Interval: 300, Timestamp: ouraTime(n.start, loc)}
		s.Hrv = &store.OuraSample{Interval: 300, Timestamp: ouraTime(n.start, loc)}
		var phases strings.Builder
		for i := range slots {
			hr := float64(heartRateAt(e.st.RandLocked(), u.Base, n.start, true))
			hrv := math.Round(clamp(n.hrv+e.st.RandLocked().NormFloat64()*10, 5, 250))
			s.HeartRate.Items = append(s.HeartRate.Items, &hr)
			s.Hrv.Items = append(s.Hrv.Items, &hrv)
			pos := float64(i) / float64(max(slots, 1))
			switch {
			case i < 2 || e.st.RandLocked().Float64() < float64(n.awake)/float64(n.inBed):
				phases.WriteByte('4')
			case pos < 0.4 && e.st.RandLocked().Float64() < 0.45:
				phases.WriteByte('1')
			case pos > 0.5 && e.st.RandLocked().Float64() < 0.4:
				phases.WriteByte('3')
			default:
				phases.WriteByte('2')
			}
		}
		s.SleepPhase5Min = phases.String()
		doc.V = s
	case "daily_sleep":
		doc.V = &store.OuraDailySleep{
			ID: doc.ID, Day: day, Score: int(n.sleepScore), Timestamp: ouraTime(dayStart, loc),
			Contributors: store.OuraSleepContributors{
				DeepSleep: e.contributorLocked(float64(n.deep) / float64(90*time.Minute) * 100), Efficiency: e.contributorLocked(n.efficiency),
				Latency: e.contributorLocked(90), RemSleep: e.contributorLocked(float64(n.rem) / float64(105*time.Minute) * 100),
				Restfulness: e.contributorLocked(75), Timing: e.contributorLocked(n.consistency), TotalSleep: e.contributorLocked(n.performance),
			},
		}
	case "daily_readiness":
		doc.V = &store.OuraDailyReadiness{
			ID: doc.ID, Day: day, Score: int(n.readiness), Timestamp: ouraTime(dayStart, loc),
			TemperatureDeviation: n.tempDeviation, TemperatureTrendDeviation: round2(n.tempDeviation * 0.6),
			Contributors: readinessContrib(),
		}
	case "daily_spo2":
		doc.V = &store.OuraDailySpo2{
			ID: doc.ID, Day: day, Spo2Percentage: &store.OuraSpo2Figure{Average: n.spo2},
			BreathingDisturbanceIndex: int(math.Round(n.bdi)),
		}
	default:
		return nil, fmt.Errorf("%w: Oura data type %q", ErrInvalid, dataType)
	}
	if err := doc.V.Fields().Apply(values); err != nil {
		return nil, err
	}
	return doc, nil
}

func (e *Emulator) putOuraDocLocked(u *store.Person, d *store.OuraDoc) {
	if u.Oura[d.DataType] == nil {
		u.Oura[d.DataType] = map[string]*store.OuraDoc{}
	}
	u.Oura[d.DataType][d.ID] = d
}

// addHeartRateLocked adds 5-minute samples over [start, end), calmer while
// asleep ([sleepStart, sleepEnd)). fixed, when it reports true, pins the bpm.
// A sample at an existing timestamp replaces it.
func (e *Emulator) addHeartRateLocked(u *store.Person, start, end, sleepStart, sleepEnd time.Time, fixed func() (int, bool)) []*store.OuraHR {
	loc := u.Zone()
	var added []*store.OuraHR
	for t := start.UTC().Truncate(5 * time.Minute); t.Before(end); t = t.Add(5 * time.Minute) {
		if t.Before(start) {
			continue
		}
		asleep := !t.Before(sleepStart) && t.Before(sleepEnd)
		bpm := heartRateAt(e.st.RandLocked(), u.Base, t.In(loc), asleep)
		if v, ok := fixed(); ok {
			bpm = v
		}
		src := "awake"
		if asleep {
			src = "rest"
		}
		added = append(added, &store.OuraHR{BPM: bpm, Source: src, Timestamp: ouraTime(t, time.UTC), T: t})
	}
	if len(added) == 0 {
		return added
	}
	if n := len(u.Heartrate); n == 0 || u.Heartrate[n-1].T.Before(added[0].T) {
		// History and demo rounds arrive in time order: no re-sort needed.
		u.Heartrate = append(u.Heartrate, added...)
		return added
	}
	merged := append(u.Heartrate, added...)
	slices.SortStableFunc(merged, func(a, b *store.OuraHR) int { return a.T.Compare(b.T) })
	out := merged[:0]
	for _, s := range merged {
		if len(out) > 0 && out[len(out)-1].T.Equal(s.T) {
			out[len(out)-1] = s
			continue
		}
		out = append(out, s)
	}
	u.Heartrate = out
	return added
}

func secs(d time.Duration) int { return int(d / time.Second) }

// VerifyOuraCallback runs the verification handshake against callbackURL
// (default Config.OuraWebhookURL) with token (default
// Config.OuraVerificationToken), as Oura does when a subscription is created.
func (e *Emulator) VerifyOuraCallback(ctx context.Context, callbackURL, token string) error {
	e.st.Mu.Lock()
	if callbackURL == "" {
		callbackURL = e.ouraTarget
	}
	if token == "" {
		token = e.ouraVerifyTok
	}
	e.st.Mu.Unlock()
	if callbackURL == "" {
		return fmt.Errorf("%w: no callback url configured", ErrInvalid)
	}
	return e.oura.Handshake(ctx, callbackURL, token)
}
