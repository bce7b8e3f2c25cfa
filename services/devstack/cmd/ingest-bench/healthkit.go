package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/biobridge/bridge/pkg/auth"
	"github.com/biobridge/bridge/pkg/benchreport"
	"github.com/biobridge/bridge/services/devstack/benchenv"
)

// healthKitSample is one element of a push body, as the iOS app sends it.
type healthKitSample struct {
	UUID      string          `json:"uuid"`
	Type      string          `json:"type"`
	Value     float64         `json:"value"`
	Unit      string          `json:"unit"`
	StartDate string          `json:"start_date"`
	EndDate   string          `json:"end_date"`
	Source    healthKitSource `json:"source"`
}

type healthKitSource struct {
	Name        string `json:"name"`
	BundleID    string `json:"bundle_id"`
	DeviceModel string `json:"device_model"`
}

// hkRow is what one sample becomes in the baseline's table.
type hkRow struct {
	user, uuid string
	at         time.Time
	value      float64
}

// pushPlan holds every push of the run: the same rows go through the
// gateway and into the baseline's COPY.
type pushPlan struct {
	users  []string
	bodies [][]byte
	rows   [][]hkRow
}

func planPushes(pushes, size, users int) pushPlan {
	var p pushPlan
	base := time.Now().UTC().Add(-24 * time.Hour).Truncate(time.Second)
	for u := range users {
		p.users = append(p.users, fmt.Sprintf("bench-hk-user-%d-%s", u, benchenv.RandomHex(3)))
	}
	for i := range pushes {
		user := p.users[i%users]
		samples := make([]healthKitSample, size)
		rows := make([]hkRow, size)
		for k := range size {
			at := base.Add(time.Duration(i*size+k) * time.Second)
			uuid := fmt.Sprintf("%08X-BE0C-4000-8000-%012X", i, k)
			v := float64(55 + (i*size+k)%60)
			samples[k] = healthKitSample{
				UUID: uuid, Type: "HKQuantityTypeIdentifierHeartRate", Value: v, Unit: "count/min",
				StartDate: at.Format(time.RFC3339), EndDate: at.Format(time.RFC3339),
				Source: healthKitSource{Name: "Apple Watch", BundleID: "com.apple.health", DeviceModel: "Watch7,1"},
			}
			rows[k] = hkRow{user: user, uuid: uuid, at: at, value: v}
		}
		body, _ := json.Marshal(map[string]any{"samples": samples})
		p.bodies = append(p.bodies, body)
		p.rows = append(p.rows, rows)
	}
	return p
}

type pushResponse struct {
	Accepted   int32 `json:"accepted"`
	Duplicates int32 `json:"duplicates"`
	Rejected   int32 `json:"rejected"`
}

// benchHealthKit pushes the plan through the REST gateway with `workers`
// concurrent clients; a 200 means the samples are committed (the push is
// synchronous). The baseline COPYs the same rows into an equivalent table
// with the same concurrency, one transaction per push.
func benchHealthKit(ctx context.Context, s *stack, o options) ([]benchreport.Result, error) {
	plan := planPushes(o.hkPushes, o.hkSize, o.hkWorkers)
	tokens := map[string]string{}
	for _, u := range plan.users {
		tok, err := auth.IssueUserToken([]byte(userTokenSecret), u, time.Hour)
		if err != nil {
			return nil, err
		}
		tokens[u] = tok
	}
	client := &http.Client{Timeout: time.Minute, Transport: &http.Transport{MaxIdleConnsPerHost: o.hkWorkers}}
	push := func(i int) error {
		b, err := pushBody(ctx, client, s.gatewayURL, tokens[plan.users[i%len(plan.users)]], plan.bodies[i])
		if err != nil {
			return fmt.Errorf("push %d: %w", i, err)
		}
		var pr pushResponse
		if err := json.Unmarshal(b, &pr); err != nil {
			return fmt.Errorf("push %d: decode answer: %w", i, err)
		}
		if int(pr.Accepted) != o.hkSize {
			return fmt.Errorf("push %d: %d of %d samples accepted (%d duplicates, %d rejected)", i, pr.Accepted, o.hkSize, pr.Duplicates, pr.Rejected)
		}
		return nil
	}
	// Warm up connections and caches with one push that is not measured
	// (its readings are part of neither side's count).
	warm := planPushes(1, o.hkSize, 1)
	warmTok, err := auth.IssueUserToken([]byte(userTokenSecret), warm.users[0], time.Hour)
	if err != nil {
		return nil, err
	}
	if _, err := pushBody(ctx, client, s.gatewayURL, warmTok, warm.bodies[0]); err != nil {
		return nil, fmt.Errorf("warm-up push: %w", err)
	}

	stopProfile, err := o.profile("healthkit")
	if err != nil {
		return nil, err
	}
	meter, err := benchenv.StartCPU(ctx, s.dbURL)
	if err != nil {
		return nil, err
	}
	elapsed, err := parallel(o.hkPushes, o.hkWorkers, push)
	if err := errors.Join(err, stopProfile()); err != nil {
		return nil, err
	}
	goCPU, pgCPU, pgOK, err := meter.Stop(ctx)
	if err != nil {
		return nil, err
	}
	readings := float64(o.hkPushes * o.hkSize)
	rate := readings / elapsed.Seconds()

	base, baseCPU, err := copyBaseline(ctx, s.dbURL, plan, o.hkWorkers)
	if err != nil {
		return nil, err
	}
	baseRate := readings / base.Seconds()
	notes := fmt.Sprintf("%d pushes of %d heart-rate samples, %d concurrent clients, %d users: %.2fs through gateway+ingest+persistence vs %.2fs for pgx CopyFrom",
		o.hkPushes, o.hkSize, o.hkWorkers, len(plan.users), elapsed.Seconds(), base.Seconds())
	if pgOK {
		per := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / (readings / 1000) }
		notes += fmt.Sprintf("; CPU per 1000 readings: PostgreSQL %.1f ms + this process %.1f ms (baseline: PostgreSQL %.1f ms)",
			per(pgCPU), per(goCPU), per(baseCPU))
	}
	return []benchreport.Result{benchreport.Higher("ingest.healthkit_readings_per_s", "readings/s", rate, baseRate, notes)}, nil
}

// pushBody POSTs one push and returns the answer body of a 200.
func pushBody(ctx context.Context, client *http.Client, url, token string, body []byte) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v1/healthkit/samples", bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("HTTP %d: %s", resp.StatusCode, b)
	}
	return b, nil
}

// copyBaseline writes the same rows with raw pgx CopyFrom into a table
// shaped like persistence's readings (same columns and primary key), one
// transaction per push, with the same concurrency.
func copyBaseline(ctx context.Context, dbURL string, plan pushPlan, workers int) (_, pgCPU time.Duration, _ error) {
	pool, err := pgxpool.New(ctx, dbURL)
	if err != nil {
		return 0, 0, fmt.Errorf("baseline pool: %w", err)
	}
	defer pool.Close()
	if _, err := pool.Exec(ctx, `CREATE TABLE public.bench_readings (
		user_id text COLLATE "C" NOT NULL, metric text COLLATE "C" NOT NULL, observed_at timestamptz NOT NULL,
		source smallint NOT NULL, vendor_record_id text COLLATE "C" NOT NULL, seq integer NOT NULL,
		value double precision NOT NULL, start_time timestamptz, device_name text NOT NULL DEFAULT '',
		device_model text NOT NULL DEFAULT '', device_bundle_id text NOT NULL DEFAULT '',
		PRIMARY KEY (user_id, metric, observed_at, source, vendor_record_id, seq))`); err != nil {
		return 0, 0, fmt.Errorf("baseline table: %w", err)
	}
	cols := []string{"user_id", "metric", "observed_at", "source", "vendor_record_id", "seq", "value", "start_time", "device_name", "device_model", "device_bundle_id"}
	meter, err := benchenv.StartCPU(ctx, dbURL)
	if err != nil {
		return 0, 0, err
	}
	elapsed, err := parallel(len(plan.rows), workers, func(i int) error {
		rows := plan.rows[i]
		return pgx.BeginFunc(ctx, pool, func(tx pgx.Tx) error {
			_, err := tx.CopyFrom(ctx, pgx.Identifier{"public", "bench_readings"}, cols, pgx.CopyFromSlice(len(rows), func(k int) ([]any, error) {
				r := rows[k]
				return []any{r.user, "heart_rate_bpm", r.at, int16(3), r.uuid, int32(0), r.value, r.at, "Apple Watch", "Watch7,1", "com.apple.health"}, nil
			}))
			return err
		})
	})
	if err != nil {
		return 0, 0, err
	}
	_, pgCPU, _, err = meter.Stop(ctx)
	return elapsed, pgCPU, err
}

// parallel runs f(0..n-1) on workers goroutines and returns the wall time.
func parallel(n, workers int, f func(i int) error) (time.Duration, error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	var once sync.Once
	var firstErr error
	start := time.Now()
	for range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= n {
					return
				}
				if err := f(i); err != nil {
					once.Do(func() { firstErr = err })
					next.Store(int64(n))
					return
				}
			}
		}()
	}
	wg.Wait()
	return time.Since(start), firstErr
}
