package main

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"maps"
	"math/rand/v2"
	"net/http"
	"sort"
	"strings"
	"time"

	"golang.org/x/sync/errgroup"
)

// scenario is one fault injected while the load runs.
type scenario struct {
	name, what string
	// fault injects the fault and ends it, returning when the system
	// should be whole again (a restarted process ready).
	fault func(ctx context.Context, s *suite, d durations, x *faultEnv) error
	// long and short are the lead-in, fault and tail of a full and of a
	// -short run.
	long, short durations
}

// faultEnv is what a fault may use besides the suite: a seeded source for
// its random moments and the scenario's vendor and bad-input senders.
type faultEnv struct {
	rng    *rand.Rand
	vendor *vendorLoad
	bad    *badSender
}

// durations are a scenario's lead-in before the fault, the fault, and the
// tail of load after it.
type durations struct{ lead, fault, tail time.Duration }

// full and brief are the usual lengths of a scenario with a fault.
func full(fault time.Duration) durations  { return durations{8 * time.Second, fault, 20 * time.Second} }
func brief(fault time.Duration) durations { return durations{2 * time.Second, fault, 3 * time.Second} }

// killFor SIGKILLs p, waits d and starts it again (as a supervisor does).
func killFor(ctx context.Context, s *suite, p *proc, d time.Duration) error {
	p.kill()
	sleep(ctx, d)
	return s.restart(ctx, p)
}

// vendorFault sets the emulator's faults on top of the load's for d.
func vendorFault(ctx context.Context, s *suite, d time.Duration, extra map[string]any) error {
	f := maps.Clone(baseVendorFaults)
	maps.Copy(f, extra)
	if err := s.setVendorFaults(ctx, f); err != nil {
		return err
	}
	sleep(ctx, d)
	return s.setVendorFaults(context.WithoutCancel(ctx), baseVendorFaults)
}

// latencyFor delays everything through p by lat for d.
func latencyFor(ctx context.Context, p *proxy, lat, d time.Duration) {
	p.SetLatency(lat)
	sleep(ctx, d)
	p.SetLatency(0)
}

var scenarios = []scenario{
	{"baseline", "no fault", nil, durations{0, 0, 20 * time.Second}, durations{0, 0, 5 * time.Second}},
	{"kafka-down", "the Kafka broker stopped (SIGTERM), then restarted on its data directory", func(ctx context.Context, s *suite, d durations, _ *faultEnv) error {
		s.kafka.stop()
		sleep(ctx, d.fault)
		return s.restart(ctx, s.kafka)
	}, full(20 * time.Second), brief(4 * time.Second)},
	{"kafka-slow", "250 ms added to every chunk through the Kafka proxy, both ways", func(ctx context.Context, s *suite, d durations, _ *faultEnv) error {
		latencyFor(ctx, s.kafkaProxy, 250*time.Millisecond, d.fault)
		return nil
	}, full(15 * time.Second), brief(4 * time.Second)},
	{"postgres-down", "PostgreSQL unreachable (its proxy cut: open connections closed, new ones refused), then reachable again", func(ctx context.Context, s *suite, d durations, _ *faultEnv) error {
		s.pgProxy.SetCut(true)
		sleep(ctx, d.fault)
		s.pgProxy.SetCut(false)
		return nil
	}, full(15 * time.Second), brief(4 * time.Second)},
	{"postgres-slow", "50 ms added to every chunk through the PostgreSQL proxy, both ways (at least 100 ms a round trip)", func(ctx context.Context, s *suite, d durations, _ *faultEnv) error {
		latencyFor(ctx, s.pgProxy, 50*time.Millisecond, d.fault)
		return nil
	}, full(15 * time.Second), brief(4 * time.Second)},
	{"redis-down-empty", "Redis killed (SIGKILL), then started again empty", func(ctx context.Context, s *suite, d durations, _ *faultEnv) error {
		s.redis.kill()
		sleep(ctx, d.fault)
		return s.restart(ctx, s.redis)
	}, full(10 * time.Second), brief(4 * time.Second)},
	{"vendor-429", "the emulated vendors answer half of the data-API calls 429 (with their rate-limit headers)", func(ctx context.Context, s *suite, d durations, _ *faultEnv) error {
		return vendorFault(ctx, s, d.fault, map[string]any{"rate_limit_rate": 0.5})
	}, full(15 * time.Second), brief(4 * time.Second)},
	{"vendor-500", "the emulated vendors answer half of the data-API calls and a third of the token calls 500", func(ctx context.Context, s *suite, d durations, _ *faultEnv) error {
		return vendorFault(ctx, s, d.fault, map[string]any{"error_rate": 0.5, "token_error_rate": 0.3})
	}, full(15 * time.Second), brief(4 * time.Second)},
	{"vendor-slow", "1.5 s added to every vendor data-API and token answer", func(ctx context.Context, s *suite, d durations, _ *faultEnv) error {
		return vendorFault(ctx, s, d.fault, map[string]any{"latency": "1500ms"})
	}, full(15 * time.Second), brief(4 * time.Second)},
	{"publisher-kill", "SIGKILL of one publisher replica mid-load, restarted after the fault time", func(ctx context.Context, s *suite, d durations, _ *faultEnv) error {
		return killFor(ctx, s, s.replicas["publisher"][0], d.fault)
	}, full(5 * time.Second), brief(3 * time.Second)},
	{"ingest-kill-all", "SIGKILL of both ingest replicas mid-load, restarted after the fault time", func(ctx context.Context, s *suite, d durations, _ *faultEnv) error {
		for _, p := range s.replicas["ingest"] {
			p.kill()
		}
		sleep(ctx, d.fault)
		for _, p := range s.replicas["ingest"] {
			if err := s.restart(ctx, p); err != nil {
				return err
			}
		}
		return nil
	}, full(5 * time.Second), brief(3 * time.Second)},
	{"kill-one-each", "SIGKILL of one replica of every service (ingest, token broker, publisher, persistence, gateway), each at a seeded random moment of the fault window and restarted 2 s later", func(ctx context.Context, s *suite, d durations, x *faultEnv) error {
		victims := []*proc{s.replicas["ingest"][x.rng.IntN(2)], s.replicas["tokenbroker"][x.rng.IntN(2)], s.replicas["publisher"][x.rng.IntN(2)], s.persistence, s.gateway}
		g, gctx := errgroup.WithContext(ctx)
		for _, p := range victims {
			at := time.Duration(x.rng.Int64N(int64(max(d.fault-2*time.Second, time.Second))))
			g.Go(func() error {
				sleep(gctx, at)
				return killFor(gctx, s, p, 2*time.Second)
			})
		}
		return g.Wait()
	}, full(15 * time.Second), brief(4 * time.Second)},
	{"tokenbroker-kill-all", "SIGKILL of both token broker replicas during a token storm, restarted after the fault time", func(ctx context.Context, s *suite, d durations, x *faultEnv) error {
		storm := make(chan error, 1)
		go func() { storm <- x.vendor.storm(ctx) }()
		for _, p := range s.replicas["tokenbroker"] {
			p.kill()
		}
		sleep(ctx, d.fault)
		for _, p := range s.replicas["tokenbroker"] {
			if err := s.restart(ctx, p); err != nil {
				return err
			}
		}
		return <-storm
	}, full(8 * time.Second), brief(3 * time.Second)},
	{"partition-ingest-broker", "ingest cut off from both token broker replicas (its proxy to them cut) during a token storm; the gateway still reaches them", func(ctx context.Context, s *suite, d durations, x *faultEnv) error {
		s.ingestToBroker.SetCut(true)
		if err := x.vendor.storm(ctx); err != nil {
			return err
		}
		sleep(ctx, d.fault)
		s.ingestToBroker.SetCut(false)
		return nil
	}, full(15 * time.Second), brief(4 * time.Second)},
	{"webhook-clock-skew", "one WHOOP webhook sender's clock 10 minutes behind (correctly signed, stale timestamps) next to the emulator's sender", func(ctx context.Context, _ *suite, d durations, x *faultEnv) error {
		fctx, cancel := context.WithTimeout(ctx, d.fault)
		defer cancel()
		return x.bad.skewed(fctx, 100*time.Millisecond, 10*time.Minute)
	}, full(15 * time.Second), brief(4 * time.Second)},
	{"combined", "Kafka slow (250 ms) and a vendor 500 burst, with one publisher replica SIGKILLed in the middle", func(ctx context.Context, s *suite, d durations, x *faultEnv) error {
		g, gctx := errgroup.WithContext(ctx)
		g.Go(func() error { latencyFor(gctx, s.kafkaProxy, 250*time.Millisecond, d.fault); return nil })
		g.Go(func() error {
			return vendorFault(gctx, s, d.fault, map[string]any{"error_rate": 0.5, "token_error_rate": 0.3})
		})
		victim := s.replicas["publisher"][x.rng.IntN(2)]
		g.Go(func() error {
			sleep(gctx, d.fault/3)
			return killFor(gctx, s, victim, d.fault/3)
		})
		return g.Wait()
	}, full(20 * time.Second), brief(6 * time.Second)},
}

func scenarioNames() []string {
	out := make([]string, len(scenarios))
	for i, s := range scenarios {
		out[i] = s.name
	}
	return out
}

func selectScenarios(list string) ([]scenario, error) {
	if list == "" {
		return scenarios, nil
	}
	var out []scenario
	for _, n := range strings.Split(list, ",") {
		found := false
		for _, s := range scenarios {
			if s.name == strings.TrimSpace(n) {
				out = append(out, s)
				found = true
			}
		}
		if !found {
			return nil, fmt.Errorf("unknown scenario %q (have %s)", n, strings.Join(scenarioNames(), ", "))
		}
	}
	return out, nil
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
}

// result is one scenario's measurements.
type result struct {
	name, what                       string
	seed                             uint64
	d                                durations
	start, faultStart, faultEnd, end time.Time
	load                             *loadResult
	// deliveries are the vendors' webhooks of the scenario, bad the
	// corpus's requests.
	deliveries []delivery
	bad        []badRequest
	// vendorRecords is how many records the load created at the
	// emulator; storms how many token storms ran; emu the emulator's
	// counters over the scenario.
	vendorRecords, storms int
	// crashes are restarted processes that exited while starting.
	crashes   int64
	emu       emuDelta
	recovery  time.Duration
	counts    counts
	checkTook time.Duration
}

func (r result) verdict() string {
	c := r.counts
	v := "PASS"
	if !c.ok() {
		v = "FAIL"
	}
	return fmt.Sprintf("%s: pushed samples acked %d, missing %d; rejected %d, kept %d; webhooks acked %d, no job %d, not stored %d, jobs unfinished %d; bad input %d, accepted %d, stored %d; topic committed %d lost %d harmful-dup %d reordered %d pending %d; latest checked %d wrong %d behind %d; reuse %d",
		v, c.Acked, c.AckedMissing, c.Rejected, c.RejectedKept, c.WebhooksAcked, c.WebhookNoJob, c.WebhookNotStored, c.JobsUnfinished,
		c.Bad, c.BadAccepted, c.BadStored, c.Topic.Committed, c.Topic.Lost, c.Topic.HarmfulDuplicates, c.Topic.Reordered, c.Topic.Pending,
		c.LatestChecked, c.LatestWrong, c.LatestBehind, c.ReuseViolated)
}

// runScenario connects the scenario's vendor users, runs the load (HealthKit
// pushes, latest readers, vendor records announced by webhooks, token
// storms, the bad-input corpus), injects the fault after the lead-in, and
// checks once the load is over. Every scenario has users of its own (the
// seed is mixed with the scenario's name), so a scenario's counts are its
// own; topiccheck covers every event committed so far.
func runScenario(ctx context.Context, s *suite, sc scenario, seed uint64, short, sharedUsers bool, logf func(string, ...any)) (result, error) {
	d := sc.long
	if short {
		d = sc.short
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte(sc.name))
	sseed := seed ^ h.Sum64()
	prefix := "chaos-" + sc.name
	vl := &vendorLoad{emu: s.emulatorURL(), rng: rand.New(rand.NewPCG(sseed, 3))}
	var readAlso []string
	for i := range 3 {
		for _, v := range []string{"whoop", "oura"} {
			u := vendorUser{user: fmt.Sprintf("%s-%c%d", prefix, v[0], i), vendor: v}
			vl.users = append(vl.users, u)
			readAlso = append(readAlso, u.user)
		}
	}
	if err := connectUsers(ctx, s.gatewayURL(), vl.users); err != nil {
		return result{}, err
	}
	bad, err := newBadSender(ctx, s.gatewayURL(), s.emulatorURL(), prefix, sseed)
	if err != nil {
		return result{}, err
	}
	emuBefore, err := emuCounters(ctx, s.emulatorURL())
	if err != nil {
		return result{}, err
	}
	_, mark := s.public.since(0)
	crashesBefore := s.crashes.Load()

	total := d.lead + d.fault + d.tail
	cfg := loadConfig{seed: sseed, users: 20, pushWorkers: 4, readers: 2, batch: 10,
		maxPushes: 10000, pushEvery: 80 * time.Millisecond, duration: total, prefix: prefix, sharedUsers: sharedUsers, readAlso: readAlso}
	r := result{name: sc.name, what: sc.what, seed: seed, d: d, start: time.Now()}
	type loadOut struct {
		res *loadResult
		err error
	}
	done := make(chan loadOut, 1)
	go func() {
		res, err := runLoad(ctx, s.gatewayURL(), cfg)
		done <- loadOut{res, err}
	}()
	lctx, lcancel := context.WithTimeout(ctx, total)
	defer lcancel()
	var side errgroup.Group
	side.Go(func() error { vl.run(lctx, 150*time.Millisecond); return nil })
	side.Go(func() error { return bad.run(lctx, 150*time.Millisecond) })
	// Token storms: every access token expired at the vendor and a record
	// for every user at once, twice a scenario (once in the fault).
	side.Go(func() error {
		for _, at := range []time.Duration{d.lead + d.fault/3, d.lead + d.fault + d.tail/2} {
			sleep(lctx, at-time.Since(r.start))
			if lctx.Err() != nil {
				return nil
			}
			if err := vl.storm(lctx); err != nil {
				return err
			}
			r.storms++
		}
		return nil
	})
	r.faultStart, r.faultEnd = r.start, r.start
	var faultErr error
	if sc.fault != nil {
		sleep(ctx, d.lead)
		r.faultStart = time.Now()
		logf("  fault on")
		faultErr = sc.fault(ctx, s, d, &faultEnv{rng: rand.New(rand.NewPCG(sseed, 5)), vendor: vl, bad: bad})
		r.faultEnd = time.Now()
		logf("  fault over after %s", r.faultEnd.Sub(r.faultStart).Round(time.Second))
	}
	lo := <-done
	sideErr := side.Wait()
	if err := errors.Join(faultErr, lo.err, sideErr); err != nil {
		return r, err
	}
	r.end = time.Now()
	r.crashes = s.crashes.Load() - crashesBefore
	r.load = lo.res
	r.recovery = recovery(lo.res.samples, r.faultEnd)
	// Every webhook the emulator still holds (retries, reordering) is
	// delivered before the check.
	if err := emuAdmin(ctx, s.emulatorURL(), http.MethodPost, "/_admin/webhooks/wait", map[string]string{"timeout": "30s"}, nil); err != nil {
		logf("  emulator webhooks still pending: %v", err)
	}
	r.deliveries, _ = s.public.since(mark)
	for _, dl := range r.deliveries {
		r.load.samples = append(r.load.samples, sample{kind: "webhook", start: dl.start, latency: dl.latency, status: dl.status})
	}
	sort.Slice(r.load.samples, func(i, j int) bool { return r.load.samples[i].start.Before(r.load.samples[j].start) })
	emuAfter, err := emuCounters(ctx, s.emulatorURL())
	if err != nil {
		return r, err
	}
	r.emu = delta(emuBefore, emuAfter)
	bad.mu.Lock()
	r.bad = append([]badRequest(nil), bad.sent...)
	bad.mu.Unlock()
	vl.mu.Lock()
	r.vendorRecords = len(vl.created)
	vl.mu.Unlock()
	t0 := time.Now()
	c, err := check(ctx, s, lo.res, r.deliveries, vl, bad)
	if err != nil {
		return r, err
	}
	r.counts, r.checkTook = c, time.Since(t0)
	return r, nil
}

func codesString(m map[int]int) string {
	keys := make([]int, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Ints(keys)
	var parts []string
	for _, k := range keys {
		name := fmt.Sprint(k)
		if k == 0 {
			name = "no answer"
		}
		parts = append(parts, fmt.Sprintf("%s: %d", name, m[k]))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}
