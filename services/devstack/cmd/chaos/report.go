package main

import (
	"fmt"
	"os"
	"strings"
	"time"
)

// writeReport writes RELIABILITY.md: per scenario the load, what the
// clients saw before, during and after the fault, the recovery time and the
// checker's counts.
func writeReport(path string, results []result, seed uint64, short, shared bool) error {
	var b strings.Builder
	p := func(format string, a ...any) { fmt.Fprintf(&b, format+"\n", a...) }
	mode := ""
	if short {
		mode = " -short"
	}
	if shared {
		mode += " -shared-users"
	}
	p("# Reliability report")
	p("")
	p("Written by `make chaos` (`go run ./services/devstack/cmd/chaos -seed %d%s`) on %s. Do not edit by hand: run it again.", seed, mode, time.Now().UTC().Format("2006-01-02 15:04 MST"))
	p("")
	p("Every service runs as its own process from its real binary: gateway, persistence, and two replicas each of ingest, token broker and publisher, calling each other over gRPC with per-service `SERVICE_ACL`s and round-robin over the replicas. The stores are private to the run: a PostgreSQL cluster created with `initdb`, a Redis without persistence, and the embedded Kafka-protocol broker (kfake) as a process of its own with a data directory, plus the vendor emulator. TCP proxies sit in front of PostgreSQL, Redis, Kafka and the emulator, so a fault cuts exactly one dependency.")
	p("")
	p("The load, the same for every scenario and reproducible with the seed: 20 users per scenario, 4 clients each starting a push at most every 80 ms (about 50 pushes, 500 samples a second), HealthKit batches of 10 samples (3 metrics) through the gateway with user JWTs and retrying a failed push up to 3 times with the same sample UUIDs, and 2 readers of `GET /v1/users/{user}/biometrics/latest` with an agent token. Each scenario has its own users; each user belongs to one push client (pushes in sequence, as one device does) unless `-shared-users` is given.")
	p("")
	p("The checker, after the load stops and the outbox drains (at most 90 s):")
	p("")
	p("- **missing**: samples a 2xx push acknowledged that PostgreSQL has no record of (must be 0); **bad kept**: samples the push answered rejected (the load sends out-of-range respiratory rates on purpose) that PostgreSQL has a record of (must be 0);")
	p("- **lost / harmful duplicates / reordered**: `topiccheck` over `biometrics.events.v1` against every event PostgreSQL committed, the run's earlier scenarios included (must all be 0; plain duplicates, the same `ce_id` twice, are at-least-once delivery and allowed);")
	p("- **latest wrong**: the latest API differs from the newest surviving reading per user and metric; **latest behind**: that reading is older than the newest sample a client was told was accepted (both must be 0);")
	p("- **reuse violations**: refresh tokens the emulator saw presented again after they were spent (must be 0).")
	p("")
	p("Requests are counted in the window (before, during, after the fault) in which they started; p99 is over the answered and unanswered alike, the latter at the client's 10 s timeout. Recovery is the time from the end of the fault to the first successful push after which no push failed.")
	p("")
	p("| scenario | fault | pushes (2xx) | latest reads | recovery | missing | bad kept | lost | harmful dup | reordered | latest wrong / behind | reuse | verdict |")
	p("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range results {
		pw := summarise(r.load.samples, "push", r.start, r.end.Add(time.Second))
		lw := summarise(r.load.samples, "latest", r.start, r.end.Add(time.Second))
		v := "pass"
		if !r.counts.ok() {
			v = "**FAIL**"
		}
		p("| %s | %s | %d (%d) | %d | %s | %d | %d | %d | %d | %d | %d / %d | %d | %s |", r.name, faultLen(r), pw.Requests, twoxx(pw.Codes), lw.Requests,
			recoveryString(r), r.counts.AckedMissing, r.counts.RejectedKept, r.counts.Topic.Lost, r.counts.Topic.HarmfulDuplicates, r.counts.Topic.Reordered,
			r.counts.LatestWrong, r.counts.LatestBehind, r.counts.ReuseViolated, v)
	}
	for _, r := range results {
		p("")
		p("## %s", r.name)
		p("")
		p("%s. Seed %d (load seed mixed with the scenario name). Load ran %s; the fault began %s in and lasted %s.",
			capitalise(r.what), r.seed, r.end.Sub(r.start).Round(time.Second), r.faultStart.Sub(r.start).Round(time.Second), faultLen(r))
		p("")
		p("| window | kind | requests | status codes | p99 |")
		p("|---|---|---|---|---|")
		wins := []struct {
			name     string
			from, to time.Time
		}{{"before", r.start, r.faultStart}, {"during", r.faultStart, r.faultEnd}, {"after", r.faultEnd, r.end.Add(time.Second)}}
		if r.faultEnd.Equal(r.start) {
			wins = wins[2:]
			wins[0].name = "whole run"
		}
		for _, w := range wins {
			for _, kind := range []string{"push", "latest"} {
				s := summarise(r.load.samples, kind, w.from, w.to)
				p("| %s | %s | %d | %s | %s |", w.name, kind, s.Requests, codesString(s.Codes), s.P99.Round(time.Millisecond))
			}
		}
		c := r.counts
		p("")
		p("Recovery: %s. Checker (%s): %d samples acknowledged, %d missing from PostgreSQL; %d rejected, %d of them stored; topic: %d events committed, %d published, %d pending, %d dead-lettered, %d lost, %d duplicates (%d harmful), %d reordered; latest: %d user+metric pairs, %d wrong, %d behind; %d refresh-token reuse violations; outbox rows left %d (drained %s after the load ended).",
			recoveryString(r), r.checkTook.Round(time.Second), c.Acked, c.AckedMissing, c.Rejected, c.RejectedKept, c.Topic.Committed, c.Topic.Published, c.Topic.Pending, c.Topic.DeadLettered,
			c.Topic.Lost, c.Topic.Duplicates, c.Topic.HarmfulDuplicates, c.Topic.Reordered, c.LatestChecked, c.LatestWrong, c.LatestBehind, c.ReuseViolated, c.OutboxLeft, c.OutboxDrain.Round(100*time.Millisecond))
		if len(c.Problems) > 0 || len(c.Topic.LostIDs) > 0 || len(c.Topic.Findings) > 0 {
			p("")
			p("Problems found:")
			p("")
			for _, pr := range c.Problems {
				p("- %s", pr)
			}
			for _, id := range c.Topic.LostIDs {
				p("- lost event %s", id)
			}
			for _, f := range c.Topic.Findings {
				p("- %+v", f)
			}
		}
	}
	return os.WriteFile(path, []byte(b.String()), 0o644)
}

func twoxx(codes map[int]int) int {
	n := 0
	for k, v := range codes {
		if k/100 == 2 {
			n += v
		}
	}
	return n
}

func faultLen(r result) string {
	if r.faultEnd.Equal(r.faultStart) {
		return "none"
	}
	return r.faultEnd.Sub(r.faultStart).Round(time.Second).String()
}

func recoveryString(r result) string {
	switch {
	case r.faultEnd.Equal(r.start):
		return "n/a"
	case r.recovery < 0:
		return "did not recover"
	case r.recovery == 0:
		return "no failed push after the fault"
	default:
		return r.recovery.Round(100*time.Millisecond).String() + " after the fault ended"
	}
}

func capitalise(s string) string {
	if s == "" {
		return s
	}
	return strings.ToUpper(s[:1]) + s[1:]
}
