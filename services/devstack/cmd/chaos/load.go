package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/biobridge/bridge/pkg/auth"
)

// kinds are the HealthKit types the load pushes and the metric each
// becomes; values stay in range so every sample is accepted.
var kinds = []struct{ typ, unit, metric string }{
	{"HKQuantityTypeIdentifierHeartRate", "count/min", "heart_rate_bpm"},
	{"HKQuantityTypeIdentifierStepCount", "count", "steps"},
	{"HKQuantityTypeIdentifierRespiratoryRate", "count/min", "respiratory_rate_brpm"},
}

type hkSample struct {
	UUID      string         `json:"uuid"`
	Type      string         `json:"type"`
	Value     float64        `json:"value"`
	Unit      string         `json:"unit,omitempty"`
	StartDate string         `json:"start_date"`
	EndDate   string         `json:"end_date"`
	Source    map[string]any `json:"source"`
}

type pushResponse struct {
	Results []struct {
		UUID   string `json:"uuid"`
		Status string `json:"status"`
	} `json:"results"`
}

// sample is one request as the client saw it.
type sample struct {
	kind    string // "push", "latest" or "webhook"
	start   time.Time
	latency time.Duration
	status  int // 0: no answer (connection refused, timeout)
}

// loadConfig bounds one scenario's load in count and time.
type loadConfig struct {
	seed        uint64
	users       int
	pushWorkers int
	readers     int
	batch       int
	maxPushes   int
	// pushEvery paces each push client: a push starts at most this often,
	// so the load is a steady rate through the lead-in, fault and tail.
	pushEvery time.Duration
	duration  time.Duration
	prefix    string // user ids start with it, so scenarios never share users
	// sharedUsers lets every push client write for every user, so one
	// user's pushes run concurrently (off: each user belongs to one
	// client, pushing in sequence as one device does).
	sharedUsers bool
	// readAlso are more users the latest readers read (the vendor users).
	readAlso []string
}

// acked is a sample a 2xx push answered accepted (or duplicate).
type acked struct {
	user, uuid, metric string
	at                 time.Time
}

// loadResult is what the clients did and saw.
type loadResult struct {
	samples []sample
	acked   []acked
	// rejected are samples a push answered rejected: values out of the
	// metric's range, which the load sends on purpose (respiratory rates
	// up to 139 a minute).
	rejected []acked
	users    []string
}

// runLoad pushes HealthKit batches through the gateway and reads latest,
// until the duration or the push count runs out. A push that fails is
// retried with the same samples (as the app does), at most three times.
func runLoad(ctx context.Context, gw string, cfg loadConfig) (*loadResult, error) {
	res := &loadResult{}
	tokens := make([]string, cfg.users)
	for i := range cfg.users {
		u := fmt.Sprintf("%s-u%02d", cfg.prefix, i)
		res.users = append(res.users, u)
		t, err := auth.IssueUserToken(userSecret(), u, 2*time.Hour)
		if err != nil {
			return nil, err
		}
		tokens[i] = t
	}
	client := &http.Client{Timeout: 10 * time.Second}
	ctx, cancel := context.WithTimeout(ctx, cfg.duration)
	defer cancel()

	var mu sync.Mutex
	record := func(s sample) {
		mu.Lock()
		res.samples = append(res.samples, s)
		mu.Unlock()
	}
	do := func(method, url, token string, body []byte) (int, []byte) {
		req, err := http.NewRequestWithContext(context.WithoutCancel(ctx), method, url, bytes.NewReader(body))
		if err != nil {
			return 0, nil
		}
		req.Header.Set("Authorization", "Bearer "+token)
		if body != nil {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := client.Do(req)
		if err != nil {
			return 0, nil
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, b
	}

	// Per user a clock: every sample is one minute after the user's
	// previous one, so the newest reading per metric is unambiguous.
	base := time.Date(2026, 10, 1, 0, 0, 0, 0, time.UTC)
	next := make([]int, cfg.users)
	var pushes int
	var wg sync.WaitGroup
	for w := range cfg.pushWorkers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(cfg.seed, uint64(w)))
			for ctx.Err() == nil {
				pace := time.After(cfg.pushEvery)
				mu.Lock()
				if pushes >= cfg.maxPushes {
					mu.Unlock()
					return
				}
				pushes++
				u := rng.IntN(cfg.users)
				if !cfg.sharedUsers {
					// This client's users are w, w+workers, w+2*workers...
					n := (cfg.users - w + cfg.pushWorkers - 1) / cfg.pushWorkers
					u = w + cfg.pushWorkers*rng.IntN(n)
				}
				var batch []hkSample
				var meta []acked
				for range cfg.batch {
					k := kinds[rng.IntN(len(kinds))]
					at := base.Add(time.Duration(next[u]) * time.Minute)
					next[u]++
					id := fmt.Sprintf("%s-%d-%s", res.users[u], next[u], k.metric)
					batch = append(batch, hkSample{UUID: id, Type: k.typ, Value: float64(40 + rng.IntN(100)), Unit: k.unit,
						StartDate: at.Format(time.RFC3339), EndDate: at.Format(time.RFC3339),
						Source: map[string]any{"name": "Apple Watch", "bundle_id": "com.apple.health", "device_model": "Watch7,1"}})
					meta = append(meta, acked{user: res.users[u], uuid: id, metric: k.metric, at: at})
				}
				mu.Unlock()
				body, _ := json.Marshal(map[string]any{"samples": batch})
				for attempt := 0; attempt < 4; attempt++ {
					t0 := time.Now()
					code, b := do(http.MethodPost, gw+"/v1/healthkit/samples", tokens[u], body)
					record(sample{kind: "push", start: t0, latency: time.Since(t0), status: code})
					if code/100 == 2 {
						var out pushResponse
						if err := json.Unmarshal(b, &out); err == nil {
							ok, rejected := map[string]bool{}, map[string]bool{}
							for _, r := range out.Results {
								st := strings.ToLower(r.Status)
								if strings.HasSuffix(st, "accepted") || strings.HasSuffix(st, "duplicate") {
									ok[r.UUID] = true
								} else if strings.HasSuffix(st, "rejected") {
									rejected[r.UUID] = true
								}
							}
							mu.Lock()
							for _, m := range meta {
								if ok[m.uuid] {
									res.acked = append(res.acked, m)
								} else if rejected[m.uuid] {
									res.rejected = append(res.rejected, m)
								}
							}
							mu.Unlock()
						}
						break
					}
					if ctx.Err() != nil {
						break
					}
					time.Sleep(time.Duration(250<<attempt) * time.Millisecond)
				}
				select {
				case <-ctx.Done():
				case <-pace:
				}
			}
		})
	}
	for r := range cfg.readers {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(cfg.seed, 1000+uint64(r)))
			readable := append(append([]string(nil), res.users...), cfg.readAlso...)
			for ctx.Err() == nil {
				u := readable[rng.IntN(len(readable))]
				t0 := time.Now()
				code, _ := do(http.MethodGet, gw+"/v1/users/"+u+"/biometrics/latest", agentToken(), nil)
				record(sample{kind: "latest", start: t0, latency: time.Since(t0), status: code})
				time.Sleep(50 * time.Millisecond)
			}
		})
	}
	wg.Wait()
	sort.Slice(res.samples, func(i, j int) bool { return res.samples[i].start.Before(res.samples[j].start) })
	return res, nil
}

// window summarises the requests of one kind that started in [from, to).
type window struct {
	Requests int
	Codes    map[int]int
	P99      time.Duration
}

func summarise(samples []sample, kind string, from, to time.Time) window {
	w := window{Codes: map[int]int{}}
	var lat []time.Duration
	for _, s := range samples {
		if s.kind != kind || s.start.Before(from) || !s.start.Before(to) {
			continue
		}
		w.Requests++
		w.Codes[s.status]++
		lat = append(lat, s.latency)
	}
	if len(lat) > 0 {
		sort.Slice(lat, func(i, j int) bool { return lat[i] < lat[j] })
		w.P99 = lat[(len(lat)*99+99)/100-1]
	}
	return w
}

// recovery is how long after the fault ended pushes became healthy again:
// the start of the first 2xx push after which no push failed (0 when the
// fault never showed); -1 when they never recovered within the run.
func recovery(samples []sample, faultEnd time.Time) time.Duration {
	var lastBad time.Time
	var firstGoodAfter time.Time
	for _, s := range samples {
		if s.kind != "push" || s.start.Before(faultEnd) {
			continue
		}
		if s.status/100 != 2 {
			lastBad = s.start
			firstGoodAfter = time.Time{}
		} else if firstGoodAfter.IsZero() {
			firstGoodAfter = s.start
		}
	}
	if lastBad.IsZero() {
		return 0
	}
	if firstGoodAfter.IsZero() {
		return -1
	}
	return firstGoodAfter.Sub(faultEnd)
}
