package main

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"strings"
	"time"

	"github.com/IBM/sarama"
	"github.com/jackc/pgx/v5"

	"github.com/biobridge/bridge/emulator"
	"github.com/biobridge/bridge/pkg/topics"
	"github.com/biobridge/bridge/services/publisher/topiccheck"
)

// counts are the checker's verdict on one scenario. The run fails when
// any of the must-be-zero counts is not.
type counts struct {
	Acked        int // samples a 2xx push acknowledged
	AckedMissing int // ... of which PostgreSQL has no record (must be 0)
	Rejected     int // samples a push answered rejected (out-of-range values)
	RejectedKept int // ... of which PostgreSQL has a record (must be 0)
	// Webhooks: deliveries the bridge answered 2xx (distinct delivery
	// ids), of which without a committed job, whose job did not finish
	// (dead, parked or still pending when the check gave up), and whose
	// record never reached PostgreSQL (all three must be 0).
	WebhooksAcked    int
	WebhookNoJob     int
	JobsUnfinished   int
	WebhookNotStored int
	// Bad input: requests of the corpus (and the skewed sender), of which
	// answered 2xx, and rows of what they named found in PostgreSQL (both
	// must be 0).
	Bad           int
	BadAccepted   int
	BadStored     int
	Topic         topiccheck.Report
	LatestChecked int // user+metric pairs compared
	LatestWrong   int // latest answered != newest surviving reading (must be 0)
	LatestBehind  int // newest reading older than the newest acknowledged sample (must be 0)
	ReuseViolated int64
	OutboxLeft    int           // outbox rows still there when the check ran
	OutboxDrain   time.Duration // from the end of the load until the outbox was empty
	Problems      []string
}

func (c counts) ok() bool {
	return c.AckedMissing == 0 && c.RejectedKept == 0 && c.WebhookNoJob == 0 && c.JobsUnfinished == 0 && c.WebhookNotStored == 0 &&
		c.BadAccepted == 0 && c.BadStored == 0 && c.Topic.OK() && c.LatestWrong == 0 && c.LatestBehind == 0 && c.ReuseViolated == 0
}

// check waits for the outbox to drain, then compares what the clients were
// told with PostgreSQL, the topic, the latest API and the emulator.
func check(ctx context.Context, s *suite, res *loadResult, dels []delivery, vl *vendorLoad, bad *badSender) (counts, error) {
	var c counts
	conn, err := pgx.Connect(ctx, s.directPostgresURL())
	if err != nil {
		return c, fmt.Errorf("checker: connect: %w", err)
	}
	defer func() { _ = conn.Close(context.WithoutCancel(ctx)) }()

	// The publisher drains the outbox; a stuck outbox shows as pending
	// (not lost) in topiccheck, and is reported here as well.
	drainStart := time.Now()
	deadline := drainStart.Add(90 * time.Second)
	for {
		if err := conn.QueryRow(ctx, `SELECT count(*) FROM biometrics.outbox`).Scan(&c.OutboxLeft); err != nil {
			return c, fmt.Errorf("checker: outbox: %w", err)
		}
		if c.OutboxLeft == 0 || time.Now().After(deadline) {
			c.OutboxDrain = time.Since(drainStart)
			break
		}
		time.Sleep(500 * time.Millisecond)
	}

	// 0. Every acknowledged webhook is a committed job, and its job ran
	// to the end.
	if err := checkJobs(ctx, conn, dels, &c); err != nil {
		return c, err
	}
	vl.mu.Lock()
	created := append([]emuRecord(nil), vl.created...)
	vl.mu.Unlock()
	vendorUsers := make([]string, 0, len(vl.users))
	for _, u := range vl.users {
		vendorUsers = append(vendorUsers, u.user)
	}
	bad.mu.Lock()
	badSent := append([]badRequest(nil), bad.sent...)
	badObjects := append([]emuRecord(nil), bad.objects...)
	badHK := append([]string(nil), bad.hkUUIDs...)
	bad.mu.Unlock()
	badUsers := []string{bad.whoop.user, bad.oura.user, bad.hkUser}

	// 1. Every acknowledged sample is a record in PostgreSQL.
	stored := map[string]bool{}
	rows, err := conn.Query(ctx, `SELECT user_id, vendor_record_id FROM biometrics.records WHERE user_id = ANY($1) AND NOT deleted`,
		append(append(append([]string(nil), res.users...), vendorUsers...), badUsers...))
	if err != nil {
		return c, fmt.Errorf("checker: records: %w", err)
	}
	for rows.Next() {
		var u, id string
		if err := rows.Scan(&u, &id); err != nil {
			return c, err
		}
		stored[u+"/"+id] = true
	}
	if err := rows.Err(); err != nil {
		return c, err
	}
	for _, r := range res.rejected {
		c.Rejected++
		if stored[r.user+"/"+r.uuid] {
			c.RejectedKept++
			if len(c.Problems) < 20 {
				c.Problems = append(c.Problems, "rejected but stored: "+r.user+" "+r.uuid)
			}
		}
	}
	// An acknowledged webhook's record is in PostgreSQL (fetched by the
	// job with the user's tokens).
	byID := map[string]emuRecord{}
	for _, r := range created {
		byID[r.vendor+"/"+r.id] = r
	}
	seen := map[string]bool{}
	for _, d := range dels {
		if d.status/100 != 2 || d.objectID == "" || seen[d.vendor+"/"+d.objectID] {
			continue
		}
		seen[d.vendor+"/"+d.objectID] = true
		r, ok := byID[d.vendor+"/"+d.objectID]
		if !ok {
			continue // a record of an earlier scenario, redelivered
		}
		if !stored[r.user+"/"+r.id] {
			c.WebhookNotStored++
			if len(c.Problems) < 20 {
				c.Problems = append(c.Problems, fmt.Sprintf("webhook acknowledged but its record not stored: %s %s %s of %s", r.vendor, r.typ, r.id, r.user))
			}
		}
	}
	// Bad input: refused, and nothing it named stored.
	for _, b := range badSent {
		c.Bad++
		if b.status/100 == 2 {
			c.BadAccepted++
			if len(c.Problems) < 20 {
				c.Problems = append(c.Problems, fmt.Sprintf("bad input accepted: %s answered %d", b.kind, b.status))
			}
		}
	}
	for k := range stored {
		for _, u := range badUsers {
			if strings.HasPrefix(k, u+"/") {
				c.BadStored++
				if len(c.Problems) < 20 {
					c.Problems = append(c.Problems, "bad input stored: record "+k)
				}
			}
		}
	}
	var ids []string
	for _, o := range badObjects {
		ids = append(ids, o.id)
	}
	ids = append(ids, badHK...)
	var badJobs int
	if err := conn.QueryRow(ctx, `SELECT count(*) FROM ingest.jobs j WHERE EXISTS (SELECT 1 FROM unnest($1::text[]) AS id WHERE strpos(j.payload::text, id) > 0)`, ids).Scan(&badJobs); err != nil {
		return c, fmt.Errorf("checker: bad jobs: %w", err)
	}
	if badJobs > 0 {
		c.BadStored += badJobs
		c.Problems = append(c.Problems, fmt.Sprintf("bad input stored: %d jobs name records only bad input announced", badJobs))
	}

	newestAcked := map[string]time.Time{}
	for _, a := range res.acked {
		c.Acked++
		if !stored[a.user+"/"+a.uuid] {
			c.AckedMissing++
			if len(c.Problems) < 20 {
				c.Problems = append(c.Problems, "acknowledged but not stored: "+a.user+" "+a.uuid)
			}
		}
		k := a.user + "/" + a.metric
		if a.at.After(newestAcked[k]) {
			newestAcked[k] = a.at
		}
	}

	// 2. Every committed event is on the topic, once per version, in order.
	kv, _ := sarama.ParseKafkaVersion("3.6.0")
	c.Topic, err = topiccheck.Run(ctx, topiccheck.Options{PostgresURL: s.directPostgresURL(),
		Brokers: []string{s.kafkaProxy.Addr()}, KafkaVersion: kv,
		Topic: topics.Events, DeadLetterTopic: topics.EventsDeadLetters})
	if err != nil {
		return c, fmt.Errorf("checker: topiccheck: %w", err)
	}

	// 3. Latest equals the newest surviving reading, and that reading is
	// not older than the newest sample a client was told was accepted.
	for _, u := range append(append([]string(nil), res.users...), vendorUsers...) {
		want := map[string]struct {
			v  float64
			at time.Time
		}{}
		rows, err := conn.Query(ctx, `SELECT DISTINCT ON (metric) metric, value, observed_at FROM biometrics.readings
			WHERE user_id = $1 ORDER BY metric, observed_at DESC`, u)
		if err != nil {
			return c, fmt.Errorf("checker: readings: %w", err)
		}
		for rows.Next() {
			var m string
			var v float64
			var at time.Time
			if err := rows.Scan(&m, &v, &at); err != nil {
				return c, err
			}
			want[m] = struct {
				v  float64
				at time.Time
			}{v, at}
		}
		if err := rows.Err(); err != nil {
			return c, err
		}
		got, err := latest(ctx, s.gatewayURL(), u)
		if err != nil {
			return c, err
		}
		for m, w := range want {
			c.LatestChecked++
			g, ok := got[m]
			if !ok || math.Abs(g.Value-w.v) > 1e-9 || !g.ObservedAt.Equal(w.at) {
				c.LatestWrong++
				if len(c.Problems) < 20 {
					c.Problems = append(c.Problems, fmt.Sprintf("latest %s %s: got %v at %s, newest reading %v at %s", u, m, g.Value, g.ObservedAt, w.v, w.at))
				}
			}
			if a := newestAcked[u+"/"+m]; w.at.Before(a) {
				c.LatestBehind++
			}
		}
		for k, a := range newestAcked {
			if strings.HasPrefix(k, u+"/") {
				if _, ok := want[strings.TrimPrefix(k, u+"/")]; !ok && !a.IsZero() {
					c.LatestBehind++
				}
			}
		}
	}

	// 4. The emulator saw no spent refresh token presented again.
	var ec emulator.Counters
	if err := getJSON(ctx, s.emulatorURL()+"/_admin/counters", "", &ec); err != nil {
		return c, fmt.Errorf("checker: emulator counters: %w", err)
	}
	c.ReuseViolated = ec.Whoop.RefreshTokenReuseViolations + ec.Oura.RefreshTokenReuseViolations
	return c, nil
}

// checkJobs finds the job of every acknowledged delivery and waits (at
// most 60 s) until every one has finished.
func checkJobs(ctx context.Context, conn *pgx.Conn, dels []delivery, c *counts) error {
	keys := map[string][]string{}
	seen := map[string]bool{}
	for _, d := range dels {
		if d.status/100 != 2 || d.deliveryID == "" || seen[d.vendor+"/"+d.deliveryID] {
			continue
		}
		seen[d.vendor+"/"+d.deliveryID] = true
		keys[d.vendor] = append(keys[d.vendor], d.deliveryID)
		c.WebhooksAcked++
	}
	deadline := time.Now().Add(60 * time.Second)
	for {
		states := map[string]int{}
		for vendor, ks := range keys {
			rows, err := conn.Query(ctx, `SELECT dedupe_key, state FROM ingest.jobs WHERE vendor = $1 AND dedupe_key = ANY($2)`, vendor, ks)
			if err != nil {
				return fmt.Errorf("checker: jobs: %w", err)
			}
			for rows.Next() {
				var k string
				var st int
				if err := rows.Scan(&k, &st); err != nil {
					return err
				}
				states[vendor+"/"+k] = st
			}
			if err := rows.Err(); err != nil {
				return err
			}
		}
		running := 0
		for k := range seen {
			if st := states[k]; st == 1 || st == 2 {
				running++
			}
		}
		if running == 0 || time.Now().After(deadline) {
			c.WebhookNoJob, c.JobsUnfinished = 0, 0
			for k := range seen {
				switch st := states[k]; st {
				case 0:
					c.WebhookNoJob++
					if len(c.Problems) < 20 {
						c.Problems = append(c.Problems, "webhook acknowledged but no job committed: "+k)
					}
				case 3:
				default:
					c.JobsUnfinished++
					if len(c.Problems) < 20 {
						c.Problems = append(c.Problems, fmt.Sprintf("job of an acknowledged webhook not done (state %d): %s", st, k))
					}
				}
			}
			return nil
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// emuDelta is what the emulator counted during one scenario.
type emuDelta struct {
	refreshes, reuse, delivered, failed, dropped, duplicated, apiCalls, injected429, injected500, unauthorized int64
}

func emuCounters(ctx context.Context, emu string) (emulator.Counters, error) {
	var ec emulator.Counters
	err := getJSON(ctx, emu+"/_admin/counters", "", &ec)
	return ec, err
}

func delta(a, b emulator.Counters) emuDelta {
	sum := func(f func(emulator.VendorCounters) int64) int64 {
		return f(b.Whoop) + f(b.Oura) - f(a.Whoop) - f(a.Oura)
	}
	return emuDelta{
		refreshes:    sum(func(v emulator.VendorCounters) int64 { return v.TokenRefreshes }),
		reuse:        sum(func(v emulator.VendorCounters) int64 { return v.RefreshTokenReuseViolations }),
		delivered:    sum(func(v emulator.VendorCounters) int64 { return v.WebhooksDelivered }),
		failed:       sum(func(v emulator.VendorCounters) int64 { return v.WebhooksFailed }),
		dropped:      sum(func(v emulator.VendorCounters) int64 { return v.WebhooksDropped }),
		duplicated:   sum(func(v emulator.VendorCounters) int64 { return v.WebhooksDuplicated }),
		apiCalls:     sum(func(v emulator.VendorCounters) int64 { return v.APICallsTotal }),
		injected429:  sum(func(v emulator.VendorCounters) int64 { return v.InjectedRateLimited }),
		injected500:  sum(func(v emulator.VendorCounters) int64 { return v.InjectedErrors }),
		unauthorized: sum(func(v emulator.VendorCounters) int64 { return v.Unauthorized }),
	}
}

type latestValue struct {
	Metric     string    `json:"metric"`
	Value      float64   `json:"value"`
	ObservedAt time.Time `json:"observed_at"`
}

func latest(ctx context.Context, gw, user string) (map[string]latestValue, error) {
	var out struct {
		Values []latestValue `json:"values"`
	}
	if err := getJSON(ctx, gw+"/v1/users/"+user+"/biometrics/latest", agentToken(), &out); err != nil {
		return nil, fmt.Errorf("checker: latest of %s: %w", user, err)
	}
	m := map[string]latestValue{}
	for _, v := range out.Values {
		m[v.Metric] = v
	}
	return m, nil
}

func getJSON(ctx context.Context, url, token string, into any) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return json.NewDecoder(resp.Body).Decode(into)
}
