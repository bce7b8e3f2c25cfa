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

	"github.com/biobridge/bridge/pkg/vendoremu"
	"github.com/biobridge/bridge/services/publisher/topiccheck"
)

// counts are the checker's verdict on one scenario. The run fails when
// any of the must-be-zero counts is not.
type counts struct {
	Acked         int // samples a 2xx push acknowledged
	AckedMissing  int // ... of which PostgreSQL has no record (must be 0)
	Rejected      int // samples a push answered rejected (out-of-range values)
	RejectedKept  int // ... of which PostgreSQL has a record (must be 0)
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
	return c.AckedMissing == 0 && c.RejectedKept == 0 && c.Topic.OK() && c.LatestWrong == 0 && c.LatestBehind == 0 && c.ReuseViolated == 0
}

// check waits for the outbox to drain, then compares what the clients were
// told with PostgreSQL, the topic, the latest API and the emulator.
func check(ctx context.Context, s *suite, res *loadResult) (counts, error) {
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

	// 1. Every acknowledged sample is a record in PostgreSQL.
	stored := map[string]bool{}
	rows, err := conn.Query(ctx, `SELECT user_id, vendor_record_id FROM biometrics.records WHERE user_id = ANY($1) AND NOT deleted`, res.users)
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
			if len(c.Problems) < 10 {
				c.Problems = append(c.Problems, "rejected but stored: "+r.user+" "+r.uuid)
			}
		}
	}
	newestAcked := map[string]time.Time{}
	for _, a := range res.acked {
		c.Acked++
		if !stored[a.user+"/"+a.uuid] {
			c.AckedMissing++
			if len(c.Problems) < 10 {
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
		Topic: "biometrics.events.v1", DeadLetterTopic: "biometrics.events.v1.dlq"})
	if err != nil {
		return c, fmt.Errorf("checker: topiccheck: %w", err)
	}

	// 3. Latest equals the newest surviving reading, and that reading is
	// not older than the newest sample a client was told was accepted.
	for _, u := range res.users {
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
				if len(c.Problems) < 10 {
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
	var ec vendoremu.Counters
	if err := getJSON(ctx, s.emulatorURL()+"/_admin/counters", "", &ec); err != nil {
		return c, fmt.Errorf("checker: emulator counters: %w", err)
	}
	c.ReuseViolated = ec.Whoop.RefreshTokenReuseViolations + ec.Oura.RefreshTokenReuseViolations
	return c, nil
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
