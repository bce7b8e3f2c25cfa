package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/redis/go-redis/v9"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/timestamppb"

	biometricsv1 "github.com/biobridge/bridge/gen/go/biobridge/biometrics/v1"
	persistencev1 "github.com/biobridge/bridge/gen/go/biobridge/persistence/v1"
	"github.com/biobridge/bridge/pkg/benchreport"
	"github.com/biobridge/bridge/pkg/grpcclient"
	"github.com/biobridge/bridge/services/persistence/server"
)

// Workload shapes.
const (
	bulkEventsPerCall   = 500
	bulkReadingsPerEvt  = 20
	bulkCallers         = 2
	groupCommitCallers  = 64
	latestUsers         = 1000
	latestConcurrency   = 32
	latestMetricsPerUsr = 5
)

type running struct {
	srv    *server.Server
	cancel context.CancelFunc
	done   chan error
	conn   *grpc.ClientConn
}

func start(ctx context.Context, cfg server.Config, logger *slog.Logger) (*running, error) {
	sctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	srv, err := server.New(sctx, cfg, logger)
	if err != nil {
		cancel()
		return nil, err
	}
	r := &running{srv: srv, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- srv.Serve(sctx) }()
	r.conn, err = grpc.NewClient(srv.GRPCAddr(), grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithPerRPCCredentials(grpcclient.ServiceCredentials(benchToken)))
	if err != nil {
		_ = r.stop()
		return nil, err
	}
	return r, nil
}

func (r *running) stop() error {
	if r.conn != nil {
		_ = r.conn.Close()
	}
	r.cancel()
	return <-r.done
}

type bench struct {
	opts     options
	main     *running // group commit on (the defaults)
	noGroup  *running // one transaction per event
	pool     *pgxpool.Pool
	rdb      *redis.Client
	prefix   string
	runStart time.Time
}

func newBench(ctx context.Context, cfg server.Config, logger *slog.Logger, opts options) (_ *bench, err error) {
	b := &bench{opts: opts, prefix: cfg.RedisKeyPrefix, runStart: time.Now()}
	defer func() {
		if err != nil {
			_ = b.close()
		}
	}()
	if b.main, err = start(ctx, cfg, logger); err != nil {
		return nil, err
	}
	single := cfg
	single.GroupCommitMaxEvents = 1
	single.GroupCommitConcurrency = groupCommitCallers
	if b.noGroup, err = start(ctx, single, logger); err != nil {
		return nil, err
	}
	if b.pool, err = pgxpool.New(ctx, cfg.PostgresURL); err != nil {
		return nil, fmt.Errorf("connect for baseline: %w", err)
	}
	ropts, err := redis.ParseURL(cfg.RedisURL)
	if err != nil {
		return nil, errors.New("REDIS_URL: invalid redis url")
	}
	ropts.PoolSize = 64
	b.rdb = redis.NewClient(ropts)
	return b, nil
}

func (b *bench) close() error {
	var errs []error
	for _, r := range []*running{b.main, b.noGroup} {
		if r != nil {
			errs = append(errs, r.stop())
		}
	}
	if b.rdb != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		iter := b.rdb.Scan(ctx, 0, b.prefix+"*", 1000).Iterator()
		for iter.Next(ctx) {
			b.rdb.Unlink(ctx, iter.Val())
		}
		cancel()
		errs = append(errs, b.rdb.Close())
	}
	if b.pool != nil {
		b.pool.Close()
	}
	return errors.Join(errs...)
}

// phase runs a workload for about d and reports how many operations it
// completed, how long it ran and, optionally, each operation's latency.
type phase func(d time.Duration) (ops int, elapsed time.Duration, lat []time.Duration, err error)

// rounds is how many slices each workload is split into. The machine is
// shared: alternating the measured workload and its baseline in short
// slices exposes both to the same background load.
const rounds = 4

// interleave runs a and b alternately, each for d in total, and sums up.
func interleave(d time.Duration, a, b phase) (ra, rb result, err error) {
	slice := d / rounds
	for range rounds {
		for _, x := range []struct {
			p phase
			r *result
		}{{a, &ra}, {b, &rb}} {
			ops, el, lat, err := x.p(slice)
			if err != nil {
				return ra, rb, err
			}
			x.r.ops += ops
			x.r.elapsed += el
			x.r.lat = append(x.r.lat, lat...)
		}
	}
	return ra, rb, nil
}

type result struct {
	ops     int
	elapsed time.Duration
	lat     []time.Duration
}

func (r result) perSecond() float64 { return float64(r.ops) / r.elapsed.Seconds() }

// p99 returns the 99th percentile latency in milliseconds.
func (r result) p99() float64 {
	if len(r.lat) == 0 {
		return 0
	}
	slices.Sort(r.lat)
	return float64(r.lat[len(r.lat)*99/100].Microseconds()) / 1000
}

// bulkWrite: one caller sends WriteEvents of 500 events x 20 readings;
// the baseline COPYs rows of the same shape, in batches of the same size,
// into a plain table with the readings table's columns and primary key.
func (b *bench) bulkWrite(ctx context.Context) ([]benchreport.Result, error) {
	client := persistencev1.NewPersistenceServiceClient(b.main.conn)
	base := time.Now().Add(-30 * 24 * time.Hour).Truncate(time.Second)
	// Calls and copies are numbered so every row is distinct.
	var calls, copies atomic.Int64
	makeBatch := func() *persistencev1.WriteEventsRequest {
		call := int(calls.Add(1))
		req := &persistencev1.WriteEventsRequest{Events: make([]*persistencev1.EventInput, bulkEventsPerCall)}
		for e := range bulkEventsPerCall {
			rs := make([]*biometricsv1.Reading, bulkReadingsPerEvt)
			for j := range rs {
				at := base.Add(time.Duration(call*bulkEventsPerCall*bulkReadingsPerEvt+e*bulkReadingsPerEvt+j) * time.Second)
				rs[j] = &biometricsv1.Reading{Metric: "heart_rate_bpm", Value: float64(50 + j), ObservedAt: timestamppb.New(at)}
			}
			req.Events[e] = &persistencev1.EventInput{
				UserId: fmt.Sprintf("bulk-user-%d", e%50), Source: biometricsv1.Source_SOURCE_WHOOP, Kind: "workout",
				VendorRecordId: fmt.Sprintf("bulk-%d-%d", call, e), Readings: rs,
			}
		}
		return req
	}
	// concurrently runs op from bulkCallers goroutines until d elapsed;
	// op returns the readings it stored.
	concurrently := func(d time.Duration, op func() (int, error)) (int, time.Duration, []time.Duration, error) {
		var total atomic.Int64
		errs := make([]error, bulkCallers)
		start := time.Now()
		var wg sync.WaitGroup
		for c := range bulkCallers {
			wg.Go(func() {
				for time.Since(start) < d {
					n, err := op()
					if err != nil {
						errs[c] = err
						return
					}
					total.Add(int64(n))
				}
			})
		}
		wg.Wait()
		return int(total.Load()), time.Since(start), nil, errors.Join(errs...)
	}
	ours := func(d time.Duration) (int, time.Duration, []time.Duration, error) {
		return concurrently(d, func() (int, error) {
			resp, err := client.WriteEvents(ctx, makeBatch())
			if err != nil {
				return 0, fmt.Errorf("bulk WriteEvents: %w", err)
			}
			for _, r := range resp.GetResults() {
				if r.GetStatus() != persistencev1.WriteStatus_WRITE_STATUS_INSERTED || len(r.GetRejectedReadings()) > 0 {
					return 0, fmt.Errorf("bulk WriteEvents: unexpected status %s", r.GetStatus())
				}
			}
			return bulkEventsPerCall * bulkReadingsPerEvt, nil
		})
	}

	if _, err := b.pool.Exec(ctx, `CREATE TABLE public.bench_readings (LIKE biometrics.readings INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)`); err != nil {
		return nil, fmt.Errorf("create baseline table: %w", err)
	}
	cols := []string{"user_id", "metric", "observed_at", "source", "vendor_record_id", "seq", "value", "start_time",
		"device_name", "device_model", "device_bundle_id", "event_id"}
	raw := func(d time.Duration) (int, time.Duration, []time.Duration, error) {
		return concurrently(d, func() (int, error) {
			batch := int(copies.Add(1))
			rows := make([][]any, 0, bulkEventsPerCall*bulkReadingsPerEvt)
			for e := range bulkEventsPerCall {
				eventID := pgtype.UUID{Bytes: uuid.New(), Valid: true}
				for j := range bulkReadingsPerEvt {
					at := base.Add(time.Duration(batch*bulkEventsPerCall*bulkReadingsPerEvt+e*bulkReadingsPerEvt+j) * time.Second)
					rows = append(rows, []any{fmt.Sprintf("bulk-user-%d", e%50), "heart_rate_bpm", at, int16(1),
						fmt.Sprintf("bulk-%d-%d", batch, e), int32(j), float64(50 + j), nil, "", "", "", eventID})
				}
			}
			n, err := b.pool.CopyFrom(ctx, pgx.Identifier{"public", "bench_readings"}, cols, pgx.CopyFromRows(rows))
			if err != nil {
				return 0, fmt.Errorf("baseline copy: %w", err)
			}
			return int(n), nil
		})
	}
	rOurs, rRaw, err := interleave(b.opts.duration, ours, raw)
	if err != nil {
		return nil, err
	}
	value, baseline := rOurs.perSecond(), rRaw.perSecond()
	return []benchreport.Result{benchreport.Higher("persistence.bulk_write_readings_per_s", "readings/s", value, baseline,
		fmt.Sprintf("WriteEvents over gRPC, %d concurrent callers, %d events x %d readings per call (validation, hashing, "+
			"events, records, readings, latest, outbox, cache update in one transaction); baseline: pgx CopyFrom of rows of "+
			"the same shape from %d concurrent connections into a plain table with the readings table's columns and primary key",
			bulkCallers, bulkEventsPerCall, bulkReadingsPerEvt, bulkCallers))}, nil
}

// groupCommit: 64 callers each send single-event WriteEvents in a loop,
// against the default server and against one with group commit off.
func (b *bench) groupCommit(ctx context.Context) ([]benchreport.Result, error) {
	measure := func(r *running, tag string) phase {
		client := persistencev1.NewPersistenceServiceClient(r.conn)
		var seq atomic.Int64
		return func(d time.Duration) (int, time.Duration, []time.Duration, error) {
			var done atomic.Int64
			errs := make([]error, groupCommitCallers)
			deadline := time.Now().Add(d)
			start := time.Now()
			var wg sync.WaitGroup
			for c := range groupCommitCallers {
				wg.Go(func() {
					for time.Now().Before(deadline) {
						i := seq.Add(1)
						_, err := client.WriteEvents(ctx, &persistencev1.WriteEventsRequest{Events: []*persistencev1.EventInput{{
							UserId: fmt.Sprintf("%s-user-%d", tag, c), Source: biometricsv1.Source_SOURCE_HEALTHKIT, Kind: "sample",
							VendorRecordId: fmt.Sprintf("%s-%d", tag, i),
							Readings: []*biometricsv1.Reading{{Metric: "heart_rate_bpm", Value: 60 + float64(i%40),
								ObservedAt: timestamppb.New(b.runStart.Add(-time.Duration(i) * time.Second))}},
						}}})
						if err != nil {
							errs[c] = fmt.Errorf("single-event WriteEvents (%s): %w", tag, err)
							return
						}
						done.Add(1)
					}
				})
			}
			wg.Wait()
			return int(done.Load()), time.Since(start), nil, errors.Join(errs...)
		}
	}
	rGroup, rSingle, err := interleave(b.opts.duration, measure(b.main, "gc"), measure(b.noGroup, "single"))
	if err != nil {
		return nil, err
	}
	value, baseline := rGroup.perSecond(), rSingle.perSecond()
	return []benchreport.Result{benchreport.Higher("persistence.group_commit_events_per_s", "events/s", value, baseline,
		fmt.Sprintf("%d concurrent callers, one event (one reading) per WriteEvents, each caller its own user; group commit "+
			"(2ms window, up to 1000 events, 4 transactions in flight) vs the same server with one transaction per event "+
			"(%d in flight)", groupCommitCallers, groupCommitCallers))}, nil
}

// getLatest: 32 concurrent callers ask GetLatest for random users (1000
// users, 5 metrics each, cache warm); the baseline does raw HGETALL of the
// same Redis hashes at the same concurrency.
func (b *bench) getLatest(ctx context.Context) ([]benchreport.Result, error) {
	pclient := persistencev1.NewPersistenceServiceClient(b.main.conn)
	bclient := biometricsv1.NewBiometricsServiceClient(b.main.conn)
	metrics := []string{"heart_rate_bpm", "hrv_rmssd_ms", "resting_heart_rate_bpm", "spo2_pct", "respiratory_rate_brpm"}
	users := make([]string, latestUsers)
	req := &persistencev1.WriteEventsRequest{}
	for i := range users {
		users[i] = fmt.Sprintf("latest-user-%d", i)
		var rs []*biometricsv1.Reading
		for j, m := range metrics[:latestMetricsPerUsr] {
			rs = append(rs, &biometricsv1.Reading{Metric: m, Value: float64(50 + j), ObservedAt: timestamppb.New(b.runStart.Add(-time.Hour))})
		}
		req.Events = append(req.Events, &persistencev1.EventInput{UserId: users[i], Source: biometricsv1.Source_SOURCE_OURA,
			Kind: "daily", VendorRecordId: "day-1", Readings: rs})
	}
	if _, err := pclient.WriteEvents(ctx, req); err != nil {
		return nil, fmt.Errorf("seed latest users: %w", err)
	}
	for _, u := range users { // warm the cache
		if _, err := bclient.GetLatest(ctx, &biometricsv1.GetLatestRequest{UserId: u}); err != nil {
			return nil, fmt.Errorf("warm GetLatest: %w", err)
		}
	}
	load := func(op func(ctx context.Context, user string) error) phase {
		return func(d time.Duration) (int, time.Duration, []time.Duration, error) {
			deadline := time.Now().Add(d)
			lat := make([][]time.Duration, latestConcurrency)
			errs := make([]error, latestConcurrency)
			start := time.Now()
			var wg sync.WaitGroup
			for c := range latestConcurrency {
				wg.Go(func() {
					rng := rand.New(rand.NewPCG(uint64(c), uint64(start.UnixNano())))
					for time.Now().Before(deadline) {
						t0 := time.Now()
						if err := op(ctx, users[rng.IntN(len(users))]); err != nil {
							errs[c] = err
							return
						}
						lat[c] = append(lat[c], time.Since(t0))
					}
				})
			}
			wg.Wait()
			all := slices.Concat(lat...)
			if len(all) == 0 && errors.Join(errs...) == nil {
				return 0, 0, nil, errStopped
			}
			return len(all), time.Since(start), all, errors.Join(errs...)
		}
	}
	grpcLoad := load(func(ctx context.Context, user string) error {
		resp, err := bclient.GetLatest(ctx, &biometricsv1.GetLatestRequest{UserId: user})
		if err == nil && len(resp.GetValues()) != latestMetricsPerUsr {
			err = fmt.Errorf("GetLatest returned %d values", len(resp.GetValues()))
		}
		return err
	})
	redisLoad := load(func(ctx context.Context, user string) error {
		h, err := b.rdb.HGetAll(ctx, b.prefix+"bb:{u:"+user+"}:latest").Result()
		if err == nil && len(h) < latestMetricsPerUsr {
			err = fmt.Errorf("HGETALL returned %d fields", len(h))
		}
		return err
	})
	nearBefore := nearReads(b.main.srv)
	rGRPC, rRedis, err := interleave(b.opts.duration, grpcLoad, redisLoad)
	if err != nil {
		return nil, fmt.Errorf("GetLatest load: %w", err)
	}
	nearAfter := nearReads(b.main.srv)
	rps, p99, baseRPS, baseP99 := rGRPC.perSecond(), rGRPC.p99(), rRedis.perSecond(), rRedis.p99()
	read := "Redis HGETALL on every call (-near-cache=false: LATEST_NEAR_CACHE_ENABLED=false)"
	if b.opts.near {
		read = "the per-replica near-cache in front of Redis, the default (strict: each call waits for a PING on the tracking connection sent after it started, shared by the calls in flight; hits skip the HGETALL; invalidated by Redis CLIENT TRACKING)"
		hit, miss, bypass := nearAfter["hit"]-nearBefore["hit"], nearAfter["miss"]-nearBefore["miss"], nearAfter["bypass"]-nearBefore["bypass"]
		if total := hit + miss + bypass; total > 0 {
			read += fmt.Sprintf(": %.1f%% of the measured reads were near-cache hits, %.1f%% bypassed it", 100*hit/total, 100*bypass/total)
		}
	}
	notes := fmt.Sprintf("%d concurrent callers, random user of %d, %d metrics each, cache warm; GetLatest over gRPC "+
		"(service-token auth, audit record, %s, decoding) vs raw Redis HGETALL of the same hashes from go-redis",
		latestConcurrency, latestUsers, latestMetricsPerUsr, read)
	return []benchreport.Result{
		benchreport.Higher("biometrics.get_latest_rps", "requests/s", rps, baseRPS, notes),
		benchreport.Lower("biometrics.get_latest_p99_ms", "ms", p99, baseP99, notes),
	}, nil
}

// nearReads returns persistence's near-cache reads so far, by result.
func nearReads(srv *server.Server) map[string]float64 {
	out := map[string]float64{}
	mfs, err := srv.Registry().Gather()
	if err != nil {
		return out
	}
	for _, mf := range mfs {
		if mf.GetName() != "biobridge_persistence_near_cache_reads_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "result" {
					out[l.GetValue()] += m.GetCounter().GetValue()
				}
			}
		}
	}
	return out
}
