package main

import (
	"fmt"
	"os"
	"sort"
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
	p("Every service runs as its own process from its real binary: gateway, persistence, and two replicas each of ingest, token broker and publisher, calling each other over gRPC with per-service `SERVICE_ACL`s and round-robin over the replicas. The stores are private to the run: a PostgreSQL cluster created with `initdb`, a Redis without persistence, and the embedded Kafka-protocol broker (kfake) as a process of its own with a data directory, plus the vendor emulator. TCP proxies sit in front of PostgreSQL, Redis, Kafka and the emulator, and between ingest and the token broker replicas (its own path, so a partition cuts exactly that link), so a fault slows or cuts exactly one dependency. Ingest's job retries and leases are compressed (`INGEST_RETRY_BASE=500ms`, `INGEST_RETRY_MAX=5s`, `INGEST_JOB_LEASE=10s`), with `INGEST_JOB_MAX_ATTEMPTS=20` so a job keeps retrying for about 90 s, longer than any fault (production's 8 attempts from 2 s to 10 min span about 4 minutes), as is the publisher's outbox lease (`PUBLISH_LEASE_DURATION=10s`), so what a fault delays finishes within the scenario, and the emulator's WHOOP budget is raised to 3000 requests a minute, as a production app's is.")
	p("")
	p("The load, the same for every scenario and reproducible with the seed (it fixes the load's choices, the emulator's fault draws and the random moments of the kills; thread scheduling still varies run to run):")
	p("")
	p("- **HealthKit**: 20 users per scenario, 4 clients each starting a push at most every 80 ms (about 50 pushes, 500 samples a second), batches of 10 samples (3 metrics) through the gateway with user JWTs, a failed push retried up to 3 times with the same sample UUIDs. Each user belongs to one push client (pushes in sequence, as one device does) unless `-shared-users` is given. Some respiratory rates are out of range on purpose: answered rejected, never stored.")
	p("- **Vendor webhooks**: 3 WHOOP and 3 Oura users per scenario, connected through the real OAuth flow (gateway, token broker, emulator consent, callback, app completion). Every 150 ms the emulator gets a new WHOOP workout or Oura daily readiness for one of them and announces it with a signed webhook to the bridge's public URL, with its faults on throughout: 10%% of deliveries duplicated, 5%% dropped, all held and released reordered. A recorder in front of the gateway notes every delivery and its answer. Ingest fetches each record with the user's tokens.")
	p("- **Token storms**, twice a scenario (once during the fault): every access token expired at the emulator and, at that moment, a record for every vendor user, so every job needs a refresh at once; refresh tokens are single-use, and the emulator counts any presented twice.")
	p("- **Readers**: 2 clients reading `GET /v1/users/{user}/biometrics/latest` with an agent token, for HealthKit and vendor users.")
	p("- **Bad input**, one request every 150 ms, straight to the gateway: webhooks signed with a wrong secret, replays (a valid signature from an hour ago), malformed and oversize (2 MiB) bodies with valid signatures, HealthKit pushes with a JWT signed by another key, an expired JWT, an unsigned token, and a malformed body with a valid JWT. The webhooks name real records at the emulator (created without a webhook) of users of their own; the pushes carry samples of a user of its own.")
	p("")
	p("The checker, after the load stops, the emulator has delivered everything it holds, and the outbox drains (at most 90 s):")
	p("")
	p("- **missing**: samples a 2xx push acknowledged that PostgreSQL has no record of; **no job / unfinished / not stored**: webhooks answered 2xx whose job is not in ingest's job table, whose job did not finish (dead, parked, or still pending after 60 s), or whose vendor record never reached PostgreSQL (all must be 0);")
	p("- **bad kept**: samples the push answered rejected that PostgreSQL has; **bad accepted / bad stored**: requests of the bad-input corpus answered 2xx, and records or jobs of what they named (all must be 0);")
	p("- **lost / harmful duplicates / reordered**: `topiccheck` over `biometrics.events.v1` against every event PostgreSQL committed, the run's earlier scenarios included (must all be 0; plain duplicates, the same `ce_id` twice, are at-least-once delivery and allowed; reordered is per user);")
	p("- **latest wrong**: the latest API differs from the newest surviving reading, for every user and metric of the scenario; **latest behind**: that reading is older than the newest sample a push was told was accepted (both must be 0);")
	p("- **reuse violations**: refresh tokens the emulator saw presented again after they were spent, over the whole run (must be 0).")
	p("")
	p("Requests are counted in the window (before, during, after the fault) in which they started; p99 is over the answered and unanswered alike, the latter at the client's 10 s timeout. Webhook latency is the emulator's delivery as the recorder saw it. Recovery is the time from the end of the fault to the first successful push after which no push failed.")
	p("")
	p("The checker is itself checked by breaking a promise on purpose (a temporary code change, never committed) and running the scenario that should expose it. Ingest's webhook path changed to answer before its job commits (the enqueue moved into a goroutine, the answer `ACCEPTED` at once), then `go run ./services/devstack/cmd/chaos -short -scenarios postgres-down`: the run failed (exit 1) with `webhooks acked 67, no job 32, not stored 32`, and the report listed each lost delivery by vendor and delivery id (`webhook acknowledged but no job committed: whoop/8cbe2238-d842-4bfe-b341-ae2e783f29f5`, ...). Second, the publisher changed to send each lease's entries newest first (`slices.Reverse(lease.Entries)` in the relay), then `go run ./services/devstack/cmd/chaos -short -scenarios baseline`: the run failed with `topic committed 1686 lost 0 harmful-dup 0 reordered 221`, each finding naming the partition, offset and event id (`reordered Partition:0 Offset:33 EventID:01a2441c-c43f-73e2-8cf5-bccb317319ac: key moved on to rank 16 while back at rank 1 of 7`). With either change reverted the scenario passes.")
	p("")
	p("| scenario | fault | pushes (2xx) | webhooks (2xx) | latest reads | bad input (2xx) | storms, refreshes | recovery | missing | no job / unfinished / not stored | bad kept / stored | lost | harmful dup | reordered | latest wrong / behind | reuse | verdict |")
	p("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
	for _, r := range results {
		pw := summarise(r.load.samples, "push", r.start, r.end.Add(time.Hour))
		ww := summarise(r.load.samples, "webhook", r.start, r.end.Add(time.Hour))
		lw := summarise(r.load.samples, "latest", r.start, r.end.Add(time.Hour))
		v := "pass"
		if !r.counts.ok() {
			v = "**FAIL**"
		}
		c := r.counts
		p("| %s | %s | %d (%d) | %d (%d) | %d | %d (%d) | %d, %d | %s | %d | %d / %d / %d | %d / %d | %d | %d | %d | %d / %d | %d | %s |", r.name, faultLen(r), pw.Requests, twoxx(pw.Codes),
			ww.Requests, twoxx(ww.Codes), lw.Requests, c.Bad, c.BadAccepted, r.storms, r.emu.refreshes,
			recoveryString(r), c.AckedMissing, c.WebhookNoJob, c.JobsUnfinished, c.WebhookNotStored, c.RejectedKept, c.BadStored, c.Topic.Lost, c.Topic.HarmfulDuplicates, c.Topic.Reordered,
			c.LatestWrong, c.LatestBehind, c.ReuseViolated, v)
	}
	for _, r := range results {
		p("")
		p("## %s", r.name)
		p("")
		p("%s. Seed %d (load seed mixed with the scenario name). Load ran %s; the fault began %s in and lasted %s.",
			capitalise(r.what), r.seed, r.end.Sub(r.start).Round(time.Second), r.faultStart.Sub(r.start).Round(time.Second), faultLen(r))
		p("")
		p("| window | kind | requests | per second | status codes | p99 |")
		p("|---|---|---|---|---|---|")
		wins := []struct {
			name     string
			from, to time.Time
		}{{"before", r.start, r.faultStart}, {"during", r.faultStart, r.faultEnd}, {"after", r.faultEnd, r.end.Add(time.Second)}}
		if r.faultEnd.Equal(r.start) {
			wins = wins[2:]
			wins[0].name = "whole run"
		}
		wins[len(wins)-1].to = r.end.Add(time.Hour) // late webhook deliveries
		for _, w := range wins {
			for _, kind := range []string{"push", "webhook", "latest"} {
				s := summarise(r.load.samples, kind, w.from, w.to)
				// The rate is over the window as the load ran (the last
				// window ends with the load, not with late deliveries).
				rate := "-"
				to := w.to
				if to.After(r.end) {
					to = r.end
				}
				if secs := to.Sub(w.from).Seconds(); secs >= 0.5 {
					rate = fmt.Sprintf("%.1f", float64(s.Requests)/secs)
				}
				p("| %s | %s | %d | %s | %s | %s |", w.name, kind, s.Requests, rate, codesString(s.Codes), s.P99.Round(time.Millisecond))
			}
		}
		c := r.counts
		p("")
		badCodes := map[string]map[int]int{}
		for _, b := range r.bad {
			if badCodes[b.kind] == nil {
				badCodes[b.kind] = map[int]int{}
			}
			badCodes[b.kind][b.status]++
		}
		kindsSent := make([]string, 0, len(badCodes))
		for k := range badCodes {
			kindsSent = append(kindsSent, k)
		}
		sort.Strings(kindsSent)
		var parts []string
		for _, k := range kindsSent {
			parts = append(parts, fmt.Sprintf("%s (%s)", k, codesString(badCodes[k])))
		}
		p("Bad input answered: %s.", strings.Join(parts, "; "))
		p("")
		e := r.emu
		p("Vendors: %d records created, %d token storms; the emulator delivered %d webhooks (%d given up after its retries, %d dropped, %d duplicated), answered %d data-API calls (%d injected 429, %d injected 500, %d refused tokens) and rotated %d refresh tokens (%d reuse violations).",
			r.vendorRecords, r.storms, e.delivered, e.failed, e.dropped, e.duplicated, e.apiCalls, e.injected429, e.injected500, e.unauthorized, e.refreshes, e.reuse)
		p("")
		if r.crashes > 0 {
			p("Restarts: %d time(s) a process restarted by the harness exited while starting (a dependency still faulty) and was started again a second later, as a supervisor does; its log says why.", r.crashes)
			p("")
		}
		p("Recovery: %s. Checker (%s): %d samples acknowledged, %d missing from PostgreSQL; %d rejected, %d of them stored; %d webhooks acknowledged, %d without a job, %d jobs unfinished, %d records not stored; %d bad requests, %d accepted, %d rows of what they named stored; topic: %d events committed, %d published, %d pending, %d dead-lettered, %d lost, %d duplicates (%d harmful), %d reordered; latest: %d user+metric pairs, %d wrong, %d behind; %d refresh-token reuse violations; outbox rows left %d (drained %s after the load ended).",
			recoveryString(r), r.checkTook.Round(time.Second), c.Acked, c.AckedMissing, c.Rejected, c.RejectedKept,
			c.WebhooksAcked, c.WebhookNoJob, c.JobsUnfinished, c.WebhookNotStored, c.Bad, c.BadAccepted, c.BadStored, c.Topic.Committed, c.Topic.Published, c.Topic.Pending, c.Topic.DeadLettered,
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
