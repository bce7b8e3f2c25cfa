package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	"github.com/biobridge/bridge/services/devstack/stack"
)

type sample struct {
	UUID      string  `json:"uuid"`
	Type      string  `json:"type"`
	Value     float64 `json:"value"`
	Unit      string  `json:"unit"`
	StartDate string  `json:"start_date"`
	EndDate   string  `json:"end_date"`
	Source    struct {
		Name        string `json:"name"`
		BundleID    string `json:"bundle_id"`
		DeviceModel string `json:"device_model"`
	} `json:"source"`
}

// push is one planned HealthKit push and the baseline rows it becomes.
type push struct {
	user string
	body []byte
	uuid []string
	at   []time.Time
	val  []float64
}

var seq atomic.Int64

func planPush(user string, size int, base time.Time, types [][3]string, value func(k int) float64) push {
	p := push{user: user}
	n := seq.Add(1)
	samples := make([]sample, size)
	for k := range size {
		at := base.Add(time.Duration(k) * time.Second)
		t := types[k%len(types)]
		s := sample{UUID: fmt.Sprintf("%08X-B10E-4000-8000-%012X", n, k), Type: t[0], Unit: t[1], Value: value(k),
			StartDate: at.Format(time.RFC3339), EndDate: at.Format(time.RFC3339)}
		s.Source.Name, s.Source.BundleID, s.Source.DeviceModel = "Apple Watch", "com.apple.health", "Watch7,1"
		samples[k] = s
		p.uuid = append(p.uuid, s.UUID)
		p.at = append(p.at, at)
		p.val = append(p.val, s.Value)
	}
	p.body, _ = json.Marshal(map[string]any{"samples": samples})
	return p
}

var heartRate = [][3]string{{"HKQuantityTypeIdentifierHeartRate", "count/min"}}

func sendPush(ctx context.Context, client *http.Client, s *stack.Stack, tokens map[string]string, p push) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.GatewayURL()+"/v1/healthkit/samples", bytes.NewReader(p.body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+tokens[p.user])
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d: %.300s", resp.StatusCode, b)
	}
	var out struct {
		Accepted int `json:"accepted"`
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return err
	}
	if out.Accepted != len(p.uuid) {
		return fmt.Errorf("%d of %d samples accepted: %.300s", out.Accepted, len(p.uuid), b)
	}
	return nil
}

// healthKitSeries measures pushes through the gateway and the COPY
// baseline at each level.
func healthKitSeries(ctx context.Context, s *stack.Stack, dbURL string, o options, stdout io.Writer) ([]series, error) {
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		return nil, err
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `CREATE TABLE public.bench_readings (
		user_id text COLLATE "C" NOT NULL, metric text COLLATE "C" NOT NULL, observed_at timestamptz NOT NULL,
		source smallint NOT NULL, vendor_record_id text COLLATE "C" NOT NULL, seq integer NOT NULL,
		value double precision NOT NULL, start_time timestamptz, device_name text NOT NULL DEFAULT '',
		device_model text NOT NULL DEFAULT '', device_bundle_id text NOT NULL DEFAULT '',
		PRIMARY KEY (user_id, metric, observed_at, source, vendor_record_id, seq))`); err != nil {
		return nil, fmt.Errorf("baseline table: %w", err)
	}
	cols := []string{"user_id", "metric", "observed_at", "source", "vendor_record_id", "seq", "value", "start_time", "device_name", "device_model", "device_bundle_id"}
	bridge := series{Name: "bridge (REST gateway, ingest, persistence)", Unit: "readings/s"}
	baseline := series{Name: "baseline (pgx CopyFrom)", Unit: "readings/s"}
	base := time.Now().UTC().Add(-48 * time.Hour).Truncate(time.Second)
	tokens := map[string]string{}
	for li, c := range o.levels {
		n := max(16, o.pushes*c)
		users := make([]string, c)
		for i := range users {
			users[i] = fmt.Sprintf("plot-hk-%d-%d", li, i)
			tok, err := s.UserToken(users[i], time.Hour)
			if err != nil {
				return nil, err
			}
			tokens[users[i]] = tok
		}
		plan := make([]push, n)
		for i := range plan {
			at := base.Add(time.Duration(i*o.samples) * time.Second)
			plan[i] = planPush(users[i%c], o.samples, at, heartRate, func(k int) float64 { return float64(55 + (i+k)%60) })
		}
		client := &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: c}}
		// One unmeasured push per level opens the connections.
		warm := planPush(users[0], 10, base.Add(-time.Hour*time.Duration(li+1)), heartRate, func(int) float64 { return 60 })
		if err := sendPush(ctx, client, s, tokens, warm); err != nil {
			return nil, fmt.Errorf("warm-up push: %w", err)
		}
		// Bridge and baseline take turns over quarters of the plan, so a
		// change in the machine's load during the level hits both.
		var bs, cs sums
		for q := range rounds {
			part := plan[q*n/rounds : (q+1)*n/rounds]
			el, lat, err := parallel(len(part), c, func(i int) error { return sendPush(ctx, client, s, tokens, part[i]) })
			if err != nil {
				return nil, err
			}
			bs.add(el, lat)
			el, lat, err = parallel(len(part), c, func(i int) error {
				p := part[i]
				return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
					_, err := tx.CopyFrom(ctx, pgx.Identifier{"public", "bench_readings"}, cols, pgx.CopyFromSlice(len(p.uuid), func(k int) ([]any, error) {
						return []any{p.user, "heart_rate_bpm", p.at[k], int16(3), p.uuid[k], int32(0), p.val[k], p.at[k], "Apple Watch", "Watch7,1", "com.apple.health"}, nil
					}))
					return err
				})
			})
			if err != nil {
				return nil, fmt.Errorf("baseline: %w", err)
			}
			cs.add(el, lat)
		}
		client.CloseIdleConnections()
		bp := bs.point(c, float64(o.samples))
		cp := cs.point(c, float64(o.samples))
		bridge.Points = append(bridge.Points, bp)
		baseline.Points = append(baseline.Points, cp)
		fmt.Fprintf(stdout, "healthkit c=%d: bridge %.0f readings/s p99 %.1f ms; baseline %.0f readings/s p99 %.1f ms; ratio %.2f\n",
			c, bp.Throughput, bp.P99ms, cp.Throughput, cp.P99ms, bp.Throughput/cp.Throughput)
	}
	return []series{bridge, baseline}, nil
}

// latestSeries measures GetLatest over gRPC and raw HGETALL at each level.
func latestSeries(ctx context.Context, s *stack.Stack, rdb *redis.Client, prefix string, o options, stdout io.Writer) ([]series, error) {
	types := [][3]string{
		{"HKQuantityTypeIdentifierHeartRate", "count/min"}, {"HKQuantityTypeIdentifierRestingHeartRate", "count/min"},
		{"HKQuantityTypeIdentifierHeartRateVariabilitySDNN", "ms"}, {"HKQuantityTypeIdentifierOxygenSaturation", "%"},
		{"HKQuantityTypeIdentifierRespiratoryRate", "count/min"},
	}
	values := []float64{62, 55, 48, 0.97, 14}
	users := make([]string, o.latestUsers)
	tokens := map[string]string{}
	seed := make([]push, len(users))
	for i := range users {
		users[i] = fmt.Sprintf("plot-latest-%d", i)
		tok, err := s.UserToken(users[i], time.Hour)
		if err != nil {
			return nil, err
		}
		tokens[users[i]] = tok
		seed[i] = planPush(users[i], len(types), time.Now().UTC().Add(-time.Hour).Truncate(time.Second), types, func(k int) float64 { return values[k] })
	}
	client := &http.Client{Timeout: time.Minute}
	if _, _, err := parallel(len(seed), 8, func(i int) error { return sendPush(ctx, client, s, tokens, seed[i]) }); err != nil {
		return nil, fmt.Errorf("seed: %w", err)
	}
	conn, err := grpc.NewClient(s.Env("PERSISTENCE_GRPC_ADDR"), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	defer func() { _ = conn.Close() }()
	bc := biometricsv1.NewBiometricsServiceClient(conn)
	actx := metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+s.AgentToken())
	getLatest := func(user string) error {
		resp, err := bc.GetLatest(actx, &biometricsv1.GetLatestRequest{UserId: user})
		if err == nil && len(resp.GetValues()) != len(types) {
			err = fmt.Errorf("GetLatest of %s returned %d values", user, len(resp.GetValues()))
		}
		return err
	}
	hgetall := func(user string) error {
		h, err := rdb.HGetAll(ctx, prefix+"bb:{u:"+user+"}:latest").Result()
		if err == nil && len(h) < len(types) {
			err = fmt.Errorf("HGETALL of %s returned %d fields", user, len(h))
		}
		return err
	}
	for _, u := range users { // warm the cache
		if err := getLatest(u); err != nil {
			return nil, fmt.Errorf("warm: %w", err)
		}
	}
	bridge := series{Name: "bridge (GetLatest over gRPC)", Unit: "requests/s"}
	baseline := series{Name: "baseline (raw Redis HGETALL)", Unit: "requests/s"}
	for _, c := range o.levels {
		var bs, cs sums
		for range rounds {
			if err := bs.timed(c, o.latestFor/rounds, users, getLatest); err != nil {
				return nil, err
			}
			if err := cs.timed(c, o.latestFor/rounds, users, hgetall); err != nil {
				return nil, err
			}
		}
		bp, cp := bs.point(c, 1), cs.point(c, 1)
		bridge.Points = append(bridge.Points, bp)
		baseline.Points = append(baseline.Points, cp)
		fmt.Fprintf(stdout, "getlatest c=%d: bridge %.0f requests/s p99 %.2f ms; baseline %.0f requests/s p99 %.2f ms; ratio %.2f\n",
			c, bp.Throughput, bp.P99ms, cp.Throughput, cp.P99ms, bp.Throughput/cp.Throughput)
	}
	return []series{bridge, baseline}, nil
}

// rounds is how many turns bridge and baseline take at each level.
const rounds = 4

// sums accumulates the turns of one side at one level.
type sums struct {
	elapsed time.Duration
	lat     []time.Duration
}

func (s *sums) add(elapsed time.Duration, lat []time.Duration) {
	s.elapsed += elapsed
	s.lat = append(s.lat, lat...)
}

// point: throughput is units per operation times operations over the
// turns' summed wall time.
func (s *sums) point(c int, unitsPerOp float64) point {
	return pointOf(c, len(s.lat), unitsPerOp*float64(len(s.lat)), s.elapsed, s.lat)
}

// timed runs op for random users from c goroutines for d.
func (s *sums) timed(c int, d time.Duration, users []string, op func(user string) error) error {
	lat := make([][]time.Duration, c)
	errs := make([]error, c)
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for g := range c {
		wg.Go(func() {
			rng := rand.New(rand.NewPCG(uint64(g), uint64(start.UnixNano())))
			for time.Now().Before(deadline) {
				t0 := time.Now()
				if err := op(users[rng.IntN(len(users))]); err != nil {
					errs[g] = err
					return
				}
				lat[g] = append(lat[g], time.Since(t0))
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return err
		}
	}
	s.add(time.Since(start), slices.Concat(lat...))
	return nil
}

// parallel runs f(0..n-1) on workers goroutines; it returns the wall time
// and each call's latency.
func parallel(n, workers int, f func(i int) error) (time.Duration, []time.Duration, error) {
	var next atomic.Int64
	lat := make([]time.Duration, n)
	errs := make([]error, workers)
	start := time.Now()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				t0 := time.Now()
				if err := f(i); err != nil {
					errs[w] = err
					next.Store(int64(n))
					return
				}
				lat[i] = time.Since(t0)
			}
		})
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return 0, nil, err
		}
	}
	return time.Since(start), lat, nil
}

func pointOf(c, ops int, units float64, elapsed time.Duration, lat []time.Duration) point {
	return point{Concurrency: c, Ops: ops, Throughput: units / elapsed.Seconds(), P99ms: p99(lat)}
}

func p99(lat []time.Duration) float64 {
	if len(lat) == 0 {
		return 0
	}
	s := slices.Clone(lat)
	slices.Sort(s)
	i := int(math.Ceil(0.99*float64(len(s)))) - 1
	return float64(s[max(i, 0)].Microseconds()) / 1000
}
