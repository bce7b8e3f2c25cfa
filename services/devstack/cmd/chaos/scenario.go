package main

import (
	"context"
	"fmt"
	"hash/fnv"
	"sort"
	"strings"
	"time"
)

// scenario is one fault injected while the load runs.
type scenario struct {
	name, what string
	// fault injects the fault and ends it, returning when the system
	// should be whole again (a restarted process ready).
	fault func(ctx context.Context, s *suite, d durations) error
}

// durations scale a scenario: lead-in before the fault, the fault, and
// the tail of load after it.
type durations struct{ lead, fault, tail time.Duration }

func (d durations) scale(short bool) durations {
	if short {
		return durations{d.lead / 2, d.fault / 2, d.tail / 2}
	}
	return d
}

var scenarios = []scenario{
	{"baseline", "no fault", nil},
	{"kafka-down", "the Kafka broker stopped (SIGTERM), then restarted on its data directory", func(ctx context.Context, s *suite, d durations) error {
		s.kafka.stop()
		sleep(ctx, d.fault)
		return s.restart(ctx, s.kafka)
	}},
	{"postgres-down", "PostgreSQL unreachable (its proxy cut: open connections closed, new ones refused), then reachable again", func(ctx context.Context, s *suite, d durations) error {
		s.pgProxy.SetCut(true)
		sleep(ctx, d.fault)
		s.pgProxy.SetCut(false)
		return nil
	}},
	{"publisher-kill", "SIGKILL of one publisher replica mid-load, restarted after the fault time", func(ctx context.Context, s *suite, d durations) error {
		s.replicas["publisher"][0].kill()
		sleep(ctx, d.fault)
		return s.restart(ctx, s.replicas["publisher"][0])
	}},
	{"redis-down-empty", "Redis killed (SIGKILL), then started again empty", func(ctx context.Context, s *suite, d durations) error {
		s.redis.kill()
		sleep(ctx, d.fault)
		return s.restart(ctx, s.redis)
	}},
	{"ingest-kill-all", "SIGKILL of both ingest replicas mid-load, restarted after the fault time", func(ctx context.Context, s *suite, d durations) error {
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
	}},
}

// scenarioDurations are each scenario's lead-in, fault and tail.
var scenarioDurations = map[string]durations{
	"baseline":         {0, 0, 20 * time.Second},
	"kafka-down":       {8 * time.Second, 20 * time.Second, 20 * time.Second},
	"postgres-down":    {8 * time.Second, 15 * time.Second, 20 * time.Second},
	"publisher-kill":   {8 * time.Second, 5 * time.Second, 20 * time.Second},
	"redis-down-empty": {8 * time.Second, 10 * time.Second, 20 * time.Second},
	"ingest-kill-all":  {8 * time.Second, 5 * time.Second, 20 * time.Second},
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
	recovery                         time.Duration
	counts                           counts
	checkTook                        time.Duration
}

func (r result) verdict() string {
	c := r.counts
	v := "PASS"
	if !c.ok() {
		v = "FAIL"
	}
	return fmt.Sprintf("%s: acked %d, missing %d; rejected %d, kept %d; topic committed %d lost %d harmful-dup %d reordered %d pending %d; latest checked %d wrong %d behind %d; reuse %d",
		v, c.Acked, c.AckedMissing, c.Rejected, c.RejectedKept, c.Topic.Committed, c.Topic.Lost, c.Topic.HarmfulDuplicates, c.Topic.Reordered, c.Topic.Pending,
		c.LatestChecked, c.LatestWrong, c.LatestBehind, c.ReuseViolated)
}

// runScenario runs the load, injects the fault after the lead-in, and
// checks once the load is over. Every scenario has users of its own (the
// seed is mixed with the scenario's name), so a scenario's counts are its
// own; topiccheck covers every event committed so far.
func runScenario(ctx context.Context, s *suite, sc scenario, seed uint64, short, sharedUsers bool, logf func(string, ...any)) (result, error) {
	d := scenarioDurations[sc.name].scale(short)
	h := fnv.New64a()
	_, _ = h.Write([]byte(sc.name))
	cfg := loadConfig{seed: seed ^ h.Sum64(), users: 20, pushWorkers: 4, readers: 2, batch: 10,
		maxPushes: 10000, pushEvery: 80 * time.Millisecond, duration: d.lead + d.fault + d.tail, prefix: "chaos-" + sc.name, sharedUsers: sharedUsers}
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
	r.faultStart, r.faultEnd = r.start, r.start
	if sc.fault != nil {
		sleep(ctx, d.lead)
		r.faultStart = time.Now()
		logf("  fault on")
		if err := sc.fault(ctx, s, d); err != nil {
			<-done
			return r, err
		}
		r.faultEnd = time.Now()
		logf("  fault over after %s", r.faultEnd.Sub(r.faultStart).Round(time.Second))
	}
	lo := <-done
	if lo.err != nil {
		return r, lo.err
	}
	r.end = time.Now()
	r.load = lo.res
	r.recovery = recovery(lo.res.samples, r.faultEnd)
	t0 := time.Now()
	c, err := check(ctx, s, lo.res)
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
