package emulator

import (
	"math"
	"math/rand/v2"
	"time"

	"github.com/biobridge/bridge/emulator/internal/store"
)

func newBaseline(r *rand.Rand) store.Baseline {
	female := r.IntN(2) == 0
	b := store.Baseline{
		RestingHR:   clamp(56+r.NormFloat64()*5, 42, 72),
		HRV:         clamp(58+r.NormFloat64()*15, 25, 120),
		RespRate:    clamp(14.8+r.NormFloat64()*1.0, 12, 18.5),
		SpO2:        clamp(96.5+r.NormFloat64()*0.8, 94.5, 98.8),
		SkinTemp:    clamp(33.8+r.NormFloat64()*0.4, 32.8, 34.8),
		SleepNeed:   clamp(7.8+r.NormFloat64()*0.4, 7, 9),
		Age:         25 + r.IntN(35),
		Female:      female,
		BedtimeHour: clamp(23.1+r.NormFloat64()*0.6, 21.5, 25),
	}
	b.MaxHR = math.Round(208 - 0.7*float64(b.Age))
	if female {
		b.WeightKg = round1(clamp(64+r.NormFloat64()*8, 48, 95))
		b.HeightM = round2(clamp(1.66+r.NormFloat64()*0.06, 1.5, 1.85))
	} else {
		b.WeightKg = round1(clamp(80+r.NormFloat64()*9, 58, 115))
		b.HeightM = round2(clamp(1.79+r.NormFloat64()*0.07, 1.6, 2.0))
	}
	return b
}

// night is one sleep with the physiology measured during it.
type night struct {
	start, end       time.Time
	inBed            time.Duration
	awake            time.Duration
	light, deep, rem time.Duration
	latency          time.Duration
	disturbances     int
	cycles           int
	respRate         float64
	restingHR        float64
	lowestHR         float64
	avgHR            float64
	hrv              float64
	spo2             float64
	bdi              float64 // breathing disturbance index
	skinTemp         float64
	tempDeviation    float64 // °C vs the person's store.Baseline
	efficiency       float64 // %
	performance      float64 // % of sleep need
	consistency      float64 // %
	recovery         float64 // WHOOP recovery 0-100
	readiness        float64 // Oura readiness 0-100
	sleepScore       float64 // Oura sleep score 0-100
}

// genNight draws a night that ends at wake (or spans [start, end] when both
// are given).
func genNight(r *rand.Rand, b store.Baseline, start, end time.Time) night {
	if end.IsZero() {
		end = time.Now()
	}
	hours := clamp(b.SleepNeed-0.4+r.NormFloat64()*0.8, 4.5, 10.5)
	if start.IsZero() || !start.Before(end) {
		start = end.Add(-time.Duration(hours * float64(time.Hour)))
	}
	n := night{start: start.UTC().Truncate(time.Second), end: end.UTC().Truncate(time.Second)}
	n.inBed = n.end.Sub(n.start)
	awakeFrac := clamp(0.08+r.NormFloat64()*0.03, 0.02, 0.2)
	n.awake = scaleDur(n.inBed, awakeFrac)
	asleep := n.inBed - n.awake
	deepFrac := clamp(0.19+r.NormFloat64()*0.03, 0.1, 0.28)
	remFrac := clamp(0.23+r.NormFloat64()*0.03, 0.14, 0.3)
	n.deep = scaleDur(asleep, deepFrac)
	n.rem = scaleDur(asleep, remFrac)
	n.light = asleep - n.deep - n.rem
	n.latency = time.Duration(clamp(9+r.NormFloat64()*5, 1, 40)) * time.Minute
	n.disturbances = int(clamp(11+r.NormFloat64()*4, 2, 30))
	n.cycles = int(clamp(asleep.Hours()/1.5+r.NormFloat64()*0.5, 1, 7))

	// Tonight's autonomic state drives HRV, resting heart rate and the
	// scores together, the way a hard day or a bad night shows up in all of
	// them at once.
	state := clamp(r.NormFloat64(), -2.5, 2.5)
	n.hrv = round1(clamp(b.HRV*(1+0.14*state)+r.NormFloat64()*3, 8, 200))
	n.restingHR = math.Round(clamp(b.RestingHR-2.2*state+r.NormFloat64()*1.2, 38, 95))
	n.lowestHR = math.Max(35, n.restingHR-float64(r.IntN(3)))
	n.avgHR = round1(n.restingHR + 4 + r.Float64()*3)
	n.respRate = round1(clamp(b.RespRate+r.NormFloat64()*0.4-0.1*state, 9, 24))
	n.spo2 = round1(clamp(b.SpO2+r.NormFloat64()*0.6, 90, 100))
	n.bdi = round1(clamp(4+r.NormFloat64()*3, 0, 40))
	n.tempDeviation = round2(clamp(r.NormFloat64()*0.25-0.05*state, -1.5, 1.5))
	n.skinTemp = round2(b.SkinTemp + n.tempDeviation)
	n.efficiency = round1(100 * float64(asleep) / float64(n.inBed))
	n.performance = round1(clamp(100*asleep.Hours()/b.SleepNeed, 20, 100))
	n.consistency = round1(clamp(78+r.NormFloat64()*9, 30, 100))
	n.recovery = math.Round(clamp(58+20*state+r.NormFloat64()*6+0.1*(n.performance-85), 1, 99))
	n.readiness = math.Round(clamp(74+9*state+r.NormFloat64()*4, 30, 99))
	n.sleepScore = math.Round(clamp(0.55*n.performance+0.35*n.efficiency+r.NormFloat64()*3, 30, 99))
	return n
}

// dayLoad is one physiological day's strain, for WHOOP cycles.
type dayLoad struct {
	strain, kilojoule float64
	avgHR, maxHR      int
}

func genDay(r *rand.Rand, b store.Baseline, hadWorkout bool) dayLoad {
	strain := clamp(8+r.NormFloat64()*3, 2, 17)
	if hadWorkout {
		strain = clamp(strain+4+r.Float64()*2, 6, 20.5)
	}
	kj := (b.WeightKg*100 + strain*280) * (0.9 + r.Float64()*0.2)
	return dayLoad{
		strain:    round4(strain),
		kilojoule: round1(kj),
		avgHR:     int(b.RestingHR + 14 + r.Float64()*10),
		maxHR:     int(clamp(b.MaxHR*(0.7+strain/70)+r.NormFloat64()*4, 100, b.MaxHR)),
	}
}

// workoutShape is one workout's measurements.
type workoutShape struct {
	sport           string
	sportID         int
	duration        time.Duration
	strain          float64
	avgHR, maxHR    int
	kilojoule       float64
	distance        float64 // m, 0 for sports without distance
	altitudeGain    float64
	altitudeChange  float64
	percentRecorded float64
	zones           [6]time.Duration
}

var sports = []struct {
	name     string
	id       int
	speedMps float64 // 0: no distance
}{
	{"running", 0, 2.9}, {"cycling", 1, 7.2}, {"functional-fitness", 48, 0},
	{"weightlifting", 45, 0}, {"yoga", 44, 0}, {"swimming", 33, 0.9},
}

func genWorkout(r *rand.Rand, b store.Baseline, sport string, d time.Duration) workoutShape {
	s := sports[r.IntN(len(sports))]
	if sport != "" {
		s.name, s.id, s.speedMps = sport, -1, 0
		for _, known := range sports {
			if known.name == sport {
				s = known
			}
		}
	}
	if d <= 0 {
		d = time.Duration(clamp(50+r.NormFloat64()*15, 15, 120)) * time.Minute
	}
	intensity := clamp(0.72+r.NormFloat64()*0.07, 0.55, 0.92)
	w := workoutShape{
		sport: s.name, sportID: s.id, duration: d,
		avgHR:           int(b.MaxHR * intensity),
		percentRecorded: round2(clamp(0.98+r.Float64()*0.02, 0, 1)),
	}
	w.maxHR = int(clamp(float64(w.avgHR)+12+r.Float64()*15, 0, b.MaxHR))
	w.strain = round4(clamp(4+14*(intensity-0.55)/0.37*d.Hours(), 2, 19))
	w.kilojoule = round1(d.Minutes() * (30 + 50*(intensity-0.5)) * b.WeightKg / 75 * 4.184)
	if s.speedMps > 0 {
		w.distance = round1(s.speedMps * d.Seconds() * (0.85 + r.Float64()*0.3))
		w.altitudeGain = round1(w.distance / 1000 * (5 + r.Float64()*15))
		w.altitudeChange = round1(r.NormFloat64() * 10)
	}
	// Zone split: mostly zones 2-3 around the average intensity.
	weights := [6]float64{0.03, 0.12, 0.3, 0.33, 0.17, 0.05}
	var total time.Duration
	for i := range 5 {
		w.zones[i] = scaleDur(d, weights[i])
		total += w.zones[i]
	}
	w.zones[5] = d - total
	return w
}

// heartRateAt is a plausible heart rate for a moment of a day: lower and
// calmer asleep, higher in the afternoon.
func heartRateAt(r *rand.Rand, b store.Baseline, t time.Time, asleep bool) int {
	if asleep {
		return int(clamp(b.RestingHR+2+r.NormFloat64()*2.5, 35, 110))
	}
	h := float64(t.Hour()) + float64(t.Minute())/60
	diurnal := 8 * math.Sin((h-9)/24*2*math.Pi)
	return int(clamp(b.RestingHR+18+diurnal+r.NormFloat64()*7, 40, 180))
}

func clamp(v, lo, hi float64) float64 { return math.Max(lo, math.Min(hi, v)) }
func round1(v float64) float64        { return math.Round(v*10) / 10 }
func round2(v float64) float64        { return math.Round(v*100) / 100 }
func round4(v float64) float64        { return math.Round(v*10000) / 10000 }

func scaleDur(d time.Duration, f float64) time.Duration {
	return time.Duration(float64(d) * f).Truncate(time.Second)
}
